// SPDX-License-Identifier: MIT
// A Llama-family decoder (Llama, Mistral, Qwen2) over one sequence: the layers' products in Eigen,
// RoPE and attention through headroom's kernels, keys and values in one KvCache per layer.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "headroom/attention/attend.hpp"
#include "headroom/cache/kv_cache.hpp"
#include "headroom/core/element.hpp"
#include "headroom/core/error.hpp"
#include "headroom/core/parallel.hpp"
#include "headroom/detail/weight_rows.hpp"
#include "headroom/model/decoder_config.hpp"
#include "headroom/model/decoder_weights.hpp"
#include "headroom/position/rope.hpp"

namespace headroom {

/// How a Decoder runs: the most tokens its sequence may hold and the threads of its kernels.
struct DecoderOptions {
  /// Capacity of the KV caches (and rows of the RoPE table), allocated up front; 0 means
  /// max_position_embeddings, which for long-context models is many GiB: set what you will use.
  /// It may exceed max_position_embeddings, which is what RoPE scalings are for.
  Index max_tokens = 0;
  /// Threads of attention and of the projections of a few tokens (decode); 0 means
  /// default_num_threads(). The products of a prompt's many tokens use Eigen's own threads.
  int num_threads = 0;
};

/// Runs a decoder over one sequence, token by token or a prompt at a time. Each layer is
/// (transformers' modeling_llama.py, LlamaDecoderLayer):
///   x += o_proj(attention(rope(q_proj(h)), rope(k_proj(h)), v_proj(h))),  h = rms_norm(x)
///   x += down_proj(silu(gate_proj(h)) * up_proj(h)),                       h = rms_norm(x)
/// then logits = lm_head(rms_norm(x)). Attention is causal (or Mistral's sliding window) over the
/// sequence so far, read from the layer's cache of CacheElement (float, Eigen::bfloat16,
/// Eigen::half or std::int8_t). Activations are f32; RMSNorm sums squares in double. Weights of
/// bf16 are widened to f32 as they are read, so every product still sums in f32.
/// \tparam CacheElement the element type of the KV caches.
/// \tparam Weight the element type of the linear weights and embeddings: float, or
///   Eigen::bfloat16 (half the memory, and a decode step reads half the bytes).
template <class CacheElement = float, class Weight = float>
class Decoder {
 public:
  using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Weights = DecoderWeightsOf<Weight>;

  /// Takes the config and weights; throws headroom::Error if either is invalid, or
  /// options.max_tokens or options.num_threads is negative.
  Decoder(const DecoderConfig& config, Weights weights, const DecoderOptions& options = {})
      : config_(validated(config)),
        weights_(validated(config_, std::move(weights))),
        max_tokens_(max_tokens_of(config_, options)),
        num_threads_(options.num_threads),
        rope_(std::make_unique<RopeTable>(rope_config())) {
    KvCacheConfig cache;
    cache.num_kv_heads = config_.num_key_value_heads;
    cache.head_dim_k = cache.head_dim_v = config_.head_dim;
    cache.num_sequences = 1;
    cache.capacity = max_tokens_;
    for (Index i = 0; i < config_.num_hidden_layers; ++i) caches_.emplace_back(cache);
  }

  const DecoderConfig& config() const { return config_; }
  const Weights& weights() const { return weights_; }
  /// The most tokens the sequence may hold.
  Index max_tokens() const { return max_tokens_; }
  /// The tokens fed so far: the position of the next one.
  Index position() const { return position_; }
  /// The KV cache of layer `layer` (sequence 0 holds the tokens fed so far).
  const KvCache<CacheElement>& cache(Index layer) const {
    HEADROOM_CHECK(layer >= 0 && layer < config_.num_hidden_layers, "Decoder::cache", "layer (",
                   layer, ") is outside [0, num_hidden_layers (", config_.num_hidden_layers, "))");
    return caches_[static_cast<size_t>(layer)];
  }
  /// Bytes the KV caches hold for each token (all layers).
  Index cache_bytes_per_token() const {
    return config_.num_hidden_layers * caches_.front().bytes_per_token();
  }

  /// Feeds `tokens` at the next positions (a prompt, or the tokens sampled last) and returns the
  /// logits of the last one, [vocab_size]. Throws headroom::Error, changing nothing, if `tokens`
  /// is empty, holds an id outside [0, vocab_size), or would take the sequence past max_tokens.
  Eigen::VectorXf forward(const std::vector<std::int32_t>& tokens) {
    constexpr const char* kWhere = "Decoder::forward";
    const Index count = static_cast<Index>(tokens.size());
    HEADROOM_CHECK(count > 0, kWhere, "tokens is empty; expected at least one");
    for (Index t = 0; t < count; ++t) {
      HEADROOM_CHECK(tokens[t] >= 0 && tokens[t] < config_.vocab_size, kWhere, "tokens[", t,
                     "] (", tokens[t], ") is outside [0, vocab_size (", config_.vocab_size, "))");
    }
    HEADROOM_CHECK(count <= max_tokens_ - position_, kWhere, "tokens (", count,
                   ") would take the sequence from ", position_, " past max_tokens (",
                   max_tokens_, ")");
    // What remains can still throw (a low-precision cache refuses a key it cannot hold, such as
    // an f16 overflow): the caches and the RoPE table are then put back as they were.
    std::unique_ptr<RopeTable> old_rope;
    const Index old_rope_length = rope_length_;
    try {
      old_rope = update_rope(position_ + count);
      Eigen::VectorXf logits = run_layers(tokens);
      position_ += count;
      return logits;
    } catch (...) {
      for (KvCache<CacheElement>& cache : caches_) {
        if (cache.length(0) > position_) cache.truncate(0, position_);
      }
      if (old_rope != nullptr) rope_ = std::move(old_rope);
      rope_length_ = old_rope_length;
      throw;
    }
  }

  /// Forgets the sequence: the next token is at position 0.
  void reset() {
    for (KvCache<CacheElement>& cache : caches_) cache.reset();
    position_ = 0;
  }

  /// Keeps the first `length` tokens (rolling back tokens a speculative step rejected); throws
  /// headroom::Error, changing nothing, unless 0 <= length <= position().
  void truncate(Index length) {
    HEADROOM_CHECK(length >= 0 && length <= position_, "Decoder::truncate", "length (", length,
                   ") is outside [0, position (", position_, ")]");
    for (KvCache<CacheElement>& cache : caches_) cache.truncate(0, length);
    position_ = length;
  }

 private:
  /// Runs the layers over `tokens` (validated) at position_ and returns the last one's logits.
  Eigen::VectorXf run_layers(const std::vector<std::int32_t>& tokens) {
    const Index count = static_cast<Index>(tokens.size());

    const Index hidden = config_.hidden_size, heads = config_.num_attention_heads;
    const Index kv_heads = config_.num_key_value_heads, head_dim = config_.head_dim;
    RowMatrix x(count, hidden);  // [tokens, hidden]: the residual stream
    for (Index t = 0; t < count; ++t) {
      x.row(t) = weights_.embed_tokens.row(tokens[t]).template cast<float>();
    }
    AttentionOptions options;
    options.mask = config_.sliding_window > 0 ? Mask::sliding_window(config_.sliding_window)
                                              : Mask::causal();
    options.num_threads = num_threads_;
    RowMatrix attended(count, heads * head_dim);  // [tokens, heads * head_dim]
    for (Index i = 0; i < config_.num_hidden_layers; ++i) {
      const typename Weights::LayerWeights& w = weights_.layers[static_cast<size_t>(i)];
      RowMatrix h = rms_norm(x, w.input_layernorm);
      // q [tokens, heads * head_dim]; k and v [tokens, kv_heads * head_dim].
      auto [q, k, v] = project_each<3>(h, {&w.q_proj, &w.k_proj, &w.v_proj});
      if (config_.qkv_bias) {
        q.rowwise() += w.q_bias.transpose();
        k.rowwise() += w.k_bias.transpose();
        v.rowwise() += w.v_bias.transpose();
      }
      const auto q_view = TensorView<float>::bshd(q.data(), 1, count, heads, head_dim);
      const auto k_view = TensorView<float>::bshd(k.data(), 1, count, kv_heads, head_dim);
      apply_rope(*rope_, q_view, k_view, position_);
      KvCache<CacheElement>& cache = caches_[static_cast<size_t>(i)];
      cache.append(0, TensorView<const float>::bshd(k.data(), 1, count, kv_heads, head_dim),
                   TensorView<const float>::bshd(v.data(), 1, count, kv_heads, head_dim));
      attend(TensorView<const float>::bshd(q.data(), 1, count, heads, head_dim),
             cache.view({0}),
             TensorView<float>::bshd(attended.data(), 1, count, heads, head_dim), options);
      x += project(attended, w.o_proj);
      if (config_.o_bias) x.rowwise() += w.o_bias.transpose();

      h = rms_norm(x, w.post_attention_layernorm);
      auto [gate, up] = project_each<2>(h, {&w.gate_proj, &w.up_proj});  // [tokens, intermediate]
      // SwiGLU: silu(gate) * up, silu(g) = g / (1 + exp(-g)).
      gate.array() = gate.array() / (1.0f + (-gate.array()).exp()) * up.array();
      x += project(gate, w.down_proj);
    }
    const RowMatrix last = rms_norm(x.bottomRows(1), weights_.norm);  // [1, hidden]
    const typename Weights::Matrix& head =
        config_.tie_word_embeddings ? weights_.embed_tokens : weights_.lm_head;
    return project(last, head).transpose();
  }

  /// Returns x.W^T, [tokens, W's rows].
  RowMatrix project(const RowMatrix& x, const typename Weights::Matrix& w) const {
    return std::move(project_each<1>(x, {&w})[0]);
  }

  /// Returns x.W^T for each W of `ws`, [tokens, W's rows]: products of the same input (q, k and
  /// v; gate and up) share one parallel_for. For a few tokens (decode, speculative verification)
  /// a product reads every weight once for little arithmetic, and Eigen computes it on one
  /// thread: the rows of the W are cut into blocks that num_threads_ threads share. The blocks
  /// are fixed, so the result is the same for any thread count. A prompt's many tokens are one
  /// matrix product per W.
  /// Measured on Zen 3 (examples/generate's random model: 1024 hidden, 4 layers, 32k vocab; three
  /// alternated runs): decode with 2 threads 32-37 -> 52-65 tokens/s, with 1 thread the same.
  /// One parallel_for per group rather than per W (4 per layer instead of 7, so 17 per token of
  /// BM_DecoderStep instead of 29), the same bench, two alternated rounds of medians of 3: bf16
  /// weights with 2 threads at roof 0.89-0.92 of the paired read probe instead of 0.86-0.90
  /// (25-26 ms per step instead of 30-31); f32 weights and 1 thread the same.
  /// bf16 weights are widened in registers for a few tokens (detail::weight_row_dots), and a
  /// block of rows at a time into f32 for a prompt's matrix product.
  template <size_t kCount>
  std::array<RowMatrix, kCount> project_each(
      const RowMatrix& x, const std::array<const typename Weights::Matrix*, kCount>& ws) const {
    // Up to this many tokens the product is bound by reading W (a few FLOPs per weight).
    constexpr Index kFewTokens = 4;
    // Rows of W per block: a quarter to a half MiB of f32 weights at hidden sizes of 1-2k, enough
    // work per block to hide the handing out, and many blocks to balance the threads.
    constexpr Index kBlockRows = 64;
    std::array<RowMatrix, kCount> outs;
    std::array<Index, kCount + 1> first_block{};  // ws[i]'s blocks: [first_block[i], [i + 1])
    for (size_t i = 0; i < kCount; ++i) {
      outs[i].resize(x.rows(), ws[i]->rows());
      if (x.rows() > kFewTokens) many_token_product(x, *ws[i], outs[i]);
      first_block[i + 1] = first_block[i] + (ws[i]->rows() + kBlockRows - 1) / kBlockRows;
    }
    if (x.rows() > kFewTokens) return outs;
    const Index blocks = first_block[kCount];
    detail::parallel_for(blocks, detail::resolve_num_threads(num_threads_, blocks),
                         [&](int, Index block) {
                           size_t i = 0;
                           while (block >= first_block[i + 1]) ++i;
                           const typename Weights::Matrix& w = *ws[i];
                           const Index first = (block - first_block[i]) * kBlockRows;
                           const Index rows = std::min(kBlockRows, w.rows() - first);
                           if constexpr (std::is_same_v<Weight, float>) {
                             outs[i].middleCols(first, rows).noalias() =
                                 x * w.middleRows(first, rows).transpose();
                           } else {
                             few_token_dots(x, w, first, rows, outs[i]);
                           }
                         });
    return outs;
  }

  /// out = x.W^T for many tokens: one matrix product (Eigen's threads), bf16 weights widened to
  /// f32 a block of rows at a time.
  static void many_token_product(const RowMatrix& x, const typename Weights::Matrix& w,
                                 RowMatrix& out) {
    if constexpr (std::is_same_v<Weight, float>) {
      out.noalias() = x * w.transpose();
    } else {
      // Rows widened per product: 1-4 MiB of f32 at hidden sizes of 1-4k, many tokens' worth of
      // FLOPs per widened weight, so the widening costs little next to the product.
      constexpr Index kWidenRows = 256;
      RowMatrix widened(std::min(kWidenRows, w.rows()), w.cols());
      for (Index first = 0; first < w.rows(); first += kWidenRows) {
        const Index rows = std::min(kWidenRows, w.rows() - first);
        detail::to_float(w.row(first).data(), rows * w.cols(), 1.0f, widened.data());
        out.middleCols(first, rows).noalias() = x * widened.topRows(rows).transpose();
      }
    }
  }

  /// out's columns [first, first + rows) = x . W's rows [first, first + rows)^T, x of 1-4 rows.
  static void few_token_dots(const RowMatrix& x, const typename Weights::Matrix& w, Index first,
                             Index rows, RowMatrix& out) {
    const auto dots = [&](auto tokens) {
      detail::weight_row_dots<decltype(tokens)::value>(x.data(), x.cols(), w.row(first).data(),
                                                       w.cols(), w.cols(), rows,
                                                       out.data() + first, out.cols());
    };
    switch (x.rows()) {
      case 1: return dots(std::integral_constant<int, 1>{});
      case 2: return dots(std::integral_constant<int, 2>{});
      case 3: return dots(std::integral_constant<int, 3>{});
      default: return dots(std::integral_constant<int, 4>{});
    }
  }

  static DecoderConfig validated(const DecoderConfig& config) {
    config.validate();
    return config;
  }
  static Weights validated(const DecoderConfig& config, Weights weights) {
    weights.validate(config);
    return weights;
  }
  static Index max_tokens_of(const DecoderConfig& config, const DecoderOptions& options) {
    HEADROOM_CHECK(options.max_tokens >= 0, "Decoder", "options.max_tokens (", options.max_tokens,
                   ") must be >= 0 (0: max_position_embeddings)");
    HEADROOM_CHECK(options.num_threads >= 0, "Decoder", "options.num_threads (",
                   options.num_threads, ") must be >= 0 (0: default_num_threads())");
    return options.max_tokens > 0 ? options.max_tokens : config.max_position_embeddings;
  }

  RopeConfig rope_config() const {
    RopeConfig rope = config_.rope_config();
    rope.max_positions = max_tokens_;
    return rope;
  }

  /// Dynamic NTK grows the RoPE base with the sequence: as transformers' dynamic_rope_update,
  /// the table is rebuilt for `length` tokens when they pass the longest it was built for beyond
  /// the original context, and rebuilt plain when the sequence is back below it. Keys already
  /// in the caches keep the rotation they were given, as in transformers. Returns the table it
  /// replaced (null if none), so a failed call can restore it.
  std::unique_ptr<RopeTable> update_rope(Index length) {
    if (config_.rope_scaling.kind != RopeScaling::Kind::kDynamicNtk) return nullptr;
    const Index original = config_.rope_scaling.original_max_position_embeddings;
    Index wanted = rope_length_;
    if (length > std::max(rope_length_, original)) wanted = length;
    if (length < original && rope_length_ > original) wanted = 0;
    if (wanted == rope_length_) return nullptr;
    std::unique_ptr<RopeTable> replaced = std::exchange(rope_, std::make_unique<RopeTable>(rope_config(), wanted));
    rope_length_ = wanted;
    return replaced;
  }

  /// Returns RMSNorm of every row of `x` (HF LlamaRMSNorm): x / sqrt(mean(x^2) + eps) * weight.
  RowMatrix rms_norm(const Eigen::Ref<const RowMatrix>& x, const Eigen::VectorXf& weight) const {
    RowMatrix out(x.rows(), x.cols());
    for (Index t = 0; t < x.rows(); ++t) {
      const double mean_square = x.row(t).template cast<double>().squaredNorm() /
                                 static_cast<double>(x.cols());
      const float inverse = static_cast<float>(1.0 / std::sqrt(mean_square + config_.rms_norm_eps));
      out.row(t) = (x.row(t) * inverse).cwiseProduct(weight.transpose());
    }
    return out;
  }

  DecoderConfig config_;
  Weights weights_;
  Index max_tokens_;
  int num_threads_;
  std::unique_ptr<RopeTable> rope_;
  Index rope_length_ = 0;  // the sequence length the RoPE table was built for (dynamic NTK)
  std::vector<KvCache<CacheElement>> caches_;  // [num_hidden_layers]
  Index position_ = 0;
};

}  // namespace headroom
