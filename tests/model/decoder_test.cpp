// SPDX-License-Identifier: MIT
// Tests of the Llama-family decoder against a naive double-precision forward pass of the same
// weights: GQA, MQA and MHA, Qwen2's biases and tied embeddings, Mistral's window, RoPE
// scalings, prompts fed whole or token by token, low-precision caches, rollback and errors.
#include "headroom/model/decoder.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "expect_error.hpp"

namespace headroom {
namespace {

using testing::expect_error;
using MatrixD = Eigen::MatrixXd;

DecoderConfig tiny_config(Index heads, Index kv_heads) {
  DecoderConfig config;
  config.vocab_size = 37;
  config.hidden_size = 24;
  config.intermediate_size = 40;
  config.num_hidden_layers = 2;
  config.num_attention_heads = heads;
  config.num_key_value_heads = kv_heads;
  config.head_dim = 6;
  config.max_position_embeddings = 64;
  config.rope_theta = 500.0;
  return config;
}

MatrixD to_double(const DecoderWeights::Matrix& m) { return m.cast<double>(); }

// Rows of x (tokens x hidden), RMS-normalised and weighted.
MatrixD rms_norm(const MatrixD& x, const Eigen::VectorXf& weight, double eps) {
  MatrixD out = x;
  for (Index t = 0; t < x.rows(); ++t) {
    const double inverse =
        1.0 / std::sqrt(x.row(t).squaredNorm() / static_cast<double>(x.cols()) + eps);
    out.row(t) = (x.row(t) * inverse).cwiseProduct(weight.cast<double>().transpose());
  }
  return out;
}

// The inverse frequencies and cos/sin factor of `config`'s RoPE for a sequence of `length`
// (which matters to dynamic NTK alone), from the table (its formulas are tested in rope_test).
struct Rotation {
  std::vector<double> inv_freq;
  double factor;
};
Rotation rotation_for(const DecoderConfig& config, Index length) {
  const RopeTable table(config.rope_config(), length);
  return {table.inv_freq(), table.attention_factor()};
}

// Rotates head vectors (rotate-half pairs (i, i + d/2)) of row `t` at `pos`, in place.
void rotate(MatrixD& x, Index t, Index heads, Index head_dim, Index pos, const Rotation& r) {
  const Index half = head_dim / 2;
  for (Index h = 0; h < heads; ++h) {
    for (Index i = 0; i < half; ++i) {
      const double angle = static_cast<double>(pos) * r.inv_freq[static_cast<size_t>(i)];
      const double c = std::cos(angle) * r.factor, s = std::sin(angle) * r.factor;
      double& a = x(t, h * head_dim + i);
      double& b = x(t, h * head_dim + half + i);
      const double a0 = a, b0 = b;
      a = a0 * c - b0 * s;
      b = b0 * c + a0 * s;
    }
  }
}

// The naive decoder: the sequence fed in `chunks` (token counts), every step's keys rotated as
// the decoder rotates them (for dynamic NTK, with the table of the length reached then).
// Returns the logits of every position, [tokens, vocab].
MatrixD reference_logits(const DecoderConfig& config, const DecoderWeights& w,
                         const std::vector<std::int32_t>& tokens,
                         const std::vector<Index>& chunks) {
  const Index n = static_cast<Index>(tokens.size()), hidden = config.hidden_size;
  const Index heads = config.num_attention_heads, kv_heads = config.num_key_value_heads;
  const Index d = config.head_dim, group = heads / kv_heads;
  // The rotation each position's q and k get: that of the chunk it arrives in.
  std::vector<Rotation> rotation_at;
  Index built = 0;  // as Decoder::update_rope, the length the table was last built for
  for (Index chunk : chunks) {
    const Index end = static_cast<Index>(rotation_at.size()) + chunk;
    if (config.rope_scaling.kind == RopeScaling::Kind::kDynamicNtk) {
      const Index original = config.rope_scaling.original_max_position_embeddings;
      if (end > std::max(built, original)) built = end;
    }
    const Rotation r = rotation_for(config, built);
    for (Index i = 0; i < chunk; ++i) rotation_at.push_back(r);
  }
  MatrixD x(n, hidden);
  for (Index t = 0; t < n; ++t) x.row(t) = w.embed_tokens.row(tokens[t]).cast<double>();
  for (const DecoderLayerWeights& l : w.layers) {
    const MatrixD h = rms_norm(x, l.input_layernorm, config.rms_norm_eps);
    MatrixD q = h * to_double(l.q_proj).transpose();
    MatrixD k = h * to_double(l.k_proj).transpose();
    MatrixD v = h * to_double(l.v_proj).transpose();
    if (config.qkv_bias) {
      q.rowwise() += l.q_bias.cast<double>().transpose();
      k.rowwise() += l.k_bias.cast<double>().transpose();
      v.rowwise() += l.v_bias.cast<double>().transpose();
    }
    for (Index t = 0; t < n; ++t) {
      rotate(q, t, heads, d, t, rotation_at[static_cast<size_t>(t)]);
      rotate(k, t, kv_heads, d, t, rotation_at[static_cast<size_t>(t)]);
    }
    MatrixD attended = MatrixD::Zero(n, heads * d);
    for (Index t = 0; t < n; ++t) {
      const Index first = config.sliding_window > 0
                              ? std::max<Index>(0, t - config.sliding_window + 1)
                              : 0;
      for (Index hq = 0; hq < heads; ++hq) {
        const Index hk = hq / group;
        std::vector<double> logits;
        double top = -std::numeric_limits<double>::infinity();
        for (Index j = first; j <= t; ++j) {
          logits.push_back(q.row(t).segment(hq * d, d).dot(k.row(j).segment(hk * d, d)) /
                           std::sqrt(static_cast<double>(d)));
          top = std::max(top, logits.back());
        }
        double sum = 0.0;
        for (double& logit : logits) sum += (logit = std::exp(logit - top));
        for (Index j = first; j <= t; ++j) {
          attended.row(t).segment(hq * d, d) +=
              logits[static_cast<size_t>(j - first)] / sum * v.row(j).segment(hk * d, d);
        }
      }
    }
    x += attended * to_double(l.o_proj).transpose();
    if (config.o_bias) x.rowwise() += l.o_bias.cast<double>().transpose();
    const MatrixD h2 = rms_norm(x, l.post_attention_layernorm, config.rms_norm_eps);
    MatrixD gate = h2 * to_double(l.gate_proj).transpose();
    const MatrixD up = h2 * to_double(l.up_proj).transpose();
    gate = (gate.array() / (1.0 + (-gate.array()).exp()) * up.array()).matrix();
    x += gate * to_double(l.down_proj).transpose();
  }
  const MatrixD out = rms_norm(x, w.norm, config.rms_norm_eps);
  const MatrixD head = to_double(config.tie_word_embeddings ? w.embed_tokens : w.lm_head);
  return out * head.transpose();
}

std::vector<std::int32_t> random_tokens(Index count, Index vocab, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::int32_t> tokens(static_cast<size_t>(count));
  for (auto& token : tokens) token = static_cast<std::int32_t>(rng() % vocab);
  return tokens;
}

// Feeds `tokens` to a decoder with weights of Weight in `chunks` and checks each chunk's last
// logits against the reference's (of the values the weights hold) at that position, within
// `tolerance` of the largest logit magnitude.
template <class CacheElement, class Weight = float>
void expect_matches_reference(const DecoderConfig& config, const std::vector<Index>& chunks,
                              double tolerance, std::uint32_t seed) {
  const DecoderWeightsOf<Weight> held = DecoderWeightsOf<Weight>::random(config, seed);
  const DecoderWeights weights = held.template converted<float>();
  Index total = 0;
  for (Index chunk : chunks) total += chunk;
  const std::vector<std::int32_t> tokens = random_tokens(total, config.vocab_size, seed + 1);
  const MatrixD expected = reference_logits(config, weights, tokens, chunks);
  Decoder<CacheElement, Weight> decoder(config, held, DecoderOptions{total + 3, 2});
  Index at = 0;
  for (Index chunk : chunks) {
    const std::vector<std::int32_t> part(tokens.begin() + at, tokens.begin() + at + chunk);
    const Eigen::VectorXf logits = decoder.forward(part);
    at += chunk;
    const Eigen::VectorXd want = expected.row(at - 1).transpose();
    const double scale = std::max(1.0, want.cwiseAbs().maxCoeff());
    const double error = (logits.cast<double>() - want).cwiseAbs().maxCoeff();
    EXPECT_LE(error, tolerance * scale) << "logits after " << at << " tokens";
  }
  EXPECT_EQ(decoder.position(), total);
}

// f32 activations and caches against double: the products and the softmax round in f32 at
// every layer, a few ulps of 2^-24 each over sums of tens of terms (2.5e-7 of the largest logit
// measured at most over these tests).
constexpr double kF32Tolerance = 2e-6;

TEST(DecoderTest, MatchesReferenceForGqaMqaAndMhaFedWholeOrInSteps) {
  for (const auto& [heads, kv_heads] : {std::pair<Index, Index>{4, 2}, {4, 1}, {3, 3}}) {
    SCOPED_TRACE(std::to_string(heads) + "/" + std::to_string(kv_heads));
    const DecoderConfig config = tiny_config(heads, kv_heads);
    expect_matches_reference<float>(config, {11}, kF32Tolerance, 1);
    expect_matches_reference<float>(config, {5, 1, 1, 3, 1}, kF32Tolerance, 2);
    expect_matches_reference<float>(config, {1, 1, 1, 1}, kF32Tolerance, 3);
  }
}

TEST(DecoderTest, MatchesReferenceWithQwen2BiasesTiedEmbeddingsAndLlamaOutputBias) {
  DecoderConfig qwen = tiny_config(4, 2);
  qwen.model_type = "qwen2";
  qwen.qkv_bias = true;
  qwen.tie_word_embeddings = true;
  expect_matches_reference<float>(qwen, {6, 1, 2}, kF32Tolerance, 4);
  DecoderConfig llama = tiny_config(4, 4);
  llama.qkv_bias = llama.o_bias = true;
  expect_matches_reference<float>(llama, {4, 1}, kF32Tolerance, 5);
}

TEST(DecoderTest, MatchesReferenceWithASlidingWindow) {
  DecoderConfig mistral = tiny_config(4, 2);
  mistral.model_type = "mistral";
  mistral.sliding_window = 3;
  expect_matches_reference<float>(mistral, {9}, kF32Tolerance, 6);
  expect_matches_reference<float>(mistral, {4, 1, 1, 1, 2, 1}, kF32Tolerance, 7);
}

TEST(DecoderTest, MatchesReferenceWithRopeScalings) {
  DecoderConfig llama3 = tiny_config(4, 2);
  llama3.rope_scaling = RopeScaling::llama3(8.0, 1.0, 4.0, 8);
  expect_matches_reference<float>(llama3, {7, 1, 1}, kF32Tolerance, 8);
  DecoderConfig yarn = tiny_config(4, 2);
  yarn.rope_scaling = RopeScaling::yarn(4.0, 8);
  expect_matches_reference<float>(yarn, {7, 1, 1}, kF32Tolerance, 9);
  // Dynamic NTK past its original context of 6: the table grows with the sequence, and keys keep
  // the rotation they were cached with.
  DecoderConfig dynamic = tiny_config(4, 2);
  dynamic.rope_scaling = RopeScaling::dynamic_ntk(2.0, 6);
  expect_matches_reference<float>(dynamic, {4, 1, 3, 1, 1}, kF32Tolerance, 10);
}

TEST(DecoderTest, MatchesReferenceWithLowPrecisionCaches) {
  // Keys and values rounded to f16 (2^-11 relative), bf16 (2^-8) or int8 (half of 1/127 of each
  // row's largest magnitude): each bound is about one such rounding of the logits' scale, which
  // the averaging of attention and the products keep the errors under (measured at most: f16
  // 4.3e-5, bf16 3.2e-4, int8 1.4e-3).
  const DecoderConfig config = tiny_config(4, 2);
  expect_matches_reference<Eigen::bfloat16>(config, {6, 1, 1}, 3e-3, 11);
  expect_matches_reference<Eigen::half>(config, {6, 1, 1}, 4e-4, 12);
  expect_matches_reference<std::int8_t>(config, {6, 1, 1}, 1e-2, 13);
}

// A model whose projections have more rows than one block of the threaded products of a few
// tokens (64): q_proj 96, gate_proj and up_proj 130, lm_head 301 (none a multiple of 64).
DecoderConfig blocked_config() {
  DecoderConfig config = tiny_config(16, 4);
  config.intermediate_size = 130;
  config.vocab_size = 301;
  return config;
}

TEST(DecoderTest, ProjectionsCutIntoBlocksMatchReference) {
  // Chunks of at most 4 tokens take the blocked products, the 6-token prompt Eigen's.
  expect_matches_reference<float>(blocked_config(), {6, 1, 4, 3, 1}, kF32Tolerance, 15);
  expect_matches_reference<float>(blocked_config(), {1, 2, 1}, kF32Tolerance, 16);
}

TEST(DecoderTest, Bf16WeightsMatchReferenceOfTheValuesTheyHold) {
  // Widened exactly to f32 and summed in f32, bf16 weights compute as f32 ones of the same
  // values: the f32 bound holds. Chunks of 1-4 tokens take the products widened in registers
  // (hidden 24 and intermediate 40 or 130: rows of one packet and a tail, of several), longer
  // ones the blocks widened for Eigen's product (lm_head of 301 rows: two blocks of 256).
  using Bf16 = Eigen::bfloat16;
  expect_matches_reference<float, Bf16>(tiny_config(4, 2), {11}, kF32Tolerance, 18);
  expect_matches_reference<float, Bf16>(tiny_config(4, 1), {5, 1, 1, 3, 1}, kF32Tolerance, 19);
  expect_matches_reference<float, Bf16>(blocked_config(), {6, 1, 4, 3, 2}, kF32Tolerance, 20);
  DecoderConfig qwen = tiny_config(4, 2);
  qwen.model_type = "qwen2";
  qwen.qkv_bias = true;
  qwen.tie_word_embeddings = true;  // the bf16 embeddings are the output head too
  expect_matches_reference<Eigen::bfloat16, Bf16>(qwen, {6, 1, 2}, 3e-3, 21);
}

template <class Weight>
void expect_bit_identical_for_every_thread_count() {
  const DecoderConfig config = blocked_config();
  const DecoderWeightsOf<Weight> weights = DecoderWeightsOf<Weight>::random(config, 17);
  const std::vector<std::vector<std::int32_t>> steps = {
      {3, 4, 5, 6, 7, 8}, {9}, {10, 11, 12}, {13}, {14, 15, 16, 17}};
  std::vector<Eigen::VectorXf> first;  // the logits of each step with one thread
  for (int threads : {1, 2, 3}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    Decoder<float, Weight> decoder(config, weights, DecoderOptions{32, threads});
    for (size_t i = 0; i < steps.size(); ++i) {
      const Eigen::VectorXf logits = decoder.forward(steps[i]);
      if (threads == 1) {
        first.push_back(logits);
      } else {
        EXPECT_EQ(logits, first[i]) << "step " << i;
      }
    }
  }
}

TEST(DecoderTest, LogitsAreBitIdenticalForEveryThreadCount) {
  expect_bit_identical_for_every_thread_count<float>();
  expect_bit_identical_for_every_thread_count<Eigen::bfloat16>();
}

TEST(DecoderTest, TruncateRollsBackToTheSameLogits) {
  const DecoderConfig config = tiny_config(4, 2);
  const DecoderWeights weights = DecoderWeights::random(config, 14);
  Decoder<float> decoder(config, weights, DecoderOptions{16, 1});
  decoder.forward({3, 4, 5});
  const Eigen::VectorXf first = decoder.forward({6});
  decoder.forward({7, 8});
  decoder.truncate(3);
  EXPECT_EQ(decoder.position(), 3);
  EXPECT_EQ(decoder.forward({6}), first);
  decoder.reset();
  decoder.forward({3, 4, 5});
  EXPECT_EQ(decoder.forward({6}), first);
}

TEST(DecoderTest, RefusesBadTokensAndLengthsWithoutChangingState) {
  const DecoderConfig config = tiny_config(4, 2);
  const DecoderWeights weights = DecoderWeights::random(config, 15);
  Decoder<float> decoder(config, weights, DecoderOptions{6, 1});
  decoder.forward({1, 2, 3});
  expect_error([&] { decoder.forward({}); }, "Decoder::forward: tokens is empty");
  expect_error([&] { decoder.forward({4, 37}); },
               "Decoder::forward: tokens[1] (37) is outside [0, vocab_size (37))");
  expect_error([&] { decoder.forward({4, -1}); }, "tokens[1] (-1) is outside");
  expect_error([&] { decoder.forward({4, 5, 6, 7}); },
               "tokens (4) would take the sequence from 3 past max_tokens (6)");
  expect_error([&] { decoder.truncate(4); }, "Decoder::truncate: length (4) is outside [0, position (3)]");
  EXPECT_EQ(decoder.position(), 3);
  Decoder<float> fresh(config, weights, DecoderOptions{6, 1});
  fresh.forward({1, 2, 3});
  EXPECT_EQ(decoder.forward({4}), fresh.forward({4}));

  expect_error([&] { Decoder<float>(config, weights, DecoderOptions{-1, 1}); },
               "Decoder: options.max_tokens (-1) must be >= 0");
  expect_error([&] { Decoder<float>(config, weights, DecoderOptions{8, -1}); },
               "Decoder: options.num_threads (-1) must be >= 0");
  DecoderWeights short_of_a_layer = weights;
  short_of_a_layer.layers.pop_back();
  expect_error([&] { Decoder<float>(config, short_of_a_layer); },
               "DecoderWeights: layers (1) must number num_hidden_layers (2)");
  DecoderWeights narrow = weights;
  narrow.layers[1].k_proj.resize(6, 24);
  expect_error([&] { Decoder<float>(config, narrow); },
               "DecoderWeights: layers[1].k_proj is [6, 24] but the config needs [12, 24]");
  DecoderConfig odd = config;
  odd.num_key_value_heads = 3;
  expect_error([&] { odd.validate(); },
               "DecoderConfig: num_attention_heads (4) is not a multiple of num_key_value_heads (3)");
}

TEST(DecoderTest, AFailureInALaterLayerLeavesNoTokenInAnyCache) {
  // Layer 1's values overflow f16 (its largest finite value is 65504), so its cache refuses them
  // after layer 0's cache took its keys and values.
  const DecoderConfig config = tiny_config(4, 2);
  DecoderWeights weights = DecoderWeights::random(config, 16);
  Decoder<Eigen::half> decoder(config, weights, DecoderOptions{8, 1});
  decoder.forward({1, 2});
  weights.layers[1].v_proj *= 1e7f;
  Decoder<Eigen::half> overflowing(config, weights, DecoderOptions{8, 1});
  expect_error([&] { overflowing.forward({1, 2}); }, "");
  EXPECT_EQ(overflowing.position(), 0);
  EXPECT_EQ(overflowing.cache(0).length(0), 0);
  EXPECT_EQ(overflowing.cache(1).length(0), 0);
  EXPECT_EQ(decoder.cache(1).length(0), 2);
  expect_error([&] { decoder.cache(2); },
               "Decoder::cache: layer (2) is outside [0, num_hidden_layers (2))");
}

}  // namespace
}  // namespace headroom
