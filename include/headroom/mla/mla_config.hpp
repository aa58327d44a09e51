// SPDX-License-Identifier: MIT
// The sizes and settings of a DeepSeek-V2 multi-head latent attention (MLA) layer, under the names
// of its Hugging Face config.json, with the RoPE and softmax scale they imply.
#pragma once

#include <cmath>
#include <limits>

#include "headroom/core/config_checks.hpp"
#include "headroom/core/error.hpp"
#include "headroom/core/tensor_view.hpp"
#include "headroom/position/rope.hpp"

namespace headroom {

/// The fields of a DeepSeek-V2 / DeepSeek-V2-Lite config.json that shape one attention layer
/// (DeepSeek-V2, arXiv:2405.04434, section 2.1 and appendix C; transformers-style
/// configuration_deepseek.py). Defaults reproduce DeepSeek-V2; deepseek_v2_lite() the Lite model.
///
/// Per token and head, the query is [q_nope (qk_nope_head_dim) | q_pe (qk_rope_head_dim)], the key
/// [k_nope (qk_nope_head_dim) | k_pe (qk_rope_head_dim)] and the value v_head_dim long. k_nope and
/// the value are up-projected from the latent c_kv (kv_lora_rank), k_pe is one vector per token
/// shared by every head. Only c_kv and k_pe are cached: kv_lora_rank + qk_rope_head_dim elements
/// per token and layer.
struct MlaConfig {
  Index hidden_size = 5120;
  Index num_attention_heads = 128;
  /// Rank of the query compression; 0 (or absent in config.json, as in DeepSeek-V2-Lite) means
  /// the query is projected from the hidden state directly by q_proj.
  Index q_lora_rank = 1536;
  /// Rank of the joint key-value compression: the cached latent c_kv.
  Index kv_lora_rank = 512;
  Index qk_nope_head_dim = 128;
  /// RoPE dims of q and k (the decoupled key k_pe); rotated in interleaved pairs (2i, 2i + 1).
  Index qk_rope_head_dim = 64;
  Index v_head_dim = 128;
  /// RMSNorm epsilon of q_a_layernorm and kv_a_layernorm.
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  /// Positions the RoPE table covers (rows of cos and sin: 2 x 4 bytes x qk_rope_head_dim / 2 per
  /// position, 42 MB at DeepSeek-V2's 163840; lower it to what you will decode).
  Index max_position_embeddings = 163840;
  /// `rope_scaling`: none, linear or yarn (the kinds modeling_deepseek.py implements without a
  /// sequence-length dependence). mscale and mscale_all_dim follow DeepSeek's own code, not the
  /// "0 means absent" rule of RopeScaling: they are used as given, and a config.json without them
  /// means mscale = 1, mscale_all_dim = 0 (DeepseekV2YarnRotaryEmbedding's argument defaults).
  /// attention_factor is not a DeepSeek field and must stay unset: it is derived (rope_config()).
  RopeScaling rope_scaling = RopeScaling::yarn(40.0, 4096, 0.707, 0.707);

  /// Returns DeepSeek-V2-Lite's attention (hidden 2048, 16 heads, no query compression, the same
  /// latent, head dims and YaRN as DeepSeek-V2).
  static MlaConfig deepseek_v2_lite() {
    MlaConfig config;
    config.hidden_size = 2048;
    config.num_attention_heads = 16;
    config.q_lora_rank = 0;
    return config;
  }

  /// Returns DeepSeek-V2's attention (the defaults).
  static MlaConfig deepseek_v2() { return MlaConfig{}; }

  /// Returns qk_nope_head_dim + qk_rope_head_dim, the per-head query and key length.
  Index q_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  /// Returns kv_lora_rank + qk_rope_head_dim, the elements one token of the latent cache holds.
  Index latent_dim() const { return kv_lora_rank + qk_rope_head_dim; }

  /// Returns the factor DeepSeek's YaRN multiplies into cos and sin:
  /// yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim), 1 without YaRN.
  /// (1 for DeepSeek-V2, where the two are equal: the whole correction goes into the softmax.)
  /// Source: modeling_deepseek.py, DeepseekV2YarnRotaryEmbedding._set_cos_sin_cache (`_mscale`);
  /// unlike transformers' `_compute_yarn_parameters`, the ratio is taken whatever the values.
  double rope_attention_factor() const {
    if (rope_scaling.kind != RopeScaling::Kind::kYarn) return 1.0;
    return yarn_mscale(rope_scaling.factor, rope_scaling.mscale) /
           yarn_mscale(rope_scaling.factor, rope_scaling.mscale_all_dim);
  }

  /// Returns the softmax scale of q.k: q_head_dim^-1/2, times yarn_get_mscale(factor,
  /// mscale_all_dim)^2 when rope_scaling is set and mscale_all_dim is nonzero, where
  /// yarn_get_mscale(s, m) = 0.1 m ln(s) + 1. About 0.1147 for DeepSeek-V2 (1.2608^2 / sqrt(192)),
  /// not 1 / sqrt(192) = 0.0722: the YaRN temperature correction lives here, since MLA's RoPE
  /// covers only 64 of the 192 dims.
  /// Source: modeling_deepseek.py, DeepseekV2Attention.__init__ (`self.softmax_scale`).
  double softmax_scale() const {
    double scale = 1.0 / std::sqrt(static_cast<double>(q_head_dim()));
    if (rope_scaling.kind != RopeScaling::Kind::kNone && rope_scaling.mscale_all_dim != 0.0) {
      const double mscale = yarn_mscale(rope_scaling.factor, rope_scaling.mscale_all_dim);
      scale *= mscale * mscale;
    }
    return scale;
  }

  /// Returns the RoPE of the qk_rope_head_dim dims: interleaved pairs, rope_theta, the scaling,
  /// DeepSeek's cos/sin factor (rope_attention_factor) and max_position_embeddings rows.
  ///
  /// Layout: the original DeepSeek weights rotate pairs (2i, 2i + 1). Hugging Face's
  /// apply_rotary_pos_emb in modeling_deepseek.py first permutes q_pe and k_pe to [even dims | odd
  /// dims] and then applies rotate_half, which rotates exactly the pairs (2i, 2i + 1) by the angle
  /// of frequency i, leaving the result in the permuted order. q_pe and k_pe are permuted alike, so
  /// every dot product q_pe . k_pe, and hence the attention, is the same as with the interleaved
  /// rotation done in place; only the order of the cached k_pe dims differs from HF's cache.
  RopeConfig rope_config() const {
    RopeConfig rope;
    rope.head_dim = qk_rope_head_dim;
    rope.rotary_dim = qk_rope_head_dim;
    rope.base = rope_theta;
    rope.layout = RopeLayout::kInterleaved;
    rope.scaling = rope_scaling;
    if (rope_scaling.kind == RopeScaling::Kind::kYarn) {
      rope.scaling.attention_factor = rope_attention_factor();
    }
    rope.max_positions = max_position_embeddings;
    return rope;
  }

  /// Checks that the sizes fit together; throws headroom::Error naming the field, its value and
  /// what was expected.
  void validate() const {
    constexpr const char* kWhere = "MlaConfig";
    detail::check_config_dims(kWhere, {{"hidden_size", hidden_size},
                                       {"num_attention_heads", num_attention_heads},
                                       {"kv_lora_rank", kv_lora_rank},
                                       {"qk_nope_head_dim", qk_nope_head_dim},
                                       {"qk_rope_head_dim", qk_rope_head_dim},
                                       {"v_head_dim", v_head_dim}});
    constexpr Index kDimLimit = detail::kMaxConfigDim;
    HEADROOM_CHECK(q_lora_rank >= 0 && q_lora_rank <= kDimLimit, kWhere, "q_lora_rank (",
                   q_lora_rank, ") must be in [1, ", kDimLimit, "], or 0 for no query compression");
    HEADROOM_CHECK(max_position_embeddings > 0, kWhere, "max_position_embeddings (",
                   max_position_embeddings, ") must be positive");
    const Index per_head = qk_nope_head_dim + qk_rope_head_dim + v_head_dim;
    HEADROOM_CHECK(num_attention_heads * per_head <= kDimLimit, kWhere, "num_attention_heads (",
                   num_attention_heads, ") x (qk_nope_head_dim + qk_rope_head_dim + v_head_dim) (",
                   per_head, ") exceeds ", kDimLimit);
    HEADROOM_CHECK(qk_rope_head_dim % 2 == 0, kWhere, "qk_rope_head_dim (", qk_rope_head_dim,
                   ") must be even: RoPE rotates dims in pairs");
    detail::check_finite_above(kWhere, "rms_norm_eps", rms_norm_eps, 0.0);
    detail::check_finite_above(kWhere, "rope_theta", rope_theta, 1.0);
    using Kind = RopeScaling::Kind;
    const Kind kind = rope_scaling.kind;
    HEADROOM_CHECK(kind == Kind::kNone || kind == Kind::kLinear || kind == Kind::kYarn, kWhere,
                   "rope_scaling.kind (", detail::rope_scaling_name(kind),
                   ") is not one DeepSeek-V2 attention supports here: none, linear or yarn");
    HEADROOM_CHECK(!rope_scaling.attention_factor.has_value(), kWhere,
                   "rope_scaling.attention_factor (", rope_scaling.attention_factor.value_or(0.0),
                   ") is not a DeepSeek-V2 field; it is derived from mscale and mscale_all_dim");
    if (kind != Kind::kNone) {
      HEADROOM_CHECK(rope_scaling.factor >= 1.0 && std::isfinite(rope_scaling.factor), kWhere,
                     "rope_scaling.factor (", rope_scaling.factor,
                     ") must be a finite number >= 1");
      // Negative values could make yarn_get_mscale zero or negative.
      HEADROOM_CHECK(rope_scaling.mscale >= 0.0 && std::isfinite(rope_scaling.mscale), kWhere,
                     "rope_scaling.mscale (", rope_scaling.mscale,
                     ") must be a finite number >= 0");
      HEADROOM_CHECK(rope_scaling.mscale_all_dim >= 0.0 &&
                         std::isfinite(rope_scaling.mscale_all_dim),
                     kWhere, "rope_scaling.mscale_all_dim (", rope_scaling.mscale_all_dim,
                     ") must be a finite number >= 0");
    }
    if (kind == Kind::kYarn) {
      HEADROOM_CHECK(rope_scaling.original_max_position_embeddings > 0, kWhere,
                     "rope_scaling.original_max_position_embeddings (",
                     rope_scaling.original_max_position_embeddings, ") must be positive for yarn");
      HEADROOM_CHECK(rope_scaling.beta_slow > 0.0 && std::isfinite(rope_scaling.beta_slow), kWhere,
                     "rope_scaling.beta_slow (", rope_scaling.beta_slow,
                     ") must be a finite number > 0");
      HEADROOM_CHECK(rope_scaling.beta_fast > rope_scaling.beta_slow &&
                         std::isfinite(rope_scaling.beta_fast),
                     kWhere, "rope_scaling.beta_fast (", rope_scaling.beta_fast,
                     ") must be finite and greater than beta_slow (", rope_scaling.beta_slow, ")");
    }
    // Whatever the table would still refuse (e.g. max_position_embeddings x qk_rope_head_dim
    // overflowing), under its own message.
    static_cast<void>(detail::check_rope_config(rope_config(), 0));
  }
};

}  // namespace headroom
