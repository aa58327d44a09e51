// SPDX-License-Identifier: MIT
// The checkpoint tensors of one DeepSeek-V2 attention layer, in the shapes Hugging Face stores.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <random>

#include "headroom/core/error.hpp"
#include "headroom/core/tensor_view.hpp"
#include "headroom/mla/mla_config.hpp"

namespace headroom {

/// The weights of one MLA layer under their checkpoint names (self_attn.<name>.weight). Linear
/// weights are [out_features, in_features], row-major, as torch stores them: y = x W^T, and a
/// safetensors tensor copies in unchanged.
/// With H = num_attention_heads, r = kv_lora_rank, d_nope, d_rope, d_v the head dims:
struct MlaWeights {
  /// Row-major, [out_features, in_features].
  using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

  Matrix q_a_proj;            // [q_lora_rank, hidden_size]; empty when q_lora_rank == 0
  Eigen::VectorXf q_a_layernorm;  // [q_lora_rank] RMSNorm weight; empty when q_lora_rank == 0
  Matrix q_b_proj;            // [H * (d_nope + d_rope), q_lora_rank]; empty when q_lora_rank == 0
  Matrix q_proj;              // [H * (d_nope + d_rope), hidden_size]; only when q_lora_rank == 0
  /// Outputs [c_kv (r) | k_pe (d_rope)]: the latent before its norm, then the shared RoPE key.
  Matrix kv_a_proj_with_mqa;  // [r + d_rope, hidden_size]
  Eigen::VectorXf kv_a_layernorm;  // [r] RMSNorm weight of c_kv (not of k_pe)
  /// Rows h * (d_nope + d_v) + [0, d_nope) are W_UK of head h, the next d_v rows W_UV.
  Matrix kv_b_proj;           // [H * (d_nope + d_v), r]
  Matrix o_proj;              // [hidden_size, H * d_v]

  /// Checks every tensor's shape against `config` (which must be valid); throws headroom::Error
  /// naming the tensor, its shape and the expected one. Tensors the config does not use (q_proj
  /// with query compression, q_a_* and q_b_proj without) must be empty rather than ignored.
  void validate(const MlaConfig& config) const {
    constexpr const char* kWhere = "MlaWeights";
    const Index heads = config.num_attention_heads, hidden = config.hidden_size;
    const Index q_rows = heads * config.q_head_dim();
    const bool compressed = config.q_lora_rank > 0;
    const auto check = [&](const char* name, Index rows, Index cols, Index want_rows,
                           Index want_cols, const char* meaning) {
      HEADROOM_CHECK(rows == want_rows && cols == want_cols, kWhere, name, " is [", rows, ", ",
                     cols, "] but the config needs [", want_rows, ", ", want_cols, "] (", meaning,
                     ")");
    };
    const auto check_vector = [&](const char* name, Index size, Index want, const char* meaning) {
      HEADROOM_CHECK(size == want, kWhere, name, " is [", size, "] but the config needs [", want,
                     "] (", meaning, ")");
    };
    if (compressed) {
      check("q_a_proj", q_a_proj.rows(), q_a_proj.cols(), config.q_lora_rank, hidden,
            "q_lora_rank, hidden_size");
      check_vector("q_a_layernorm", q_a_layernorm.size(), config.q_lora_rank, "q_lora_rank");
      check("q_b_proj", q_b_proj.rows(), q_b_proj.cols(), q_rows, config.q_lora_rank,
            "num_attention_heads * (qk_nope_head_dim + qk_rope_head_dim), q_lora_rank");
      check("q_proj", q_proj.rows(), q_proj.cols(), 0, 0,
            "empty: with q_lora_rank > 0 the query comes from q_a_proj and q_b_proj");
    } else {
      check("q_proj", q_proj.rows(), q_proj.cols(), q_rows, hidden,
            "num_attention_heads * (qk_nope_head_dim + qk_rope_head_dim), hidden_size");
      const char* unused = "empty: q_lora_rank is 0, the query comes from q_proj";
      check("q_a_proj", q_a_proj.rows(), q_a_proj.cols(), 0, 0, unused);
      check_vector("q_a_layernorm", q_a_layernorm.size(), 0, unused);
      check("q_b_proj", q_b_proj.rows(), q_b_proj.cols(), 0, 0, unused);
    }
    check("kv_a_proj_with_mqa", kv_a_proj_with_mqa.rows(), kv_a_proj_with_mqa.cols(),
          config.latent_dim(), hidden, "kv_lora_rank + qk_rope_head_dim, hidden_size");
    check_vector("kv_a_layernorm", kv_a_layernorm.size(), config.kv_lora_rank, "kv_lora_rank");
    check("kv_b_proj", kv_b_proj.rows(), kv_b_proj.cols(),
          heads * (config.qk_nope_head_dim + config.v_head_dim), config.kv_lora_rank,
          "num_attention_heads * (qk_nope_head_dim + v_head_dim), kv_lora_rank");
    check("o_proj", o_proj.rows(), o_proj.cols(), hidden, heads * config.v_head_dim,
          "hidden_size, num_attention_heads * v_head_dim");
  }

  /// Returns weights of the right shapes with random values, for tests, benchmarks and demos:
  /// Linear weights uniform in +-1/sqrt(in_features) (PyTorch's default init, so activations keep
  /// their scale), norm weights uniform in [0.5, 1.5]. Deterministic for a given seed.
  static MlaWeights random(const MlaConfig& config, std::uint32_t seed = 0) {
    config.validate();
    std::mt19937 rng(seed);
    const auto linear = [&](Index out_features, Index in_features) {
      std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
      const float bound = 1.0f / std::sqrt(static_cast<float>(in_features));
      Matrix weight(out_features, in_features);
      for (Index i = 0; i < weight.size(); ++i) weight.data()[i] = bound * dist(rng);
      return weight;
    };
    const auto norm = [&](Index size) {
      std::uniform_real_distribution<float> dist(0.5f, 1.5f);
      Eigen::VectorXf weight(size);
      for (Index i = 0; i < size; ++i) weight[i] = dist(rng);
      return weight;
    };
    const Index heads = config.num_attention_heads, hidden = config.hidden_size;
    MlaWeights weights;
    if (config.q_lora_rank > 0) {
      weights.q_a_proj = linear(config.q_lora_rank, hidden);
      weights.q_a_layernorm = norm(config.q_lora_rank);
      weights.q_b_proj = linear(heads * config.q_head_dim(), config.q_lora_rank);
    } else {
      weights.q_proj = linear(heads * config.q_head_dim(), hidden);
    }
    weights.kv_a_proj_with_mqa = linear(config.latent_dim(), hidden);
    weights.kv_a_layernorm = norm(config.kv_lora_rank);
    weights.kv_b_proj =
        linear(heads * (config.qk_nope_head_dim + config.v_head_dim), config.kv_lora_rank);
    weights.o_proj = linear(hidden, heads * config.v_head_dim);
    return weights;
  }
};

}  // namespace headroom
