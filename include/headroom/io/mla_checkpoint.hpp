// SPDX-License-Identifier: MIT
// Reads the attention layers of a DeepSeek-V2 checkpoint: MlaWeights from safetensors tensors.
#pragma once

#include <string>

#include "headroom/io/checkpoint.hpp"
#include "headroom/mla/mla_config.hpp"
#include "headroom/mla/mla_weights.hpp"

namespace headroom {

/// Returns the MLA weights stored under `prefix` (e.g. "model.layers.0.self_attn.") in
/// `checkpoint`, converted to f32: <prefix>q_a_proj.weight and the others of MlaWeights, under
/// the names and [out_features, in_features] shapes of DeepSeek's modeling_deepseek.py. The
/// tensors `config` does not use (q_proj with query compression, q_a_* and q_b_proj without) are
/// not read. Throws headroom::Error naming the tensor if one is missing, of another shape or not
/// floating-point.
inline MlaWeights read_mla_weights(const SafetensorsCheckpoint& checkpoint,
                                   const MlaConfig& config, const std::string& prefix) {
  config.validate();
  const auto matrix = [&](const char* name, Index rows, Index cols) {
    return read_matrix(checkpoint, prefix + name + ".weight", rows, cols);
  };
  const auto vector = [&](const char* name, Index size) {
    return read_vector(checkpoint, prefix + name + ".weight", size);
  };
  const Index heads = config.num_attention_heads, hidden = config.hidden_size;
  MlaWeights weights;
  if (config.q_lora_rank > 0) {
    weights.q_a_proj = matrix("q_a_proj", config.q_lora_rank, hidden);
    weights.q_a_layernorm = vector("q_a_layernorm", config.q_lora_rank);
    weights.q_b_proj = matrix("q_b_proj", heads * config.q_head_dim(), config.q_lora_rank);
  } else {
    weights.q_proj = matrix("q_proj", heads * config.q_head_dim(), hidden);
  }
  weights.kv_a_proj_with_mqa = matrix("kv_a_proj_with_mqa", config.latent_dim(), hidden);
  weights.kv_a_layernorm = vector("kv_a_layernorm", config.kv_lora_rank);
  weights.kv_b_proj = matrix("kv_b_proj", heads * (config.qk_nope_head_dim + config.v_head_dim),
                             config.kv_lora_rank);
  weights.o_proj = matrix("o_proj", hidden, heads * config.v_head_dim);
  weights.validate(config);
  return weights;
}

}  // namespace headroom
