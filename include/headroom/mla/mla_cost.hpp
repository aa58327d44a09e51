// SPDX-License-Identifier: MIT
// The work of an MLA layer's two attention paths, counted once here for the layer's choice of
// path, the benchmarks and the tests alike.
#pragma once

#include "headroom/attention/cost.hpp"
#include "headroom/attention/options.hpp"
#include "headroom/mla/mla_config.hpp"

namespace headroom {

/// Returns the FLOPs of the expanded path for one sequence whose q_len new queries are the last
/// of kv_len cached tokens (causal): the up-projection of every cached latent to per-head keys and
/// values (c_kv . W_UK^T and c_kv . W_UV^T: 2 x kv_len x kv_lora_rank x H x (d_nope + d_v)), then
/// MHA with head_dim_k = d_nope + d_rope, head_dim_v = d_v. Excludes the projections both paths
/// share (mla_projection_flops).
inline double mla_expanded_flops(const MlaConfig& config, Index q_len, Index kv_len) {
  const double heads = static_cast<double>(config.num_attention_heads);
  const double up_projection = 2.0 * static_cast<double>(kv_len) *
                               static_cast<double>(config.kv_lora_rank) * heads *
                               static_cast<double>(config.qk_nope_head_dim + config.v_head_dim);
  return up_projection + attention_flops(1, config.num_attention_heads, q_len, kv_len,
                                         config.q_head_dim(), config.v_head_dim, Mask::causal());
}

/// Returns the FLOPs of the absorbed path for the same sequence: folding W_UK into each query
/// (q_nope . W_UK: 2 x q_len x H x d_nope x kv_lora_rank), MQA over the latent cache with
/// head_dim_k = kv_lora_rank + d_rope and head_dim_v = kv_lora_rank, then W_UV on each head's
/// output (2 x q_len x H x kv_lora_rank x d_v). Excludes the shared projections.
inline double mla_absorbed_flops(const MlaConfig& config, Index q_len, Index kv_len) {
  const double rows = static_cast<double>(q_len * config.num_attention_heads);
  const double absorb = 2.0 * rows * static_cast<double>(config.kv_lora_rank) *
                        static_cast<double>(config.qk_nope_head_dim + config.v_head_dim);
  return absorb + attention_flops(1, config.num_attention_heads, q_len, kv_len,
                                  config.latent_dim(), config.kv_lora_rank, Mask::causal());
}

/// Returns the absorbed path's attention alone: the MQA over the latent cache (the part that
/// streams the cache and that the roofline of a decode step is about).
inline double mla_absorbed_attention_flops(const MlaConfig& config, Index q_len, Index kv_len) {
  return attention_flops(1, config.num_attention_heads, q_len, kv_len, config.latent_dim(),
                         config.kv_lora_rank, Mask::causal());
}

/// Returns the FLOPs of the projections both paths share for `tokens` tokens: the query (with or
/// without compression), kv_a_proj_with_mqa and o_proj (norms and RoPE are negligible).
inline double mla_projection_flops(const MlaConfig& config, Index tokens) {
  const double hidden = static_cast<double>(config.hidden_size);
  const double q_out = static_cast<double>(config.num_attention_heads * config.q_head_dim());
  const double q = config.q_lora_rank > 0
                       ? static_cast<double>(config.q_lora_rank) * (hidden + q_out)
                       : hidden * q_out;
  const double kv_a = hidden * static_cast<double>(config.latent_dim());
  const double o = static_cast<double>(config.num_attention_heads * config.v_head_dim) * hidden;
  return 2.0 * static_cast<double>(tokens) * (q + kv_a + o);
}

}  // namespace headroom
