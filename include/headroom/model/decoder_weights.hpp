// SPDX-License-Identifier: MIT
// The tensors of a Llama-family decoder, in the shapes Hugging Face stores them.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "headroom/core/error.hpp"
#include "headroom/core/tensor_view.hpp"
#include "headroom/model/decoder_config.hpp"

namespace headroom {

/// True for the element types a decoder's linear weights and embeddings are held in: float, and
/// Eigen::bfloat16 (half the memory, and half the bytes each decode step reads).
template <class T>
inline constexpr bool kIsWeightElement =
    std::is_same_v<T, float> || std::is_same_v<T, Eigen::bfloat16>;

/// The weights of one decoder layer under their checkpoint names (model.layers.<i>.<name>).
/// Linear weights are [out_features, in_features], row-major, as torch stores them (y = x W^T),
/// of Weight (float or Eigen::bfloat16); norms and biases are f32 whatever Weight is.
/// With H = num_attention_heads, G = num_key_value_heads, d = head_dim:
template <class Weight = float>
struct DecoderLayerWeightsOf {
  static_assert(kIsWeightElement<Weight>, "DecoderLayerWeightsOf: Weight is float or bfloat16.");
  using Matrix = Eigen::Matrix<Weight, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

  Eigen::VectorXf input_layernorm;           // [hidden_size] RMSNorm weight
  Matrix q_proj;                             // [H * d, hidden_size]  self_attn.q_proj
  Matrix k_proj;                             // [G * d, hidden_size]
  Matrix v_proj;                             // [G * d, hidden_size]
  Eigen::VectorXf q_bias, k_bias, v_bias;    // [H * d], [G * d], [G * d]; empty without qkv_bias
  Matrix o_proj;                             // [hidden_size, H * d]
  Eigen::VectorXf o_bias;                    // [hidden_size]; empty without o_bias
  Eigen::VectorXf post_attention_layernorm;  // [hidden_size]
  Matrix gate_proj;                          // [intermediate_size, hidden_size]  mlp.gate_proj
  Matrix up_proj;                            // [intermediate_size, hidden_size]
  Matrix down_proj;                          // [hidden_size, intermediate_size]
};

using DecoderLayerWeights = DecoderLayerWeightsOf<float>;

/// The weights of a whole decoder, linear weights and embeddings of Weight (float or
/// Eigen::bfloat16).
template <class Weight = float>
struct DecoderWeightsOf {
  using Matrix = typename DecoderLayerWeightsOf<Weight>::Matrix;
  using LayerWeights = DecoderLayerWeightsOf<Weight>;

  Matrix embed_tokens;                      // [vocab_size, hidden_size]  model.embed_tokens
  std::vector<LayerWeights> layers;         // [num_hidden_layers]
  Eigen::VectorXf norm;                     // [hidden_size]  model.norm
  Matrix lm_head;  // [vocab_size, hidden_size]; empty with tie_word_embeddings (embed_tokens)

  /// Checks every tensor's shape against `config` (which must be valid); throws headroom::Error
  /// naming the tensor, its shape and the expected one. Tensors the config does not use (biases
  /// it has none of, lm_head when tied) must be empty rather than ignored.
  void validate(const DecoderConfig& config) const {
    constexpr const char* kWhere = "DecoderWeights";
    const Index hidden = config.hidden_size, q_rows = config.num_attention_heads * config.head_dim;
    const Index kv_rows = config.num_key_value_heads * config.head_dim;
    const auto check = [&](const std::string& name, Index rows, Index cols, Index want_rows,
                           Index want_cols) {
      HEADROOM_CHECK(rows == want_rows && cols == want_cols, kWhere, name, " is [", rows, ", ",
                     cols, "] but the config needs [", want_rows, ", ", want_cols, "]");
    };
    const auto check_vector = [&](const std::string& name, Index size, Index want) {
      HEADROOM_CHECK(size == want, kWhere, name, " is [", size, "] but the config needs [", want,
                     "]");
    };
    check("embed_tokens", embed_tokens.rows(), embed_tokens.cols(), config.vocab_size, hidden);
    check_vector("norm", norm.size(), hidden);
    const Index head_rows = config.tie_word_embeddings ? 0 : config.vocab_size;
    check("lm_head", lm_head.rows(), lm_head.cols(), head_rows,
          config.tie_word_embeddings ? 0 : hidden);
    HEADROOM_CHECK(static_cast<Index>(layers.size()) == config.num_hidden_layers, kWhere,
                   "layers (", layers.size(), ") must number num_hidden_layers (",
                   config.num_hidden_layers, ")");
    for (size_t i = 0; i < layers.size(); ++i) {
      const LayerWeights& l = layers[i];
      const std::string at = "layers[" + std::to_string(i) + "].";
      check_vector(at + "input_layernorm", l.input_layernorm.size(), hidden);
      check(at + "q_proj", l.q_proj.rows(), l.q_proj.cols(), q_rows, hidden);
      check(at + "k_proj", l.k_proj.rows(), l.k_proj.cols(), kv_rows, hidden);
      check(at + "v_proj", l.v_proj.rows(), l.v_proj.cols(), kv_rows, hidden);
      check_vector(at + "q_bias", l.q_bias.size(), config.qkv_bias ? q_rows : 0);
      check_vector(at + "k_bias", l.k_bias.size(), config.qkv_bias ? kv_rows : 0);
      check_vector(at + "v_bias", l.v_bias.size(), config.qkv_bias ? kv_rows : 0);
      check(at + "o_proj", l.o_proj.rows(), l.o_proj.cols(), hidden, q_rows);
      check_vector(at + "o_bias", l.o_bias.size(), config.o_bias ? hidden : 0);
      check_vector(at + "post_attention_layernorm", l.post_attention_layernorm.size(), hidden);
      check(at + "gate_proj", l.gate_proj.rows(), l.gate_proj.cols(), config.intermediate_size,
            hidden);
      check(at + "up_proj", l.up_proj.rows(), l.up_proj.cols(), config.intermediate_size, hidden);
      check(at + "down_proj", l.down_proj.rows(), l.down_proj.cols(), hidden,
            config.intermediate_size);
    }
  }

  /// Returns weights of the right shapes with random values, for tests, benchmarks and demos:
  /// linear weights uniform in +-1/sqrt(in_features) (PyTorch's default init), biases in +-0.1,
  /// norm weights in [0.5, 1.5], embeddings normal with deviation 1, drawn in f32 and rounded to
  /// Weight. Deterministic per seed.
  static DecoderWeightsOf random(const DecoderConfig& config, std::uint32_t seed = 0) {
    config.validate();
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
    const auto linear = [&](Index out_features, Index in_features) {
      const float bound = 1.0f / std::sqrt(static_cast<float>(in_features));
      Matrix weight(out_features, in_features);
      for (Index i = 0; i < weight.size(); ++i) weight.data()[i] = Weight(bound * unit(rng));
      return weight;
    };
    const auto vector = [&](Index size, float center, float spread) {
      Eigen::VectorXf weight(size);
      for (Index i = 0; i < size; ++i) weight[i] = center + spread * unit(rng);
      return weight;
    };
    const Index hidden = config.hidden_size, q_rows = config.num_attention_heads * config.head_dim;
    const Index kv_rows = config.num_key_value_heads * config.head_dim;
    DecoderWeightsOf weights;
    std::normal_distribution<float> normal(0.0f, 1.0f);
    weights.embed_tokens.resize(config.vocab_size, hidden);
    for (Index i = 0; i < weights.embed_tokens.size(); ++i) {
      weights.embed_tokens.data()[i] = Weight(normal(rng));
    }
    for (Index i = 0; i < config.num_hidden_layers; ++i) {
      LayerWeights layer;
      layer.input_layernorm = vector(hidden, 1.0f, 0.5f);
      layer.q_proj = linear(q_rows, hidden);
      layer.k_proj = linear(kv_rows, hidden);
      layer.v_proj = linear(kv_rows, hidden);
      if (config.qkv_bias) {
        layer.q_bias = vector(q_rows, 0.0f, 0.1f);
        layer.k_bias = vector(kv_rows, 0.0f, 0.1f);
        layer.v_bias = vector(kv_rows, 0.0f, 0.1f);
      }
      layer.o_proj = linear(hidden, q_rows);
      if (config.o_bias) layer.o_bias = vector(hidden, 0.0f, 0.1f);
      layer.post_attention_layernorm = vector(hidden, 1.0f, 0.5f);
      layer.gate_proj = linear(config.intermediate_size, hidden);
      layer.up_proj = linear(config.intermediate_size, hidden);
      layer.down_proj = linear(hidden, config.intermediate_size);
      weights.layers.push_back(std::move(layer));
    }
    weights.norm = vector(hidden, 1.0f, 0.5f);
    if (!config.tie_word_embeddings) weights.lm_head = linear(config.vocab_size, hidden);
    return weights;
  }

  /// Returns these weights with the linear weights and embeddings converted to To (bf16 rounds
  /// to nearest even; bf16 to f32 is exact), norms and biases as they are.
  template <class To>
  DecoderWeightsOf<To> converted() const {
    const auto convert = [](const Matrix& m) { return m.template cast<To>().eval(); };
    DecoderWeightsOf<To> to;
    to.embed_tokens = convert(embed_tokens);
    for (const LayerWeights& l : layers) {
      typename DecoderWeightsOf<To>::LayerWeights layer;
      layer.input_layernorm = l.input_layernorm;
      layer.q_proj = convert(l.q_proj);
      layer.k_proj = convert(l.k_proj);
      layer.v_proj = convert(l.v_proj);
      layer.q_bias = l.q_bias;
      layer.k_bias = l.k_bias;
      layer.v_bias = l.v_bias;
      layer.o_proj = convert(l.o_proj);
      layer.o_bias = l.o_bias;
      layer.post_attention_layernorm = l.post_attention_layernorm;
      layer.gate_proj = convert(l.gate_proj);
      layer.up_proj = convert(l.up_proj);
      layer.down_proj = convert(l.down_proj);
      to.layers.push_back(std::move(layer));
    }
    to.norm = norm;
    to.lm_head = convert(lm_head);
    return to;
  }
};

/// f32 weights, as tests and conversions build them.
using DecoderWeights = DecoderWeightsOf<float>;

}  // namespace headroom
