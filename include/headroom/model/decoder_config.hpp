// SPDX-License-Identifier: MIT
// The sizes and settings of a Llama-family decoder (Llama, Mistral, Qwen2), under the names of
// its Hugging Face config.json.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "headroom/core/config_checks.hpp"
#include "headroom/core/error.hpp"
#include "headroom/core/tensor_view.hpp"
#include "headroom/position/rope.hpp"

namespace headroom {

/// The fields of a config.json that shape a Llama-family decoder: pre-norm blocks of RMSNorm,
/// grouped-query attention with rotate-half RoPE, RMSNorm, and a SwiGLU MLP (transformers'
/// modeling_llama.py; Mistral adds a sliding window, Qwen2 biases on q, k and v).
struct DecoderConfig {
  /// "llama", "mistral" or "qwen2": informative only; the fields below decide everything.
  std::string model_type = "llama";
  Index vocab_size = 0;
  Index hidden_size = 0;
  /// Width of the MLP's gate and up projections.
  Index intermediate_size = 0;
  Index num_hidden_layers = 0;
  Index num_attention_heads = 0;
  /// num_attention_heads for MHA, fewer for GQA, 1 for MQA.
  Index num_key_value_heads = 0;
  /// Per-head dim of q, k and v (config `head_dim`, else hidden_size / num_attention_heads).
  Index head_dim = 0;
  /// Positions the RoPE table covers: the longest sequence the model will run.
  Index max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling = {};
  /// Whether the output projection is the token embedding (no lm_head.weight).
  bool tie_word_embeddings = false;
  /// Biases on q, k and v (Qwen2; Llama's `attention_bias`).
  bool qkv_bias = false;
  /// A bias on the attention's output projection (Llama's `attention_bias`).
  bool o_bias = false;
  /// Mistral's `sliding_window`: each position attends to itself and the window - 1 before it;
  /// 0 means no window.
  Index sliding_window = 0;
  /// config.json's `eos_token_id` (one id or a list): the tokens generation stops at.
  std::vector<std::int32_t> eos_token_ids;

  /// Returns the rotate-half RoPE of the whole head dim over max_position_embeddings positions.
  RopeConfig rope_config() const {
    RopeConfig rope;
    rope.head_dim = head_dim;
    rope.rotary_dim = head_dim;
    rope.base = rope_theta;
    rope.layout = RopeLayout::kRotateHalf;
    rope.scaling = rope_scaling;
    rope.max_positions = max_position_embeddings;
    return rope;
  }

  /// Checks that the sizes fit together; throws headroom::Error naming the field, its value and
  /// what was expected.
  void validate() const {
    constexpr const char* kWhere = "DecoderConfig";
    detail::check_config_dims(kWhere, {{"vocab_size", vocab_size},
                                       {"hidden_size", hidden_size},
                                       {"intermediate_size", intermediate_size},
                                       {"num_hidden_layers", num_hidden_layers},
                                       {"num_attention_heads", num_attention_heads},
                                       {"num_key_value_heads", num_key_value_heads},
                                       {"head_dim", head_dim}});
    HEADROOM_CHECK(num_attention_heads % num_key_value_heads == 0, kWhere,
                   "num_attention_heads (", num_attention_heads,
                   ") is not a multiple of num_key_value_heads (", num_key_value_heads, ")");
    HEADROOM_CHECK(num_attention_heads * head_dim <= detail::kMaxConfigDim, kWhere,
                   "num_attention_heads (", num_attention_heads, ") x head_dim (", head_dim,
                   ") exceeds ", detail::kMaxConfigDim);
    HEADROOM_CHECK(head_dim % 2 == 0, kWhere, "head_dim (", head_dim,
                   ") must be even: RoPE rotates dims in pairs");
    HEADROOM_CHECK(max_position_embeddings > 0, kWhere, "max_position_embeddings (",
                   max_position_embeddings, ") must be positive");
    HEADROOM_CHECK(sliding_window >= 0, kWhere, "sliding_window (", sliding_window,
                   ") must be >= 0 (0: no window)");
    detail::check_finite_above(kWhere, "rms_norm_eps", rms_norm_eps, 0.0);
    detail::check_finite_above(kWhere, "rope_theta", rope_theta, 1.0);
    // The scaling's own checks, under the table's messages.
    static_cast<void>(detail::check_rope_config(rope_config(), 0));
  }
};

}  // namespace headroom
