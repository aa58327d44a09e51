// SPDX-License-Identifier: MIT
// Tests headroom::RopeTable and apply_rope: the relative-position property, every scaling against
// the published formulas, both layouts, partial rotation, strided views and every error path.
#include "headroom/position/rope.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "expect_error.hpp"

namespace headroom {
namespace {

constexpr double kPi = 3.14159265358979323846;
using Kind = RopeScaling::Kind;

RopeConfig make_config(Index head_dim, Index rotary_dim, RopeLayout layout,
                       RopeScaling scaling = RopeScaling::none(), Index max_positions = 256,
                       double base = 10000.0) {
  RopeConfig config;
  config.head_dim = head_dim;
  config.rotary_dim = rotary_dim;
  config.base = base;
  config.layout = layout;
  config.scaling = scaling;
  config.max_positions = max_positions;
  return config;
}

std::vector<float> random_floats(Index count, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> values(count);
  for (float& value : values) value = normal(rng);
  return values;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double sum = 0.0;
  for (size_t i = 0; i < a.size(); ++i) sum += static_cast<double>(a[i]) * b[i];
  return sum;
}

double norm(const std::vector<float>& a) { return std::sqrt(dot(a, a)); }

/// Returns one head rotated by `table` at `pos`.
std::vector<float> rotated(const RopeTable& table, std::vector<float> head, Index pos) {
  apply_rope(table, TensorView<float>::bshd(head.data(), 1, 1, 1, table.head_dim()), pos);
  return head;
}

/// Returns one head rotated in double precision straight from the definition: pair (j1, j2) with
/// frequency inv_freq[i] turns by pos * inv_freq[i], and the result is scaled by attention_factor.
std::vector<double> reference_rotated(const std::vector<float>& head,
                                      const std::vector<double>& inv_freq, double attention_factor,
                                      Index pos, RopeLayout layout) {
  std::vector<double> out(head.begin(), head.end());
  const size_t half = inv_freq.size();
  for (size_t i = 0; i < half; ++i) {
    const size_t j1 = layout == RopeLayout::kRotateHalf ? i : 2 * i;
    const size_t j2 = layout == RopeLayout::kRotateHalf ? i + half : 2 * i + 1;
    const double angle = static_cast<double>(pos) * inv_freq[i];
    out[j1] = attention_factor * (head[j1] * std::cos(angle) - head[j2] * std::sin(angle));
    out[j2] = attention_factor * (head[j2] * std::cos(angle) + head[j1] * std::sin(angle));
  }
  return out;
}

// ---- Independent transcriptions of the published formulas (double precision) ----

/// theta_i = base^(-2i / dim) (Su et al., RoFormer).
std::vector<double> expected_plain(Index dim, double base) {
  std::vector<double> theta;
  for (Index i = 0; i < dim / 2; ++i) {
    theta.push_back(std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(dim)));
  }
  return theta;
}

/// HF _compute_yarn_parameters: ramp over pair index between the truncated correction dims.
std::vector<double> expected_yarn(Index dim, double base, double factor, double context,
                                  double beta_fast, double beta_slow, bool truncate) {
  const double d = static_cast<double>(dim);
  double low = d * std::log(context / (2.0 * kPi * beta_fast)) / (2.0 * std::log(base));
  double high = d * std::log(context / (2.0 * kPi * beta_slow)) / (2.0 * std::log(base));
  if (truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  if (low < 0.0) low = 0.0;
  if (high > d - 1.0) high = d - 1.0;
  if (low == high) high += 0.001;
  std::vector<double> theta = expected_plain(dim, base);
  for (size_t i = 0; i < theta.size(); ++i) {
    double interpolation_weight = (static_cast<double>(i) - low) / (high - low);
    if (interpolation_weight < 0.0) interpolation_weight = 0.0;
    if (interpolation_weight > 1.0) interpolation_weight = 1.0;
    theta[i] = theta[i] * (1.0 - interpolation_weight) + theta[i] / factor * interpolation_weight;
  }
  return theta;
}

/// HF _compute_llama3_parameters: three wavelength bands.
std::vector<double> expected_llama3(Index dim, double base, double factor, double low_freq_factor,
                                    double high_freq_factor, double context) {
  std::vector<double> theta = expected_plain(dim, base);
  for (double& t : theta) {
    const double wavelength = 2.0 * kPi / t;
    if (wavelength < context / high_freq_factor) continue;  // high frequency: kept
    if (wavelength > context / low_freq_factor) {           // low frequency: interpolated
      t = t / factor;
      continue;
    }
    const double smooth =
        (context / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor);
    t = (1.0 - smooth) * (t / factor) + smooth * t;
  }
  return theta;
}

/// Returns the inverse frequencies the published formula gives for `scaling` (dynamic NTK at
/// sequence length `seq_len`).
std::vector<double> expected_inv_freq(Index dim, double base, const RopeScaling& scaling,
                                      Index seq_len) {
  const double d = static_cast<double>(dim);
  const double context = static_cast<double>(scaling.original_max_position_embeddings);
  switch (scaling.kind) {
    case Kind::kNone:
      return expected_plain(dim, base);
    case Kind::kLinear: {
      std::vector<double> theta = expected_plain(dim, base);
      for (double& t : theta) t /= scaling.factor;
      return theta;
    }
    case Kind::kNtkAware:
      return expected_plain(dim, base * std::pow(scaling.factor, d / (d - 2.0)));
    case Kind::kDynamicNtk: {
      const double length =
          static_cast<double>(seq_len) > context ? static_cast<double>(seq_len) : context;
      const double stretch = scaling.factor * length / context - (scaling.factor - 1.0);
      return expected_plain(dim, base * std::pow(stretch, d / (d - 2.0)));
    }
    case Kind::kYarn:
      return expected_yarn(dim, base, scaling.factor, context, scaling.beta_fast, scaling.beta_slow,
                           scaling.truncate);
    case Kind::kLlama3:
      return expected_llama3(dim, base, scaling.factor, scaling.low_freq_factor,
                             scaling.high_freq_factor, context);
  }
  return {};
}

struct NamedScaling {
  const char* name;
  RopeScaling scaling;
  Index seq_len;  // for dynamic NTK
};

/// Returns one scaling of each kind, with small original contexts so every band and ramp region
/// falls inside a 64-dim head.
std::vector<NamedScaling> all_scalings() {
  RopeScaling yarn_no_truncate = RopeScaling::yarn(8.0, 128);
  yarn_no_truncate.truncate = false;
  return {
      {"none", RopeScaling::none(), 0},
      {"linear", RopeScaling::linear(4.0), 0},
      {"ntk-aware", RopeScaling::ntk_aware(4.0), 0},
      {"dynamic", RopeScaling::dynamic_ntk(2.0, 64), 200},
      {"yarn", RopeScaling::yarn(16.0, 64), 0},
      {"yarn-mscale", RopeScaling::yarn(40.0, 64, 1.0, 0.707), 0},
      {"yarn-no-truncate", yarn_no_truncate, 0},
      {"llama3", RopeScaling::llama3(8.0, 1.0, 4.0, 64), 0},
  };
}

using testing::expect_error;

TEST(RopeTest, DotProductDependsOnlyOnRelativePosition) {
  std::mt19937 rng(1);
  const Index head_dim = 64;
  for (RopeLayout layout : {RopeLayout::kRotateHalf, RopeLayout::kInterleaved}) {
    for (Index rotary_dim : {Index{64}, Index{32}}) {
      for (const NamedScaling& named : all_scalings()) {
        SCOPED_TRACE(std::string(named.name) + " rotary_dim " + std::to_string(rotary_dim) +
                     (layout == RopeLayout::kRotateHalf ? " rotate-half" : " interleaved"));
        const RopeTable table(make_config(head_dim, rotary_dim, layout, named.scaling),
                              named.seq_len);
        const std::vector<float> q = random_floats(head_dim, rng);
        const std::vector<float> k = random_floats(head_dim, rng);
        const double af = table.attention_factor();
        // Float rounding of cos, sin and the rotation: ~1e-7 relative per term, summed over dims.
        const double tolerance = 2e-5 * norm(q) * norm(k) * std::max(1.0, af * af);
        for (Index distance : {Index{0}, Index{3}, Index{-5}, Index{17}, Index{120}}) {
          const Index first_m = std::max<Index>(distance, 0);
          const double first =
              dot(rotated(table, q, first_m), rotated(table, k, first_m - distance));
          for (Index m : {Index{130}, Index{200}, Index{250}}) {
            const double other = dot(rotated(table, q, m), rotated(table, k, m - distance));
            EXPECT_NEAR(other, first, tolerance) << "distance " << distance << " m " << m;
          }
        }
      }
    }
  }
}

TEST(RopeTest, AttentionFactorScalesOnlyTheRotatedDimsOfBothVectors) {
  std::mt19937 rng(2);
  const RopeTable table(make_config(16, 8, RopeLayout::kRotateHalf, RopeScaling::yarn(40.0, 64)));
  const double af = table.attention_factor();
  EXPECT_NEAR(af, 0.1 * std::log(40.0) + 1.0, 1e-15);
  const std::vector<float> x = random_floats(16, rng);
  for (Index pos : {Index{0}, Index{7}, Index{200}}) {
    const std::vector<float> y = rotated(table, x, pos);
    const std::vector<float> x_rot(x.begin(), x.begin() + 8), y_rot(y.begin(), y.begin() + 8);
    EXPECT_NEAR(norm(y_rot), af * norm(x_rot), 1e-5 * norm(x_rot));
    for (size_t d = 8; d < 16; ++d) EXPECT_EQ(y[d], x[d]);
    if (pos == 0) {
      for (size_t d = 0; d < 8; ++d) EXPECT_NEAR(y[d], af * x[d], 1e-6 * std::abs(x[d]) + 1e-7);
    }
  }
}

TEST(RopeTest, InverseFrequenciesAndTablesMatchPublishedFormulas) {
  for (Index rotary_dim : {Index{64}, Index{24}}) {
    for (const NamedScaling& named : all_scalings()) {
      SCOPED_TRACE(std::string(named.name) + " rotary_dim " + std::to_string(rotary_dim));
      const double base = 10000.0;
      const RopeTable table(
          make_config(64, rotary_dim, RopeLayout::kRotateHalf, named.scaling, 300, base),
          named.seq_len);
      const std::vector<double> expected =
          expected_inv_freq(rotary_dim, base, named.scaling, named.seq_len);
      ASSERT_EQ(table.inv_freq().size(), expected.size());
      for (size_t i = 0; i < expected.size(); ++i) {
        EXPECT_NEAR(table.inv_freq()[i], expected[i], 1e-12 * expected[i]) << "i " << i;
      }
      const double af = table.attention_factor();
      for (Index pos : {Index{0}, Index{1}, Index{97}, Index{299}}) {
        for (size_t i = 0; i < expected.size(); ++i) {
          const double angle = static_cast<double>(pos) * expected[i];
          // Stored as float: half an ulp of a value of magnitude <= af, plus the angle's rounding.
          EXPECT_NEAR(table.cos(pos)[i], af * std::cos(angle), 1e-7 * af) << pos << " " << i;
          EXPECT_NEAR(table.sin(pos)[i], af * std::sin(angle), 1e-7 * af) << pos << " " << i;
        }
      }
    }
  }
}

// Values computed once with python3 (float64) from the transformers formulas.
TEST(RopeTest, SpotValuesMatchPythonComputation) {
  const auto table_for = [](Index dim, double base, RopeScaling scaling, Index seq_len = 0) {
    return RopeTable(make_config(dim, 0, RopeLayout::kRotateHalf, scaling, 8, base), seq_len);
  };
  const auto expect_rel = [](double actual, double expected) {
    EXPECT_NEAR(actual, expected, 1e-12 * std::abs(expected));
  };
  // DeepSeek-V2: qk_rope_head_dim 64, rope_theta 10000, yarn factor 40, original 4096,
  // mscale = mscale_all_dim = 0.707 (correction range [10, 23]).
  const RopeTable deepseek = table_for(64, 10000.0, RopeScaling::yarn(40.0, 4096, 0.707, 0.707));
  EXPECT_DOUBLE_EQ(deepseek.attention_factor(), 1.0);
  expect_rel(deepseek.inv_freq()[0], 1.0);
  expect_rel(deepseek.inv_freq()[10], 0.056234132519034905);
  expect_rel(deepseek.inv_freq()[12], 0.026879360111431223);
  expect_rel(deepseek.inv_freq()[16], 0.0055);
  expect_rel(deepseek.inv_freq()[20], 0.0007905694150420945);
  expect_rel(deepseek.inv_freq()[31], 3.3338035804083097e-06);
  expect_rel(yarn_mscale(40.0), 1.3688879454113936);
  expect_rel(yarn_mscale(40.0, 0.707), 1.2608037774058554);
  expect_rel(yarn_mscale(0.5, 0.707), 1.0);
  expect_rel(table_for(64, 10000.0, RopeScaling::yarn(40.0, 4096)).attention_factor(),
             1.3688879454113936);
  // mscale / mscale_all_dim are used only when both are nonzero, like Python's truthiness.
  expect_rel(table_for(64, 10000.0, RopeScaling::yarn(40.0, 4096, 1.0, 0.707)).attention_factor(),
             1.0857263992561355);
  expect_rel(table_for(64, 10000.0, RopeScaling::yarn(40.0, 4096, 0.0, 0.707)).attention_factor(),
             1.3688879454113936);
  RopeScaling explicit_factor = RopeScaling::yarn(40.0, 4096, 1.0, 0.707);
  explicit_factor.attention_factor = 0.5;
  expect_rel(table_for(64, 10000.0, explicit_factor).attention_factor(), 0.5);
  // gpt-oss style: truncate false, rope_theta 150000, factor 32.
  RopeScaling untruncated = RopeScaling::yarn(32.0, 4096);
  untruncated.truncate = false;
  const RopeTable gpt_oss = table_for(64, 150000.0, untruncated);
  expect_rel(gpt_oss.inv_freq()[8], 0.050813274815461475);
  expect_rel(gpt_oss.inv_freq()[9], 0.03170569618466377);
  expect_rel(gpt_oss.inv_freq()[20], 1.818833668168956e-05);
  expect_rel(gpt_oss.inv_freq()[31], 3.0235114281192144e-07);
  // Llama 3.1: head_dim 128, rope_theta 500000, llama3(8, 1, 4, 8192); pair 28 is high frequency,
  // 31 in the smoothed band, 35 and 63 low frequency.
  const RopeTable llama = table_for(128, 500000.0, RopeScaling::llama3(8.0, 1.0, 4.0, 8192));
  expect_rel(llama.inv_freq()[0], 1.0);
  expect_rel(llama.inv_freq()[28], 0.0032114459947525913);
  expect_rel(llama.inv_freq()[31], 0.0008567514129196321);
  expect_rel(llama.inv_freq()[35], 9.556212353964683e-05);
  expect_rel(llama.inv_freq()[63], 3.068925988914511e-07);
  // Dynamic NTK, factor 2, original 2048, sequence 4096: base' = 10000 * 3^(64/62).
  const RopeTable dynamic = table_for(64, 10000.0, RopeScaling::dynamic_ntk(2.0, 2048), 4096);
  expect_rel(dynamic.inv_freq()[1], 0.7237840223942559);
  expect_rel(dynamic.inv_freq()[31], 4.445071440544414e-05);
  // Static NTK-aware, factor 4: base' = 10000 * 4^(64/62).
  expect_rel(table_for(64, 10000.0, RopeScaling::ntk_aware(4.0)).inv_freq()[31],
             3.3338035804083106e-05);
  // Plain RoPE, head_dim 8: pair 1 at position 3 turns by 3 * 10000^(-1/4) = 0.3 rad.
  const RopeTable plain = table_for(8, 10000.0, RopeScaling::none());
  EXPECT_NEAR(plain.cos(3)[1], 0.955336489125606, 1e-7);
  EXPECT_NEAR(plain.sin(3)[1], 0.2955202066613396, 1e-7);
  // Linear factor 8: pair 0 at position 5 turns by 5/8 rad.
  const RopeTable linear = table_for(8, 10000.0, RopeScaling::linear(8.0));
  EXPECT_NEAR(linear.cos(5)[0], 0.8109631195052179, 1e-7);
  EXPECT_NEAR(linear.sin(5)[0], 0.5850972729404622, 1e-7);
}

TEST(RopeTest, DynamicNtkKeepsTheBaseUpToTheOriginalContext) {
  const RopeScaling dynamic = RopeScaling::dynamic_ntk(4.0, 128);
  const RopeConfig config = make_config(32, 0, RopeLayout::kRotateHalf, dynamic, 16);
  const RopeTable plain(make_config(32, 0, RopeLayout::kRotateHalf, RopeScaling::none(), 16));
  for (Index seq_len : {Index{0}, Index{1}, Index{128}}) {
    EXPECT_EQ(RopeTable(config, seq_len).inv_freq(), plain.inv_freq()) << seq_len;
  }
  const RopeTable longer(config, 129);
  const RopeTable much_longer(config, 1024);
  for (size_t i = 1; i < plain.inv_freq().size(); ++i) {
    EXPECT_LT(longer.inv_freq()[i], plain.inv_freq()[i]);
    EXPECT_LT(much_longer.inv_freq()[i], longer.inv_freq()[i]);
  }
  EXPECT_EQ(much_longer.inv_freq()[0], 1.0);  // the highest frequency never changes
}

TEST(RopeTest, ApplyMatchesDoubleReferenceForEveryScalingAndLayout) {
  std::mt19937 rng(3);
  const Index batch = 2, seq = 5, heads = 3, head_dim = 64;
  for (RopeLayout layout : {RopeLayout::kRotateHalf, RopeLayout::kInterleaved}) {
    for (const NamedScaling& named : all_scalings()) {
      SCOPED_TRACE(named.name);
      const RopeTable table(make_config(head_dim, 48, layout, named.scaling), named.seq_len);
      std::vector<float> x = random_floats(batch * seq * heads * head_dim, rng);
      const std::vector<float> original = x;
      std::uniform_int_distribution<Index> position(0, 255);
      std::vector<Index> positions(batch * seq);
      for (Index& p : positions) p = position(rng);
      apply_rope(table, TensorView<float>::bshd(x.data(), batch, seq, heads, head_dim),
                 PositionView::bs(positions.data(), batch, seq));
      for (Index b = 0; b < batch; ++b) {
        for (Index s = 0; s < seq; ++s) {
          for (Index h = 0; h < heads; ++h) {
            const Index offset = ((b * seq + s) * heads + h) * head_dim;
            const std::vector<float> head(original.begin() + offset,
                                          original.begin() + offset + head_dim);
            const std::vector<double> expected = reference_rotated(
                head, table.inv_freq(), table.attention_factor(), positions[b * seq + s], layout);
            for (Index d = 0; d < head_dim; ++d) {
              // Inputs ~N(0, 1): float cos/sin and two products, a few 1e-7 absolute.
              EXPECT_NEAR(x[offset + d], expected[d], 2e-6 * table.attention_factor())
                  << b << " " << s << " " << h << " " << d;
            }
          }
        }
      }
    }
  }
}

TEST(RopeTest, InterleavedEqualsRotateHalfOnPermutedVector) {
  std::mt19937 rng(4);
  const Index head_dim = 20, rotary_dim = 12, half = rotary_dim / 2;
  const RopeScaling scaling = RopeScaling::yarn(8.0, 64);
  const RopeTable interleaved(make_config(head_dim, rotary_dim, RopeLayout::kInterleaved, scaling));
  const RopeTable rotate_half(make_config(head_dim, rotary_dim, RopeLayout::kRotateHalf, scaling));
  for (Index pos : {Index{0}, Index{1}, Index{42}, Index{255}}) {
    const std::vector<float> x = random_floats(head_dim, rng);
    // Pair (2i, 2i + 1) of the interleaved layout is pair (i, i + half) of rotate-half.
    std::vector<float> permuted = x;
    for (Index i = 0; i < half; ++i) {
      permuted[i] = x[2 * i];
      permuted[i + half] = x[2 * i + 1];
    }
    const std::vector<float> a = rotated(interleaved, x, pos);
    const std::vector<float> b = rotated(rotate_half, permuted, pos);
    for (Index i = 0; i < half; ++i) {
      // The same float operations, up to FMA contraction: a few ulps.
      EXPECT_NEAR(a[2 * i], b[i], 1e-6) << pos << " " << i;
      EXPECT_NEAR(a[2 * i + 1], b[i + half], 1e-6) << pos << " " << i;
    }
    for (Index d = rotary_dim; d < head_dim; ++d) EXPECT_EQ(a[d], b[d]);
  }
}

TEST(RopeTest, PartialRotaryLeavesTrailingDimsUnchanged) {
  std::mt19937 rng(5);
  const Index batch = 2, seq = 3, heads = 2, head_dim = 20, rotary_dim = 8;
  for (RopeLayout layout : {RopeLayout::kRotateHalf, RopeLayout::kInterleaved}) {
    const RopeTable table(make_config(head_dim, rotary_dim, layout, RopeScaling::linear(2.0)));
    std::vector<float> x = random_floats(batch * seq * heads * head_dim, rng);
    const std::vector<float> original = x;
    apply_rope(table, TensorView<float>::bshd(x.data(), batch, seq, heads, head_dim), 10);
    for (Index row = 0; row < batch * seq * heads; ++row) {
      bool rotated_dims_changed = false;
      for (Index d = 0; d < head_dim; ++d) {
        const Index i = row * head_dim + d;
        if (d >= rotary_dim) {
          EXPECT_EQ(x[i], original[i]) << row << " " << d;
        } else {
          rotated_dims_changed = rotated_dims_changed || x[i] != original[i];
        }
      }
      EXPECT_TRUE(rotated_dims_changed) << row;
    }
  }
}

TEST(RopeTest, PositionZeroIsTheIdentityWithoutAttentionFactor) {
  std::mt19937 rng(6);
  RopeScaling yarn_unit = RopeScaling::yarn(16.0, 64);
  yarn_unit.attention_factor = 1.0;
  const std::vector<RopeScaling> scalings = {RopeScaling::none(),
                                             RopeScaling::linear(4.0),
                                             RopeScaling::ntk_aware(4.0),
                                             RopeScaling::dynamic_ntk(2.0, 64),
                                             RopeScaling::llama3(8.0, 1.0, 4.0, 64),
                                             yarn_unit};
  for (RopeLayout layout : {RopeLayout::kRotateHalf, RopeLayout::kInterleaved}) {
    for (const RopeScaling& scaling : scalings) {
      const RopeTable table(make_config(32, 24, layout, scaling), 500);
      const std::vector<float> x = random_floats(32, rng);
      // cos 0 = 1 and sin 0 = 0 exactly, so x * 1 - y * 0 is x bit for bit.
      EXPECT_EQ(rotated(table, x, 0), x);
    }
  }
}

TEST(RopeTest, StridedViewsMatchContiguousBshd) {
  std::mt19937 rng(7);
  const Index batch = 2, seq = 4, heads = 3, head_dim = 16;
  const std::vector<Index> positions = {0, 5, 9, 200, 3, 3, 100, 1};
  for (RopeLayout layout : {RopeLayout::kRotateHalf, RopeLayout::kInterleaved}) {
    const RopeTable table(make_config(head_dim, 12, layout, RopeScaling::yarn(8.0, 64)));
    const std::vector<float> source = random_floats(batch * seq * heads * head_dim, rng);
    std::vector<float> bshd = source;
    const auto bshd_view = TensorView<float>::bshd(bshd.data(), batch, seq, heads, head_dim);
    // The same logical tensor stored [b, h, s, d], and stored [b, s, h, d] with every dim padded
    // to two floats (dim_stride 2).
    std::vector<float> bhsd(source.size());
    const auto bhsd_view = TensorView<float>::bhsd(bhsd.data(), batch, heads, seq, head_dim);
    std::vector<float> padded(2 * source.size(), -7.0f);
    const TensorView<float> padded_view{
        padded.data(),        batch,        seq, heads, head_dim, 2 * seq * heads * head_dim,
        2 * heads * head_dim, 2 * head_dim, 2};
    for (Index b = 0; b < batch; ++b) {
      for (Index s = 0; s < seq; ++s) {
        for (Index h = 0; h < heads; ++h) {
          for (Index d = 0; d < head_dim; ++d) {
            bhsd_view(b, s, h, d) = bshd_view(b, s, h, d);
            padded_view(b, s, h, d) = bshd_view(b, s, h, d);
          }
        }
      }
    }
    const PositionView position_view = PositionView::bs(positions.data(), batch, seq);
    apply_rope(table, bshd_view, position_view);
    apply_rope(table, bhsd_view, position_view);
    apply_rope(table, padded_view, position_view);
    for (Index b = 0; b < batch; ++b) {
      for (Index s = 0; s < seq; ++s) {
        for (Index h = 0; h < heads; ++h) {
          for (Index d = 0; d < head_dim; ++d) {
            // Same unit-stride kernel: bit for bit.
            EXPECT_EQ(bhsd_view(b, s, h, d), bshd_view(b, s, h, d));
            // Strided kernel: the same arithmetic up to FMA contraction.
            EXPECT_NEAR(padded_view(b, s, h, d), bshd_view(b, s, h, d), 1e-6);
          }
        }
      }
    }
    for (size_t i = 1; i < padded.size(); i += 2) EXPECT_EQ(padded[i], -7.0f) << i;
  }
}

TEST(RopeTest, StartPosAndSharedPositionsMatchExplicitPositions) {
  std::mt19937 rng(8);
  const Index batch = 3, seq = 4, heads = 2, head_dim = 8;
  const RopeTable table(make_config(head_dim, 0, RopeLayout::kInterleaved));
  const std::vector<float> source = random_floats(batch * seq * heads * head_dim, rng);
  std::vector<Index> explicit_positions;
  for (Index b = 0; b < batch; ++b) {
    for (Index s = 0; s < seq; ++s) explicit_positions.push_back(20 + s);
  }
  const std::vector<Index> shared_positions = {20, 21, 22, 23};
  std::vector<float> a = source, b = source, c = source;
  apply_rope(table, TensorView<float>::bshd(a.data(), batch, seq, heads, head_dim),
             PositionView::bs(explicit_positions.data(), batch, seq));
  apply_rope(table, TensorView<float>::bshd(b.data(), batch, seq, heads, head_dim), 20);
  apply_rope(table, TensorView<float>::bshd(c.data(), batch, seq, heads, head_dim),
             PositionView::shared(shared_positions.data(), batch, seq));
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, c);
}

TEST(RopeTest, QAndKTogetherMatchSeparateCalls) {
  std::mt19937 rng(9);
  const Index batch = 2, seq = 3, num_heads = 4, num_kv_heads = 2, head_dim = 16;
  const RopeTable table(
      make_config(head_dim, 0, RopeLayout::kRotateHalf, RopeScaling::llama3(8.0, 1.0, 4.0, 64)));
  const std::vector<float> q_source = random_floats(batch * seq * num_heads * head_dim, rng);
  const std::vector<float> k_source = random_floats(batch * seq * num_kv_heads * head_dim, rng);
  const std::vector<Index> positions = {7, 8, 9, 0, 1, 2};
  std::vector<float> q1 = q_source, k1 = k_source, q2 = q_source, k2 = k_source;
  const PositionView position_view = PositionView::bs(positions.data(), batch, seq);
  apply_rope(table, TensorView<float>::bshd(q1.data(), batch, seq, num_heads, head_dim),
             TensorView<float>::bshd(k1.data(), batch, seq, num_kv_heads, head_dim), position_view);
  apply_rope(table, TensorView<float>::bshd(q2.data(), batch, seq, num_heads, head_dim),
             position_view);
  apply_rope(table, TensorView<float>::bshd(k2.data(), batch, seq, num_kv_heads, head_dim),
             position_view);
  EXPECT_EQ(q1, q2);
  EXPECT_EQ(k1, k2);
  std::vector<float> q3 = q_source, k3 = k_source, q4 = q_source, k4 = k_source;
  apply_rope(table, TensorView<float>::bshd(q3.data(), batch, seq, num_heads, head_dim),
             TensorView<float>::bshd(k3.data(), batch, seq, num_kv_heads, head_dim), 5);
  apply_rope(table, TensorView<float>::bshd(q4.data(), batch, seq, num_heads, head_dim), 5);
  apply_rope(table, TensorView<float>::bshd(k4.data(), batch, seq, num_kv_heads, head_dim), 5);
  EXPECT_EQ(q3, q4);
  EXPECT_EQ(k3, k4);
}

TEST(RopeTest, FusedQkvViewsRotateAsSeparateBuffersAndOverlapsAreRejected) {
  std::mt19937 rng(12);
  const Index batch = 2, seq = 3, num_heads = 4, num_kv_heads = 2, head_dim = 8;
  const RopeTable table(make_config(head_dim, 0, RopeLayout::kRotateHalf, RopeScaling::none(), 16));
  // One [batch, seq, num_heads + 2 * num_kv_heads, head_dim] buffer, as a fused QKV projection
  // leaves it: q and k interleave token by token but share no element.
  const Index width = (num_heads + 2 * num_kv_heads) * head_dim;
  const std::vector<float> fused_source = random_floats(batch * seq * width, rng);
  std::vector<float> fused = fused_source;
  const TensorView<float> q{fused.data(), batch, seq, num_heads, head_dim, seq * width, width,
                            head_dim, 1};
  TensorView<float> k = q;
  k.data = fused.data() + num_heads * head_dim;
  k.heads = num_kv_heads;
  apply_rope(table, q, k, 2);
  std::vector<float> separate = fused_source;
  TensorView<float> q_alone = q, k_alone = k;
  q_alone.data = separate.data();
  k_alone.data = separate.data() + num_heads * head_dim;
  apply_rope(table, q_alone, 2);
  apply_rope(table, k_alone, 2);
  EXPECT_EQ(fused, separate);
  // Regression: only equal data pointers were refused. A k that starts one head later than q's
  // last head of the same token holds that head: it would be rotated twice.
  TensorView<float> overlapping = k;
  overlapping.data = fused.data() + (num_heads - 1) * head_dim;
  expect_error([&] { apply_rope(table, q, overlapping, 0); },
               "headroom::apply_rope: q and k share elements");
  // Rows that interleave element by element (dim stride 2, offset 1) share nothing; offset 2 does.
  std::vector<float> pairs(static_cast<size_t>(2 * head_dim * seq + 2));
  const TensorView<float> evens{pairs.data(), 1, seq, 1, head_dim, 0, 2 * head_dim, 0, 2};
  TensorView<float> odds = evens;
  odds.data = pairs.data() + 1;
  EXPECT_NO_THROW(apply_rope(table, evens, odds, 0));
  TensorView<float> shifted = evens;
  shifted.data = pairs.data() + 2;
  expect_error([&] { apply_rope(table, evens, shifted, 0); }, "q and k share elements");
}

TEST(RopeTest, TableRowsOutsideItsPositionsAndHugeTablesAreRejected) {
  const RopeTable table(make_config(8, 0, RopeLayout::kRotateHalf, RopeScaling::none(), 16));
  EXPECT_EQ(table.sin(15), table.cos(15) + 4);
  expect_error([&] { static_cast<void>(table.cos(16)); },
               "headroom::RopeTable::cos: pos (16) is outside [0, 16)");
  expect_error([&] { static_cast<void>(table.sin(-1)); },
               "headroom::RopeTable::sin: pos (-1) is outside [0, 16)");
  // Regression: a table no vector can hold threw std::length_error, not headroom::Error.
  expect_error(
      [&] {
        RopeTable huge(make_config(128, 0, RopeLayout::kRotateHalf, RopeScaling::none(),
                                   std::numeric_limits<Index>::max() / 256));
      },
      "floats are more than a table can hold");
}

TEST(RopeTest, EmptyInputsAreNoOps) {
  const RopeTable table(make_config(8, 0, RopeLayout::kRotateHalf, RopeScaling::none(), 4));
  float unused[8] = {};
  EXPECT_NO_THROW(apply_rope(table, TensorView<float>::bshd(unused, 1, 0, 1, 8),
                             PositionView::bs(nullptr, 1, 0)));
  EXPECT_NO_THROW(apply_rope(table, TensorView<float>::bshd(nullptr, 0, 3, 1, 8),
                             PositionView::bs(nullptr, 0, 3)));
  EXPECT_NO_THROW(apply_rope(table, TensorView<float>::bshd(unused, 1, 0, 1, 8), 4));
}

TEST(RopeTest, InvalidConfigsThrowNamingTheArgument) {
  const auto build = [](RopeConfig config, Index seq_len = 0) {
    return [config, seq_len] { RopeTable table(config, seq_len); };
  };
  const RopeConfig valid = make_config(8, 0, RopeLayout::kRotateHalf, RopeScaling::none(), 16);
  EXPECT_NO_THROW(build(valid)());
  RopeConfig c = valid;

  c = valid, c.head_dim = 0;
  expect_error(build(c), "headroom::RopeTable: head_dim (0) must be positive");
  c = valid, c.rotary_dim = 7;
  expect_error(build(c), "headroom::RopeTable: rotary_dim (7) must be even");
  c = valid, c.head_dim = 7;
  expect_error(build(c), "headroom::RopeTable: rotary_dim (7) must be even");
  c = valid, c.rotary_dim = 10;
  expect_error(build(c), "headroom::RopeTable: rotary_dim (10) exceeds head_dim (8)");
  c = valid, c.rotary_dim = -2;
  expect_error(build(c), "headroom::RopeTable: rotary_dim (-2) must be positive");
  c = valid, c.base = 1.0;
  expect_error(build(c), "headroom::RopeTable: base (1) must be a finite number > 1");
  c = valid, c.base = std::numeric_limits<double>::quiet_NaN();
  expect_error(build(c), "headroom::RopeTable: base (nan) must be");
  c = valid, c.max_positions = 0;
  expect_error(build(c), "headroom::RopeTable: max_positions (0) must be positive");
  c = valid, c.max_positions = std::numeric_limits<Index>::max() / 4;
  expect_error(build(c), "floats are more than a table can hold");
  expect_error(build(valid, -1), "headroom::RopeTable: seq_len (-1) is negative");
  c = valid, c.scaling.kind = static_cast<Kind>(42);
  expect_error(build(c), "headroom::RopeTable: scaling.kind (42) is not a RopeScaling::Kind");

  c = valid, c.scaling = RopeScaling::linear(0.5);
  expect_error(build(c),
               "headroom::RopeTable: scaling.factor (0.5) must be a finite number >= 1 "
               "for linear scaling");
  c = valid, c.scaling = RopeScaling::yarn(0.0, 4096);
  expect_error(build(c), "scaling.factor (0) must be a finite number >= 1 for yarn scaling");
  c = valid, c.scaling = RopeScaling::yarn(4.0, 0);
  expect_error(build(c),
               "headroom::RopeTable: scaling.original_max_position_embeddings (0) must "
               "be positive for yarn scaling");
  c = valid, c.scaling = RopeScaling::llama3(8.0, 1.0, 4.0, -1);
  expect_error(build(c),
               "scaling.original_max_position_embeddings (-1) must be positive for "
               "llama3 scaling");
  c = valid, c.scaling = RopeScaling::dynamic_ntk(2.0, 0);
  expect_error(build(c),
               "scaling.original_max_position_embeddings (0) must be positive for "
               "dynamic scaling");
  c = valid, c.rotary_dim = 2, c.scaling = RopeScaling::ntk_aware(2.0);
  expect_error(build(c), "headroom::RopeTable: rotary_dim (2) must be > 2 for ntk-aware scaling");
  c = valid, c.rotary_dim = 2, c.scaling = RopeScaling::dynamic_ntk(2.0, 64);
  expect_error(build(c), "rotary_dim (2) must be > 2 for dynamic scaling");
  c = valid, c.scaling = RopeScaling::yarn(4.0, 64), c.scaling.beta_slow = 0.0;
  expect_error(build(c), "scaling.beta_slow (0) must be a finite number > 0");
  c = valid, c.scaling = RopeScaling::yarn(4.0, 64), c.scaling.beta_fast = 1.0;
  expect_error(build(c), "scaling.beta_fast (1) must be finite and greater than beta_slow (1)");
  c = valid, c.scaling = RopeScaling::yarn(4.0, 64, -1.0, 1.0);
  expect_error(build(c), "scaling.mscale (-1) must be a finite number >= 0");
  c = valid, c.scaling = RopeScaling::yarn(4.0, 64, 1.0, -10.0);
  expect_error(build(c), "scaling.mscale_all_dim (-10) must be a finite number >= 0");
  c = valid, c.scaling = RopeScaling::yarn(4.0, 64), c.scaling.attention_factor = 0.0;
  expect_error(build(c), "scaling.attention_factor (0) must be a finite number > 0");
  c = valid, c.scaling = RopeScaling::linear(2.0), c.scaling.attention_factor = 1.5;
  expect_error(build(c), "scaling.attention_factor (1.5) is only used by yarn scaling, not linear");
  c = valid, c.scaling = RopeScaling::llama3(8.0, 4.0, 4.0, 64);
  expect_error(build(c),
               "scaling.high_freq_factor (4) must be finite and greater than "
               "low_freq_factor (4)");
  c = valid, c.scaling = RopeScaling::llama3(8.0, 0.0, 4.0, 64);
  expect_error(build(c), "scaling.low_freq_factor (0) must be a finite number > 0");
  // kNone ignores the scaling fields entirely.
  c = valid, c.scaling.factor = -3.0;
  EXPECT_NO_THROW(build(c)());
}

TEST(RopeTest, RejectedApplyLeavesInputUnchanged) {
  std::mt19937 rng(10);
  const Index batch = 2, seq = 3, heads = 2, head_dim = 8;
  const RopeTable table(make_config(head_dim, 0, RopeLayout::kRotateHalf, RopeScaling::none(), 16));
  const std::vector<float> original = random_floats(batch * seq * heads * head_dim, rng);
  std::vector<float> x = original;
  const auto x_view = TensorView<float>::bshd(x.data(), batch, seq, heads, head_dim);
  const auto expect_rejected = [&](auto&& call, const std::string& substring) {
    expect_error(call, substring);
    EXPECT_EQ(x, original) << substring;
  };

  // Only the very last id is out of range: nothing may have been rotated before the check.
  std::vector<Index> positions = {0, 1, 2, 3, 4, 16};
  expect_rejected(
      [&] { apply_rope(table, x_view, PositionView::bs(positions.data(), batch, seq)); },
      "headroom::apply_rope: positions[1, 2] (16) is outside [0, 16), the table's "
      "max_positions");
  positions = {0, 1, 2, 3, -1, 5};
  expect_rejected(
      [&] { apply_rope(table, x_view, PositionView::bs(positions.data(), batch, seq)); },
      "headroom::apply_rope: positions[1, 1] (-1) is outside [0, 16)");
  expect_rejected([&] { apply_rope(table, x_view, PositionView::bs(nullptr, batch, seq)); },
                  "headroom::apply_rope: positions.data is null but there are 2 x 3 tokens");
  positions = {0, 1, 2, 3};
  expect_rejected([&] { apply_rope(table, x_view, PositionView::bs(positions.data(), batch, 2)); },
                  "headroom::apply_rope: positions.seq (2) does not match x.seq (3)");
  expect_rejected([&] { apply_rope(table, x_view, PositionView::bs(positions.data(), 1, seq)); },
                  "headroom::apply_rope: positions.batch (1) does not match x.batch (2)");
  expect_rejected([&] { apply_rope(table, x_view, Index{-1}); },
                  "headroom::apply_rope: start_pos (-1) is negative");
  expect_rejected([&] { apply_rope(table, x_view, Index{14}); },
                  "headroom::apply_rope: start_pos (14) + seq (3) exceeds the table's "
                  "max_positions (16)");
  expect_rejected(
      [&] {
        apply_rope(table, TensorView<float>::bshd(x.data(), batch, seq, heads * 2, head_dim / 2),
                   0);
      },
      "headroom::apply_rope: x.dim (4) does not match the table's head_dim (8)");
  TensorView<float> aliased = x_view;
  aliased.seq_stride = 0;
  expect_rejected([&] { apply_rope(table, aliased, 0); }, "x.seq_stride is 0");

  // q and k together: an error in k leaves q untouched too.
  std::vector<float> k(batch * seq * 1 * 4, 1.0f);
  const auto k_bad_dim = TensorView<float>::bshd(k.data(), batch, seq, 1, 4);
  positions = {0, 1, 2, 3, 4, 5};
  expect_rejected(
      [&] { apply_rope(table, x_view, k_bad_dim, PositionView::bs(positions.data(), batch, seq)); },
      "headroom::apply_rope: k.dim (4) does not match the table's head_dim (8)");
  expect_rejected([&] { apply_rope(table, x_view, k_bad_dim, 0); },
                  "headroom::apply_rope: k.dim (4) does not match the table's head_dim (8)");
  std::vector<float> k_ok(batch * 2 * head_dim, 1.0f);
  const auto k_short = TensorView<float>::bshd(k_ok.data(), batch, 2, 1, head_dim);
  expect_rejected(
      [&] { apply_rope(table, x_view, k_short, PositionView::bs(positions.data(), batch, seq)); },
      "headroom::apply_rope: positions.seq (3) does not match k.seq (2)");
  expect_rejected([&] { apply_rope(table, x_view, k_short, 0); },
                  "headroom::apply_rope: k [batch, seq] ([2, 2]) does not match q ([2, 3])");
  expect_rejected([&] { apply_rope(table, x_view, x_view, 0); },
                  "headroom::apply_rope: q and k share elements");
  positions = {0, 1, 2, 3, 4, 99};
  std::vector<float> k_full(batch * seq * head_dim, 1.0f);
  expect_rejected(
      [&] {
        apply_rope(table, x_view, TensorView<float>::bshd(k_full.data(), batch, seq, 1, head_dim),
                   PositionView::bs(positions.data(), batch, seq));
      },
      "headroom::apply_rope: positions[1, 2] (99) is outside [0, 16)");
  EXPECT_EQ(k_full, std::vector<float>(batch * seq * head_dim, 1.0f));
}

}  // namespace
}  // namespace headroom
