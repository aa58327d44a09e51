// SPDX-License-Identifier: MIT
// Tests the MLA layer: expanded == absorbed == a straightforward double-precision reference written
// here (per-head K and V materialised, plain softmax, Hugging Face's de-interleave + rotate_half
// RoPE), and prefill-then-decode == one prefill through contiguous and paged latent caches of
// every element type.
#include "headroom/mla/mla_attention.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "expect_error.hpp"
#include "reference.hpp"

namespace headroom {
namespace {

// ---------------------------------------------------------------------------------------------
// The reference: DeepSeek-V2 attention as modeling_deepseek.py writes it, in double.

/// DeepSeek's yarn_get_mscale: 0.1 * mscale * ln(scale) + 1, or 1 for scale <= 1.
double deepseek_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

/// The RoPE of modeling_deepseek.py: inv_freq (default, linear or YaRN), cos/sin times YaRN's
/// `_mscale`, applied HF-style: permute the head to [even dims | odd dims], then
/// x * cos + rotate_half(x) * sin with cos = cat(cos_i, cos_i).
struct HfRope {
  Index dim;
  std::vector<double> inv_freq;
  double factor = 1.0;

  explicit HfRope(const MlaConfig& config) : dim(config.qk_rope_head_dim) {
    const RopeScaling& s = config.rope_scaling;
    const double base = config.rope_theta;
    for (Index i = 0; i < dim / 2; ++i) {
      const double extra = 1.0 / std::pow(base, static_cast<double>(2 * i) / static_cast<double>(dim));
      inv_freq.push_back(extra);
    }
    if (s.kind == RopeScaling::Kind::kLinear) {
      for (double& f : inv_freq) f /= s.factor;
    } else if (s.kind == RopeScaling::Kind::kYarn) {
      // yarn_find_correction_dim / yarn_find_correction_range / yarn_linear_ramp_mask.
      const double pi = std::acos(-1.0);
      const auto correction_dim = [&](double rotations) {
        return static_cast<double>(dim) *
               std::log(static_cast<double>(s.original_max_position_embeddings) /
                        (rotations * 2.0 * pi)) /
               (2.0 * std::log(base));
      };
      const double low = std::max(std::floor(correction_dim(s.beta_fast)), 0.0);
      double high = std::min(std::ceil(correction_dim(s.beta_slow)), static_cast<double>(dim - 1));
      if (low == high) high += 0.001;
      for (Index i = 0; i < dim / 2; ++i) {
        const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
        const double mask = 1.0 - ramp;  // inv_freq_mask: 1 keeps the extrapolated frequency
        const double inter = inv_freq[i] / s.factor;
        inv_freq[i] = inter * (1.0 - mask) + inv_freq[i] * mask;
      }
      factor = deepseek_mscale(s.factor, s.mscale) / deepseek_mscale(s.factor, s.mscale_all_dim);
    }
  }

  /// Returns x rotated at `pos`, in HF's permuted order [even dims | odd dims].
  std::vector<double> rotate(const double* x, double pos) const {
    const Index half = dim / 2;
    std::vector<double> permuted(dim), out(dim);
    for (Index i = 0; i < half; ++i) {
      permuted[i] = x[2 * i];
      permuted[half + i] = x[2 * i + 1];
    }
    for (Index d = 0; d < dim; ++d) {
      const Index i = d % half;
      const double c = std::cos(pos * inv_freq[i]) * factor;
      const double sn = std::sin(pos * inv_freq[i]) * factor;
      const double rotated_half = d < half ? -permuted[d + half] : permuted[d - half];
      out[d] = permuted[d] * c + rotated_half * sn;
    }
    return out;
  }
};

using Matrix = MlaWeights::Matrix;

/// y = W x for a [out, in] weight.
std::vector<double> linear(const Matrix& w, const std::vector<double>& x) {
  std::vector<double> y(w.rows(), 0.0);
  for (Index o = 0; o < w.rows(); ++o) {
    for (Index i = 0; i < w.cols(); ++i) y[o] += double{w(o, i)} * x[i];
  }
  return y;
}

std::vector<double> rms_norm(std::vector<double> x, const Eigen::VectorXf& weight, double eps) {
  double sum = 0.0;
  for (double v : x) sum += v * v;
  const double inv = 1.0 / std::sqrt(sum / static_cast<double>(x.size()) + eps);
  for (size_t d = 0; d < x.size(); ++d) x[d] = double{weight[static_cast<Index>(d)]} * x[d] * inv;
  return x;
}

/// Returns the layer's output for every token of one sequence, [tokens, hidden_size]: token t
/// attends causally to tokens 0..t. positions[t] is token t's RoPE position.
std::vector<double> reference_layer(const MlaConfig& c, const MlaWeights& w,
                                    const std::vector<float>& hidden,
                                    const std::vector<Index>& positions) {
  const Index tokens = static_cast<Index>(positions.size()), heads = c.num_attention_heads;
  const Index nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim, v_dim = c.v_head_dim;
  const Index rank = c.kv_lora_rank, q_dim = nope + rope;
  const HfRope hf_rope(c);
  // softmax_scale = q_head_dim^-0.5 * yarn_get_mscale(factor, mscale_all_dim)^2 (if set).
  double scale = 1.0 / std::sqrt(static_cast<double>(q_dim));
  if (c.rope_scaling.kind != RopeScaling::Kind::kNone && c.rope_scaling.mscale_all_dim != 0.0) {
    const double m = deepseek_mscale(c.rope_scaling.factor, c.rope_scaling.mscale_all_dim);
    scale *= m * m;
  }
  // Per token: q_nope [heads][nope], rotated q_pe [heads][rope], k_nope and v [heads][..], k_pe.
  std::vector<std::vector<std::vector<double>>> q_nope(tokens), q_pe(tokens), k_nope(tokens),
      value(tokens);
  std::vector<std::vector<double>> k_pe(tokens);
  for (Index t = 0; t < tokens; ++t) {
    const std::vector<double> x(hidden.begin() + t * c.hidden_size,
                                hidden.begin() + (t + 1) * c.hidden_size);
    const std::vector<double> q =
        c.q_lora_rank > 0
            ? linear(w.q_b_proj, rms_norm(linear(w.q_a_proj, x), w.q_a_layernorm, c.rms_norm_eps))
            : linear(w.q_proj, x);
    const std::vector<double> kv_a = linear(w.kv_a_proj_with_mqa, x);
    const std::vector<double> c_kv =
        rms_norm(std::vector<double>(kv_a.begin(), kv_a.begin() + rank), w.kv_a_layernorm,
                 c.rms_norm_eps);
    const std::vector<double> kv = linear(w.kv_b_proj, c_kv);  // [heads, nope + v]
    k_pe[t] = hf_rope.rotate(kv_a.data() + rank, static_cast<double>(positions[t]));
    for (Index h = 0; h < heads; ++h) {
      q_nope[t].emplace_back(q.begin() + h * q_dim, q.begin() + h * q_dim + nope);
      q_pe[t].push_back(hf_rope.rotate(q.data() + h * q_dim + nope, static_cast<double>(positions[t])));
      k_nope[t].emplace_back(kv.begin() + h * (nope + v_dim), kv.begin() + h * (nope + v_dim) + nope);
      value[t].emplace_back(kv.begin() + h * (nope + v_dim) + nope,
                            kv.begin() + (h + 1) * (nope + v_dim));
    }
  }
  std::vector<double> out;
  for (Index t = 0; t < tokens; ++t) {
    std::vector<double> attention(heads * v_dim, 0.0);
    for (Index h = 0; h < heads; ++h) {
      std::vector<double> logits(t + 1);
      double max_logit = -1e300;
      for (Index j = 0; j <= t; ++j) {
        double dot = 0.0;
        for (Index d = 0; d < nope; ++d) dot += q_nope[t][h][d] * k_nope[j][h][d];
        for (Index d = 0; d < rope; ++d) dot += q_pe[t][h][d] * k_pe[j][d];
        logits[j] = scale * dot;
        max_logit = std::max(max_logit, logits[j]);
      }
      double sum = 0.0;
      for (double& l : logits) sum += (l = std::exp(l - max_logit));
      for (Index j = 0; j <= t; ++j) {
        for (Index d = 0; d < v_dim; ++d) attention[h * v_dim + d] += logits[j] / sum * value[j][h][d];
      }
    }
    const std::vector<double> y = linear(w.o_proj, attention);
    out.insert(out.end(), y.begin(), y.end());
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

/// Small layers covering query compression on and off, no RoPE scaling, linear, DeepSeek's YaRN
/// (mscale == mscale_all_dim: cos/sin factor 1) and YaRN with a cos/sin factor != 1, head dims
/// that are and are not packet multiples.
struct Case {
  const char* name;
  MlaConfig config;
};

MlaConfig small_config(Index q_lora_rank, Index kv_lora_rank, Index rope, RopeScaling scaling) {
  MlaConfig c;
  c.hidden_size = 64;
  c.num_attention_heads = 4;
  c.q_lora_rank = q_lora_rank;
  c.kv_lora_rank = kv_lora_rank;
  c.qk_nope_head_dim = 16;
  c.qk_rope_head_dim = rope;
  c.v_head_dim = 16;
  c.max_position_embeddings = 128;
  c.rope_scaling = scaling;
  return c;
}

std::vector<Case> cases() {
  // original_max_position_embeddings 16: the tests' positions (up to ~40) cross it.
  return {
      {"q_lora_no_scaling", small_config(24, 32, 8, RopeScaling::none())},
      {"no_q_lora_deepseek_yarn", small_config(0, 32, 8, RopeScaling::yarn(4.0, 16, 0.707, 0.707))},
      {"q_lora_yarn_uneven_mscale", small_config(24, 32, 8, RopeScaling::yarn(4.0, 16, 1.0, 0.5))},
      {"no_q_lora_linear", small_config(0, 32, 8, RopeScaling::linear(2.0))},
      // Latent 48 + 16 = 64 and values 48: the kernel's vectorised paths (AVX-512: 16 lanes).
      {"packet_dims_yarn", small_config(0, 48, 16, RopeScaling::yarn(8.0, 16, 0.707, 0.707))},
  };
}

/// One call of a schedule: which sequences get how many new tokens.
struct Step {
  std::vector<Index> sequences;
  Index q_len;
};

/// Sequence 1 alone first, then both (different lengths), then decode steps and a short chunk.
const std::vector<Step> kSchedule = {{{1}, 6}, {{0, 1}, 9}, {{0, 1}, 1}, {{1, 0}, 2}, {{0, 1}, 1}};

/// Runs kSchedule through a layer and cache; returns every sequence's outputs in token order,
/// [2][tokens * hidden], and the RoPE positions used (cache length + position_offset).
template <class Cache>
std::vector<std::vector<float>> run_schedule(const MlaAttention& layer, Cache& cache,
                                             const std::vector<Index>& ids,
                                             const std::vector<std::vector<float>>& hidden,
                                             MlaOptions options, Index position_offset) {
  const Index width = layer.config().hidden_size;
  std::vector<std::vector<float>> outputs(2);
  std::vector<Index> done(2, 0);
  for (const Step& step : kSchedule) {
    const Index batch = static_cast<Index>(step.sequences.size());
    std::vector<float> x, y(batch * step.q_len * width);
    std::vector<Index> positions, cache_ids;
    for (Index s : step.sequences) {
      x.insert(x.end(), hidden[s].begin() + done[s] * width,
               hidden[s].begin() + (done[s] + step.q_len) * width);
      for (Index i = 0; i < step.q_len; ++i) positions.push_back(done[s] + i + position_offset);
      cache_ids.push_back(ids[s]);
    }
    if (position_offset != 0) options.positions = PositionView::bs(positions.data(), batch, step.q_len);
    layer.forward(TensorView<const float>::bshd(x.data(), batch, step.q_len, 1, width), cache,
                  cache_ids, TensorView<float>::bshd(y.data(), batch, step.q_len, 1, width),
                  options);
    for (Index b = 0; b < batch; ++b) {
      const Index s = step.sequences[b];
      outputs[s].insert(outputs[s].end(), y.begin() + b * step.q_len * width,
                        y.begin() + (b + 1) * step.q_len * width);
      done[s] += step.q_len;
    }
  }
  return outputs;
}

Index scheduled_tokens(Index sequence) {
  Index total = 0;
  for (const Step& step : kSchedule) {
    for (Index s : step.sequences) total += s == sequence ? step.q_len : 0;
  }
  return total;
}

double max_abs(const std::vector<double>& x) {
  double m = 0.0;
  for (double v : x) m = std::max(m, std::abs(v));
  return m;
}

TEST(MlaAttentionTest, ExpandedAndAbsorbedMatchTheReference) {
  for (const Case& test_case : cases()) {
    for (Index position_offset : {0, 23}) {
      SCOPED_TRACE(std::string(test_case.name) + " position offset " +
                   std::to_string(position_offset));
      const MlaConfig& config = test_case.config;
      const MlaAttention layer(config, MlaWeights::random(config, 7));
      std::mt19937 rng(11);
      const std::vector<std::vector<float>> hidden = {
          reference::random_vector(scheduled_tokens(0) * config.hidden_size, rng),
          reference::random_vector(scheduled_tokens(1) * config.hidden_size, rng)};
      std::vector<std::vector<double>> expected;
      for (Index s = 0; s < 2; ++s) {
        std::vector<Index> positions;
        for (Index t = 0; t < scheduled_tokens(s); ++t) positions.push_back(t + position_offset);
        expected.push_back(reference_layer(config, layer.weights(), hidden[s], positions));
      }

      std::vector<std::vector<std::vector<float>>> results;
      const std::pair<MlaMode, Index> modes[] = {{MlaMode::kExpanded, 0},
                                                 {MlaMode::kExpanded, 4},  // 4-token chunks
                                                 {MlaMode::kAbsorbed, 0},
                                                 {MlaMode::kAutomatic, 0}};
      for (const auto& [mode, chunk] : modes) {
        SCOPED_TRACE("mode " + std::to_string(static_cast<int>(mode)) + " chunk " +
                     std::to_string(chunk));
        KvCache<float> cache(latent_cache_config(config, 2, 32));
        MlaOptions options;
        options.mode = mode;
        options.expanded_chunk = chunk;
        results.push_back(run_schedule(layer, cache, {0, 1}, hidden, options, position_offset));
        for (Index s = 0; s < 2; ++s) {
          // Outputs reach ~1 here; f32 rounding of depth <= 64 dot products through five
          // projections and the softmax leaves ~1e-7 relative (measured: at most 3.7e-7 of the
          // largest output). 1e-5 of it leaves 25x room and still catches a wrong RoPE layout
          // (measured 2.6e-2), a wrong YaRN cos/sin factor (6.7e-3), a wrong scale or position.
          const double tolerance = 1e-5 * max_abs(expected[s]);
          ASSERT_EQ(results.back()[s].size(), expected[s].size());
          for (size_t i = 0; i < expected[s].size(); ++i) {
            ASSERT_NEAR(results.back()[s][i], expected[s][i], tolerance) << "sequence " << s << " " << i;
          }
        }
      }
      // The paths against each other, from the same cached f32 latents: only f32 summation order
      // differs (W_UK applied to q instead of c_kv, chunks merged by LSE); each is within 3.7e-7
      // of the reference, so within 7.4e-7 of each other, and 5e-6 leaves room.
      for (size_t r = 1; r < results.size(); ++r) {
        for (Index s = 0; s < 2; ++s) {
          for (size_t i = 0; i < results[0][s].size(); ++i) {
            ASSERT_NEAR(results[r][s][i], results[0][s][i], 5e-6 * max_abs(expected[s])) << r;
          }
        }
      }
    }
  }
}

TEST(MlaAttentionTest, AutomaticModeIsAbsorbedForDecodeAndExpandedForPrompts) {
  const MlaConfig lite = MlaConfig::deepseek_v2_lite();
  EXPECT_EQ(MlaAttention::choose_mode(lite, 1, {32768}), MlaMode::kAbsorbed);
  EXPECT_EQ(MlaAttention::choose_mode(lite, 8, {4096, 100}), MlaMode::kAbsorbed);
  EXPECT_EQ(MlaAttention::choose_mode(lite, 150, {32768}), MlaMode::kAbsorbed);
  EXPECT_EQ(MlaAttention::choose_mode(lite, 200, {32768}), MlaMode::kExpanded);
  EXPECT_EQ(MlaAttention::choose_mode(lite, 4096, {4096}), MlaMode::kExpanded);
  EXPECT_EQ(MlaAttention::choose_mode(MlaConfig::deepseek_v2(), 1, {100}), MlaMode::kAbsorbed);
  // A single key: up-projecting it is cheaper than absorbing every head's query.
  EXPECT_EQ(MlaAttention::choose_mode(MlaConfig::deepseek_v2(), 1, {1}), MlaMode::kExpanded);
}

/// Runs a prompt of `prefix` tokens and then one token at a time up to `total`, or (steps ==
/// false) all `total` tokens at once; returns the outputs, [total * hidden].
template <class Cache>
std::vector<float> prefill_and_decode(const MlaAttention& layer, Cache& cache, Index id,
                                      const std::vector<float>& hidden, Index prefix, Index total) {
  const Index width = layer.config().hidden_size;
  std::vector<float> out(total * width);
  for (Index t = 0; t < total;) {
    const Index n = t == 0 ? prefix : 1;
    layer.forward(TensorView<const float>::bshd(hidden.data() + t * width, 1, n, 1, width), cache,
                  {id}, TensorView<float>::bshd(out.data() + t * width, 1, n, 1, width));
    t += n;
  }
  return out;
}

template <class T>
class MlaCacheTypedTest : public ::testing::Test {};
using Elements = ::testing::Types<float, Eigen::bfloat16, Eigen::half, std::int8_t>;
TYPED_TEST_SUITE(MlaCacheTypedTest, Elements, );  // the empty name generator: clang -Wpedantic wants an argument for "..."

TYPED_TEST(MlaCacheTypedTest, PrefillThenDecodeEqualsOnePrefill) {
  using T = TypeParam;
  for (const Case& test_case : {cases()[2], cases()[4]}) {
    SCOPED_TRACE(test_case.name);
    const MlaConfig& config = test_case.config;
    const MlaAttention layer(config, MlaWeights::random(config, 3));
    std::mt19937 rng(5);
    const Index total = 40, prefix = 25, width = config.hidden_size;
    const std::vector<float> hidden = reference::random_vector(total * width, rng);

    // Automatic mode: the prompt goes expanded, the decode steps absorbed.
    KvCache<T> whole(latent_cache_config(config, 1, total));
    const std::vector<float> expected = prefill_and_decode(layer, whole, 0, hidden, total, total);
    KvCache<T> stepped(latent_cache_config(config, 1, total));
    const std::vector<float> got = prefill_and_decode(layer, stepped, 0, hidden, prefix, total);
    PagedKvCache<T> paged(paged_latent_cache_config(config, 12, 4));
    const Index paged_id = paged.add_sequence();
    const std::vector<float> got_paged =
        prefill_and_decode(layer, paged, paged_id, hidden, prefix, total);

    // Paged and contiguous read the same stored rows in the same order: identical bits.
    EXPECT_EQ(std::memcmp(got.data(), got_paged.data(), got.size() * sizeof(float)), 0);
    // Both runs cache the same latents, except that Eigen may round a one-token projection
    // differently from a 40-token one (an f32 ulp), which can flip the rounding of a stored
    // element: by 2^-8 of it in bf16, 2^-11 in f16, one step (1/127 of the row's largest value) in
    // int8. Through W_UV (entries ~0.18) and o_proj (~0.13) and a softmax weight <= 1, one flip of
    // a latent element of O(1) moves an output by at most ~1e-4 (bf16), ~1e-5 (f16), ~2e-4
    // (int8). Measured: f32, bf16, int8 below 1e-7 (no flip), f16 2.6e-6 (one flip).
    const double tolerance = std::is_same_v<T, float>         ? 1e-6
                             : std::is_same_v<T, Eigen::half> ? 1e-4
                             : std::is_same_v<T, std::int8_t> ? 1e-3
                                                              : 5e-4;
    ASSERT_EQ(got.size(), expected.size());
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], expected[i], tolerance) << i;

    // Against the f32 cache: the storage error itself. As for KvCacheTest's bounds, an output is
    // a mix of values, so it errs by about the latent's relative error (bf16 2^-9, f16 2^-12,
    // int8 half a step of max / 127) times the outputs' scale, plus the keys' effect on the
    // weights. Measured: f16 2.4e-4, bf16 1.7e-3, int8 7.4e-3; the bounds leave 3x or more.
    KvCache<float> exact(latent_cache_config(config, 1, total));
    const std::vector<float> f32 = prefill_and_decode(layer, exact, 0, hidden, prefix, total);
    const double storage_tolerance = std::is_same_v<T, float>         ? 0.0
                                     : std::is_same_v<T, Eigen::half> ? 1e-3
                                     : std::is_same_v<T, std::int8_t> ? 2.5e-2
                                                                      : 6e-3;
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], f32[i], storage_tolerance) << i;
  }
}

TEST(MlaAttentionTest, HiddenStatesWhoseLatentTheCacheCannotStoreAreRejectedByName) {
  // Regression: the int8 cache refused the NaN latent itself, in a message naming
  // KvCache::append and a tensor k the caller never passed.
  const MlaConfig config = small_config(0, 8, 4, RopeScaling::none());
  const MlaAttention layer(config, MlaWeights::random(config, 1));
  LatentCache<std::int8_t> cache(latent_cache_config(config, 1, 8));
  const Index width = config.hidden_size;
  std::vector<float> hidden(2 * width, 0.5f), out(2 * width, -7.0f);
  const auto out_view = TensorView<float>::bshd(out.data(), 1, 2, 1, width);
  const auto hidden_view = TensorView<const float>::bshd(hidden.data(), 1, 2, 1, width);
  layer.forward(hidden_view, cache, {0}, out_view);
  const std::vector<float> out_before = out;
  hidden[width + 3] = std::numeric_limits<float>::quiet_NaN();  // token 1
  headroom::testing::expect_error(
      [&] { layer.forward(hidden_view, cache, {0}, out_view); },
      "headroom::MlaAttention::forward: hidden[0, 1] gives a latent whose element 0 (nan) is "
      "outside the range of the int8 cache");
  EXPECT_EQ(cache.length(0), 2);
  EXPECT_EQ(out, out_before);
}

}  // namespace
}  // namespace headroom
