// SPDX-License-Identifier: MIT
// Tests ReRoPE and Leaky ReRoPE: the config's relative positions and query scale, attend with
// AttentionOptions::rerope over dense keys and caches against a double-precision transcription of
// the published method, rerope_attention over a cache, and every error path.
#include "headroom/position/rerope.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iomanip>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "expect_error.hpp"
#include "headroom/attention/attend.hpp"
#include "headroom/attention/rerope_attention.hpp"
#include "headroom/cache/kv_cache.hpp"
#include "headroom/cache/paged_kv_cache.hpp"
#include "headroom/position/rope.hpp"
#include "reference.hpp"
#include "tile_products.hpp"

namespace headroom {
namespace {

using testing::expect_error;

constexpr double kInfinity = std::numeric_limits<double>::infinity();

double as_double(Index x) { return static_cast<double>(x); }

// ---- The published method, transcribed in double precision ----
//
// Su Jianlin's reference code (bojone/rerope, rerope_patch.py and leaky_rerope_patch.py, the
// prefill branch) builds two full score matrices per head and picks one per element:
//   attn_weights1: q rotated at its position i, k at j (ordinary RoPE);
//   attn_weights2: q rotated at w and k unrotated (ReRoPE), or, Leaky, q at (i + w (k - 1)) / k
//                  and k at j / k (a linear-scaling RoPE with factor k, offset w (k - 1));
//   attn_weights = where(|i - j| < w, attn_weights1, attn_weights2);
// after scaling q by ((i + 1).log() / log(training_length)).clip(1). The one departure, as
// rerope.hpp defines it: "k unrotated" is k rotated at 0, which carries the table's attention
// factor like every other rotation (the same thing when the factor is 1).
namespace published {

/// What the transcription reads of a ReRope: the frequencies and attention factor of its table
/// (angles are formed here in double, never read from the kernel's float tables) and its config.
struct Settings {
  std::vector<double> inv_freq;  // [rotary_dim / 2]
  double attention_factor = 1.0;
  RopeLayout layout = RopeLayout::kRotateHalf;
  double window = 0.0;
  double leak = kInfinity;  // infinity: plain ReRoPE
  bool log_n_scaling = false;
  double training_length = 0.0;

  static Settings of(const ReRope& rerope) {
    const ReRopeConfig& config = rerope.config();
    return {rerope.table().inv_freq(),
            rerope.table().attention_factor(),
            rerope.table().layout(),
            as_double(config.window),
            config.leak,
            config.log_n_scaling,
            as_double(config.training_length)};
  }
  bool leaky() const { return std::isfinite(leak); }
};

using Row = std::vector<double>;  // one head, [head_dim]

/// Returns x rotated by RoPE at a (possibly fractional) position: HF apply_rotary_pos_emb with cos
/// and sin times the attention factor. Pair d turns by position * inv_freq[d]; dims from
/// rotary_dim on pass through, unscaled.
Row rope(Row x, double position, const Settings& s) {
  const size_t half = s.inv_freq.size();
  for (size_t d = 0; d < half; ++d) {
    const size_t first = s.layout == RopeLayout::kRotateHalf ? d : 2 * d;
    const size_t second = s.layout == RopeLayout::kRotateHalf ? d + half : 2 * d + 1;
    const double angle = position * s.inv_freq[d];
    const double c = std::cos(angle) * s.attention_factor;
    const double sn = std::sin(angle) * s.attention_factor;
    const double a = x[first], b = x[second];
    x[first] = a * c - b * sn;  // x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1]
    x[second] = b * c + a * sn;
  }
  return x;
}

/// Returns the published log-n factor of the query at `pos`: ((pos + 1).log() /
/// log(training_length)).clip(1), or 1 without log-n scaling.
double log_n_factor(const Settings& s, Index pos) {
  if (!s.log_n_scaling) return 1.0;
  return std::max(1.0, std::log(as_double(pos) + 1.0) / std::log(s.training_length));
}

double dot(const Row& a, const Row& b) {
  double sum = 0.0;
  for (size_t d = 0; d < a.size(); ++d) sum += a[d] * b[d];
  return sum;
}

/// The keys of one kv head rotated both ways: key_states1 (at j) and key_states2 (at 0, Leaky
/// j / k). [kv_len] rows each.
struct RotatedKeys {
  std::vector<Row> ordinary, rectified;

  RotatedKeys(const std::vector<Row>& k, const Settings& s) {
    for (size_t j = 0; j < k.size(); ++j) {
      const double pos = static_cast<double>(j);
      ordinary.push_back(rope(k[j], pos, s));
      rectified.push_back(rope(k[j], s.leaky() ? pos / s.leak : 0.0, s));
    }
  }
};

/// Returns the rectified scores of one query head, [q_len, kv_len] row-major, for queries at
/// positions first_pos + i: both full matrices, then attn_weights1 where |i - j| < w, else
/// attn_weights2. Rows at negative positions (they see no key) are left at 0.
std::vector<double> rectified_scores(const Settings& s, const std::vector<Row>& q, Index first_pos,
                                     const RotatedKeys& keys, double scale) {
  const Index q_len = static_cast<Index>(q.size());
  const Index kv_len = static_cast<Index>(keys.ordinary.size());
  std::vector<double> weights1(q_len * kv_len, 0.0), weights2(q_len * kv_len, 0.0);
  std::vector<double> scores(q_len * kv_len, 0.0);
  for (Index i = 0; i < q_len; ++i) {
    const Index pos = first_pos + i;
    if (pos < 0) continue;
    Row scaled = q[i];
    for (double& x : scaled) x *= log_n_factor(s, pos);
    const double p = as_double(pos);
    const Row query1 = rope(scaled, p, s);
    // Leaky: rotary_emb2 (positions / k) at position_ids + offset, offset = w (k - 1).
    const Row query2 =
        rope(scaled, s.leaky() ? (p + s.window * (s.leak - 1.0)) / s.leak : s.window, s);
    for (Index j = 0; j < kv_len; ++j) {
      weights1[i * kv_len + j] = scale * dot(query1, keys.ordinary[j]);
      weights2[i * kv_len + j] = scale * dot(query2, keys.rectified[j]);
    }
  }
  for (Index i = 0; i < q_len; ++i) {
    for (Index j = 0; j < kv_len; ++j) {
      const bool rectified_mask = std::abs(as_double(first_pos + i - j)) < s.window;
      scores[i * kv_len + j] = rectified_mask ? weights1[i * kv_len + j] : weights2[i * kv_len + j];
    }
  }
  return scores;
}

/// Computes ReRoPE attention of raw q, k, v in double: the rectified scores of each head, then
/// options' soft-cap, mask (query i of a sequence at kv_len - q_len + i), softmax and V.
///   q: [batch, q_len, num_heads, head_dim]; k: [batch, kv_seq, num_kv_heads, head_dim];
///   v: [batch, kv_seq, num_kv_heads, head_dim_v]; options.kv_lens as for attend.
reference::Result attend(const Settings& s, const TensorView<const float>& q,
                         const TensorView<const float>& k, const TensorView<const float>& v,
                         const AttentionOptions& options) {
  const Index batch = q.batch, q_len = q.seq, num_heads = q.heads, dim = q.dim, dv = v.dim;
  const Index group_size = num_heads / k.heads;
  const double scale =
      options.scale ? double{*options.scale} : 1.0 / std::sqrt(static_cast<double>(dim));
  reference::Result result{std::vector<double>(batch * q_len * num_heads * dv, 0.0),
                           std::vector<double>(batch * num_heads * q_len, -kInfinity)};
  const auto row_of = [&](const TensorView<const float>& x, Index b, Index s_, Index h) {
    Row row(x.dim);
    for (Index d = 0; d < x.dim; ++d) row[d] = x(b, s_, h, d);
    return row;
  };
  for (Index b = 0; b < batch; ++b) {
    const Index kv_len = options.kv_lens.empty() ? k.seq : options.kv_lens[b];
    for (Index kv_head = 0; kv_head < k.heads; ++kv_head) {
      std::vector<Row> keys;
      for (Index j = 0; j < kv_len; ++j) keys.push_back(row_of(k, b, j, kv_head));
      const RotatedKeys rotated(keys, s);
      for (Index h = kv_head * group_size; h < (kv_head + 1) * group_size; ++h) {
        std::vector<Row> queries;
        for (Index i = 0; i < q_len; ++i) queries.push_back(row_of(q, b, i, h));
        const std::vector<double> scores =
            rectified_scores(s, queries, kv_len - q_len, rotated, scale);
        for (Index i = 0; i < q_len; ++i) {
          std::vector<double> p(kv_len, 0.0);
          double max_logit = -kInfinity;
          for (Index j = 0; j < kv_len; ++j) {
            if (!reference::visible(
                    options.mask.kind == MaskKind::kNone ? Mask::causal() : options.mask, i, q_len,
                    kv_len, j)) {
              p[j] = -kInfinity;
              continue;
            }
            double logit = scores[i * kv_len + j];
            if (options.softcap > 0.0f)
              logit = options.softcap * std::tanh(logit / options.softcap);
            p[j] = logit;
            max_logit = std::max(max_logit, logit);
          }
          if (max_logit == -kInfinity) continue;
          double sum = 0.0;
          for (double& x : p) {
            x = std::exp(x - max_logit);
            sum += x;
          }
          double* out = &result.out[((b * q_len + i) * num_heads + h) * dv];
          for (Index j = 0; j < kv_len; ++j) {
            if (p[j] == 0.0) continue;
            for (Index d = 0; d < dv; ++d) out[d] += p[j] / sum * double{v(b, j, kv_head, d)};
          }
          result.lse[(b * num_heads + h) * q_len + i] = max_logit + std::log(sum);
        }
      }
    }
  }
  return result;
}

}  // namespace published

// ---- Helpers ----

/// Random values in [-1, 1] with a view of logical axes [batch, seq, heads, dim], stored
/// [b, s, h, d] or (heads_major) [b, h, s, d]. Copies are explicit (Copy()): the view points into
/// the storage.
struct Tensor {
  std::vector<float> storage;
  TensorView<float> view;

  Tensor(Index batch, Index seq, Index heads, Index dim, bool heads_major, std::mt19937& rng)
      : storage(reference::random_vector(batch * seq * heads * dim, rng)),
        view(heads_major ? TensorView<float>::bhsd(storage.data(), batch, heads, seq, dim)
                         : TensorView<float>::bshd(storage.data(), batch, seq, heads, dim)) {}
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;

  /// Returns a tensor of the same layout and values.
  std::unique_ptr<Tensor> Copy() const {
    std::mt19937 unused(0);
    auto copy = std::make_unique<Tensor>(0, 0, 1, 1, false, unused);
    copy->storage = storage;
    copy->view = view;
    copy->view.data = copy->storage.data();
    return copy;
  }
};

RopeConfig make_rope(Index head_dim, Index rotary_dim, RopeLayout layout, bool yarn,
                     Index max_positions) {
  RopeConfig rope;
  rope.head_dim = head_dim;
  rope.rotary_dim = rotary_dim;
  rope.layout = layout;
  // YaRN with factor 4 over a context of 64: attention factor 0.1 ln 4 + 1 = 1.139, and the ramp
  // between extrapolated and interpolated pairs falls inside every rotary_dim used here.
  if (yarn) rope.scaling = RopeScaling::yarn(4.0, 64);
  rope.max_positions = max_positions;
  return rope;
}

ReRopeConfig make_rerope(Index window, double leak, bool log_n_scaling, Index training_length) {
  ReRopeConfig config = ReRopeConfig::leaky(window, leak);
  config.log_n_scaling = log_n_scaling;
  config.training_length = training_length;
  return config;
}

std::string leak_name(double leak) { return std::isinf(leak) ? "inf" : std::to_string(leak); }

/// The positions of q_len new tokens after `lengths[b]` cached ones: [batch, q_len].
std::vector<Index> positions_after(const std::vector<Index>& lengths, Index q_len) {
  std::vector<Index> positions;
  for (Index length : lengths) {
    for (Index s = 0; s < q_len; ++s) positions.push_back(length + s);
  }
  return positions;
}

/// Records the largest output error seen so far in the running test as its "max_error" property
/// (in the --gtest_output XML), the measurements behind the tolerances.
void record_error(double error) {
  static const ::testing::TestInfo* test = nullptr;
  static double worst = 0.0;
  const ::testing::TestInfo* current = ::testing::UnitTest::GetInstance()->current_test_info();
  if (current != test) {
    test = current;
    worst = 0.0;
  }
  worst = std::max(worst, error);
  std::ostringstream text;
  text << std::scientific << std::setprecision(2) << worst;
  ::testing::Test::RecordProperty("max_error", text.str());
}

/// Expects out and lse to match the reference: outputs within `tolerance` (absolute; |v| <= 1
/// bounds |out| by 1), LSE within `tolerance` relative, and rows that see no key exactly 0 / -inf.
void expect_close(const reference::Result& expected, const TensorView<const float>& out,
                  const std::vector<float>& lse, double tolerance) {
  const Index batch = out.batch, q_len = out.seq, heads = out.heads, dv = out.dim;
  double worst = 0.0;
  for (Index b = 0; b < batch; ++b) {
    for (Index i = 0; i < q_len; ++i) {
      for (Index h = 0; h < heads; ++h) {
        const double want_lse = expected.lse[(b * heads + h) * q_len + i];
        if (!lse.empty()) {
          const float got_lse = lse[(b * heads + h) * q_len + i];
          if (std::isinf(want_lse)) {
            ASSERT_EQ(got_lse, -std::numeric_limits<float>::infinity())
                << "b " << b << " i " << i << " h " << h;
          } else {
            ASSERT_NEAR(got_lse, want_lse, tolerance * std::max(1.0, std::abs(want_lse)))
                << "b " << b << " i " << i << " h " << h;
          }
        }
        for (Index d = 0; d < dv; ++d) {
          const double want = expected.out[((b * q_len + i) * heads + h) * dv + d];
          const float got = out(b, i, h, d);
          if (std::isinf(want_lse)) {
            ASSERT_EQ(got, 0.0f) << "b " << b << " i " << i << " h " << h;
          }
          worst = std::max(worst, std::abs(got - want));
          ASSERT_NEAR(got, want, tolerance) << "b " << b << " i " << i << " h " << h << " d " << d;
        }
      }
    }
  }
  record_error(worst);
}

// ---- The config: relative positions and the query scale ----

TEST(ReRopeConfigTest, RelativePositionIsOrdinaryInsideTheWindowAndClampedBeyond) {
  for (Index window : {1, 2, 7, 64, 512}) {
    const ReRopeConfig config = ReRopeConfig::rerope(window);
    EXPECT_FALSE(config.is_leaky());
    for (Index i = 0; i < 700; i += 3) {
      for (Index j = 0; j <= i; j += 5) {
        const double relative = config.relative_position(i, j);
        EXPECT_LE(relative, as_double(window)) << "i " << i << " j " << j;
        EXPECT_EQ(relative, as_double(i - j < window ? i - j : window))
            << "w " << window << " i " << i << " j " << j;
      }
    }
  }
}

TEST(ReRopeConfigTest, LeakyRelativePositionGrowsBySlopeOneOverLeakBeyondTheWindow) {
  for (const auto& [window, leak] :
       {std::pair<Index, double>{1, 2.0}, {8, 16.0}, {512, 16.0}, {20, 1.5}}) {
    const ReRopeConfig config = ReRopeConfig::leaky(window, leak);
    EXPECT_TRUE(config.is_leaky());
    for (Index distance = 0; distance < 2000; distance += 7) {
      const Index i = 3000, j = i - distance;
      const double relative = config.relative_position(i, j);
      if (distance < window) {
        EXPECT_EQ(relative, as_double(distance));
      } else {
        // w + (i - j - w) / k: continuous at the window, slope 1/k, never beyond i - j.
        EXPECT_NEAR(relative, as_double(window) + as_double(distance - window) / leak,
                    1e-12 * as_double(distance));
        EXPECT_LE(relative, as_double(distance));
        EXPECT_GE(relative, as_double(window));
      }
    }
    EXPECT_EQ(config.relative_position(100 + window, 100), as_double(window));
  }
}

TEST(ReRopeConfigTest, QueryScaleIsTheLogNFactorAboveTheTrainingLength) {
  ReRopeConfig config = ReRopeConfig::rerope(4);
  config.training_length = 16;
  for (Index pos : {0, 1, 15, 255, 4095}) EXPECT_EQ(config.query_scale(pos), 1.0);
  config.log_n_scaling = true;
  // max(1, log(pos + 1) / log(16)): 1 up to position 15, then 2 at 255 and 3 at 4095.
  for (Index pos = 0; pos <= 15; ++pos) EXPECT_EQ(config.query_scale(pos), 1.0) << pos;
  EXPECT_NEAR(config.query_scale(255), 2.0, 1e-15);
  EXPECT_NEAR(config.query_scale(4095), 3.0, 1e-15);
  EXPECT_NEAR(config.query_scale(100), std::log(101.0) / std::log(16.0), 1e-15);
  for (Index pos = 16; pos < 1000; ++pos) {
    EXPECT_GT(config.query_scale(pos), config.query_scale(pos - 1)) << pos;
  }
}

TEST(ReRopeConfigTest, ReferenceScoresDependOnTheRelativePositionAlone) {
  // Checks the transcription against the header's definition: (R(a) q) . (R(b) k) is
  // af^2 q . R(b - a) k on the rotated dims, so every rectified score must equal the score of q
  // against k turned back by relative_position(i, j), times the query scale.
  std::mt19937 rng(5);
  for (RopeLayout layout : {RopeLayout::kRotateHalf, RopeLayout::kInterleaved})
    for (double leak : {kInfinity, 2.0, 16.0})
      for (bool yarn : {false, true}) {
        const Index head_dim = 24, rotary_dim = 16, window = 5, kv_len = 40, q_len = 7;
        const ReRope rerope(make_rope(head_dim, rotary_dim, layout, yarn, 64),
                            make_rerope(window, leak, true, 8));
        const published::Settings s = published::Settings::of(rerope);
        published::Settings unit = s;
        unit.attention_factor = 1.0;
        std::uniform_real_distribution<double> uniform(-1.0, 1.0);
        const auto random_row = [&] {
          published::Row row(head_dim);
          for (double& x : row) x = uniform(rng);
          return row;
        };
        std::vector<published::Row> q(q_len), k(kv_len);
        for (auto& row : q) row = random_row();
        for (auto& row : k) row = random_row();
        const Index first_pos = kv_len - q_len;
        const std::vector<double> scores =
            published::rectified_scores(s, q, first_pos, published::RotatedKeys(k, s), 0.5);
        for (Index i = 0; i < q_len; ++i) {
          for (Index j = 0; j <= first_pos + i; ++j) {
            const Index pos = first_pos + i;
            const published::Row turned =
                published::rope(k[j], -rerope.config().relative_position(pos, j), unit);
            double rotated = 0.0, passed = 0.0;
            for (Index d = 0; d < head_dim; ++d)
              (d < rotary_dim ? rotated : passed) += q[i][d] * turned[d];
            const double af = rerope.table().attention_factor();
            const double want =
                0.5 * rerope.config().query_scale(pos) * (af * af * rotated + passed);
            EXPECT_NEAR(scores[i * kv_len + j], want, 1e-12)
                << "leak " << leak << " yarn " << yarn << " i " << pos << " j " << j;
          }
        }
      }
}

// ---- attend with ReRoPE over dense keys ----

struct Case {
  Index batch = 1, q_len = 1, kv_len = 1, num_heads = 1, num_kv_heads = 1;
  Index head_dim = 16, rotary_dim = 0, head_dim_v = 0;  // 0: head_dim
  RopeLayout layout = RopeLayout::kRotateHalf;
  bool yarn = false;
  Index window = 1;
  double leak = kInfinity;
  bool log_n_scaling = false;
  Index training_length = 4096;
  Index extra_positions = 0;  // table rows beyond max(kv_len, window + 1)
  Mask mask = Mask::causal();
  std::vector<Index> kv_lens;  // empty: every sequence has kv_len keys
  Index kv_splits = 0;
  int num_threads = 0;
  bool heads_major = false;
  std::optional<float> scale;
  float softcap = 0.0f;

  Index dv() const { return head_dim_v == 0 ? head_dim : head_dim_v; }
  RopeConfig rope() const {
    return make_rope(head_dim, rotary_dim, layout, yarn,
                     std::max(kv_len, window + 1) + extra_positions);
  }
  ReRopeConfig rerope() const { return make_rerope(window, leak, log_n_scaling, training_length); }

  std::string describe() const {
    std::string lens;
    for (Index len : kv_lens) lens += std::to_string(len) + ",";
    return "batch " + std::to_string(batch) + " q_len " + std::to_string(q_len) + " kv_len " +
           std::to_string(kv_len) + (lens.empty() ? "" : " kv_lens " + lens) + " heads " +
           std::to_string(num_heads) + "/" + std::to_string(num_kv_heads) + " dims " +
           std::to_string(head_dim) + "/" + std::to_string(dv()) + " rotary " +
           std::to_string(rotary_dim) + (layout == RopeLayout::kInterleaved ? " interleaved" : "") +
           (yarn ? " yarn" : "") + " w " + std::to_string(window) + " leak " + leak_name(leak) +
           (log_n_scaling ? " log-n L " + std::to_string(training_length) : "") + " mask " +
           std::to_string(static_cast<int>(mask.kind)) + "/" + std::to_string(mask.window) +
           " splits " + std::to_string(kv_splits) + " threads " + std::to_string(num_threads) +
           (heads_major ? " bhsd" : " bshd") + (softcap > 0.0f ? " softcap" : "");
  }
};

struct Outcome {
  std::vector<float> out, lse;
};

/// Runs attend with ReRoPE on a random instance of `c` and checks it against the transcription.
/// The tolerance 1e-5 (of max |v| = 1), as for attend without ReRoPE: the kernel rotates q and k
/// in f32 with f32 cos and sin (each rotated element within a few ulp), so a logit errs by about
/// 1e-7 of sum |q_d k_d| times scale, query scale and af^2 (up to 1/sqrt(D) * D/4 * 2.3 * 1.3
/// here: ~3e-6 at D = 128 in the worst case); the online softmax adds about 1e-6. Measured: at
/// most 4.5e-7 over every test of this file (the max_error property).
Outcome expect_matches_reference(const Case& c, std::mt19937& rng) {
  SCOPED_TRACE(c.describe());
  const ReRope rerope(c.rope(), c.rerope());
  Tensor q(c.batch, c.q_len, c.num_heads, c.head_dim, c.heads_major, rng);
  Tensor k(c.batch, c.kv_len, c.num_kv_heads, c.head_dim, c.heads_major, rng);
  Tensor v(c.batch, c.kv_len, c.num_kv_heads, c.dv(), c.heads_major, rng);
  Tensor out(c.batch, c.q_len, c.num_heads, c.dv(), c.heads_major, rng);
  Outcome outcome;
  outcome.lse.assign(c.batch * c.num_heads * c.q_len, 0.0f);
  AttentionOptions options;
  options.mask = c.mask;
  options.rerope = &rerope;
  options.kv_lens = c.kv_lens;
  options.kv_splits = c.kv_splits;
  options.num_threads = c.num_threads;
  options.scale = c.scale;
  options.softcap = c.softcap;
  options.lse = LseView::bhs(outcome.lse.data(), c.batch, c.num_heads, c.q_len);
  attend(q.view, k.view, v.view, out.view, options);
  const reference::Result expected =
      published::attend(published::Settings::of(rerope), q.view, k.view, v.view, options);
  expect_close(expected, out.view, outcome.lse, 1e-5);
  for (Index b = 0; b < c.batch; ++b) {
    for (Index i = 0; i < c.q_len; ++i) {
      for (Index h = 0; h < c.num_heads; ++h) {
        for (Index d = 0; d < c.dv(); ++d) outcome.out.push_back(out.view(b, i, h, d));
      }
    }
  }
  return outcome;
}

template <class Options>
auto pick(const Options& options, std::mt19937& rng) {
  return options[std::uniform_int_distribution<size_t>(0, std::size(options) - 1)(rng)];
}

TEST(ReRopeAttendTest, MatchesThePublishedMethodOverRandomShapes) {
  std::mt19937 rng(2023);
  // Key counts around the 64-key tiles.
  const Index kv_lens[] = {1, 2, 5, 63, 64, 65, 127, 129, 200, 257, 300};
  const std::pair<Index, Index> heads[] = {{1, 1}, {4, 4}, {4, 2}, {6, 1}, {8, 2}, {5, 5}, {12, 3}};
  // (head_dim, rotary_dim, head_dim_v): the compiled 64 and 128, dims of no fast path, partial
  // rotation (an odd head_dim is fine when the rotated part is even), a different V width.
  const Index dims[][3] = {{64, 0, 64},    {128, 0, 128}, {40, 0, 40},  {72, 0, 72},  {64, 32, 64},
                           {128, 64, 128}, {33, 20, 33},  {72, 48, 24}, {16, 16, 16}, {96, 2, 80}};
  const double leaks[] = {kInfinity, 2.0, 16.0};
  for (int trial = 0; trial < 48; ++trial) {
    Case c;
    c.batch = std::uniform_int_distribution<Index>(1, 3)(rng);
    c.kv_len = pick(kv_lens, rng);
    switch (trial % 3) {
      case 0:  // prefill
        c.q_len = c.kv_len;
        break;
      case 1:  // a later chunk of a prefill
        c.q_len = std::uniform_int_distribution<Index>(1, c.kv_len)(rng);
        break;
      default:  // decode of up to 8 queries
        c.q_len = std::min<Index>(c.kv_len, std::uniform_int_distribution<Index>(1, 8)(rng));
    }
    std::tie(c.num_heads, c.num_kv_heads) = pick(heads, rng);
    const auto& dim = dims[std::uniform_int_distribution<size_t>(0, std::size(dims) - 1)(rng)];
    c.head_dim = dim[0];
    c.rotary_dim = dim[1];
    c.head_dim_v = dim[2];
    // Independent draws, so that every layout, mask and log-n setting meets every window.
    std::bernoulli_distribution coin(0.5), sometimes(0.3);
    c.layout = coin(rng) ? RopeLayout::kRotateHalf : RopeLayout::kInterleaved;
    c.yarn = trial % 5 == 0;
    switch (trial % 4) {
      case 0:
        c.window = 1;
        break;
      case 1:
        c.window = std::uniform_int_distribution<Index>(3, 20)(rng);
        break;
      case 2:  // around a tile
        c.window = pick(std::array<Index, 3>{63, 64, 65}, rng);
        break;
      default:  // beyond every key: ordinary RoPE throughout
        c.window = c.kv_len + std::uniform_int_distribution<Index>(0, 40)(rng);
    }
    c.leak = leaks[(trial / 4) % 3];
    if (coin(rng)) {
      // A short training length, so that the log-n factor exceeds 1 for most queries.
      c.log_n_scaling = true;
      c.training_length =
          std::max<Index>(c.window, std::uniform_int_distribution<Index>(8, 64)(rng));
    }
    c.extra_positions = std::uniform_int_distribution<Index>(0, 30)(rng);
    if (sometimes(rng)) {
      c.mask = Mask::sliding_window(std::uniform_int_distribution<Index>(1, c.kv_len + 10)(rng));
    }
    if (trial % 3 == 2 || sometimes(rng)) {
      c.kv_lens.push_back(c.kv_len);
      for (Index b = 1; b < c.batch; ++b) {
        c.kv_lens.push_back(std::uniform_int_distribution<Index>(c.q_len, c.kv_len)(rng));
      }
    }
    c.kv_splits = trial % 7 == 3 ? 3 : 0;
    c.num_threads = coin(rng) ? 1 : 2;
    c.heads_major = sometimes(rng);
    if (trial % 11 == 5) c.scale = 0.3f;
    if (trial % 13 == 6) c.softcap = 1.5f;
    // Keeps the O(batch heads q_len kv_len D) reference cheap enough for a sanitizer build.
    if (c.batch * c.num_heads * c.q_len * c.kv_len * c.head_dim > 30'000'000) {
      c.batch = 1;
      c.kv_lens.clear();
    }
    expect_matches_reference(c, rng);
  }
}

TEST(ReRopeAttendTest, LongPrefillAcrossManyKeyTilesAndWorkItems) {
  // 600 positions: ten 64-key tiles, and work items of 512 rows (two per sequence and head for
  // MHA, five for a group of 4).
  std::mt19937 rng(17);
  Case plain;
  plain.q_len = plain.kv_len = 600;
  plain.num_heads = plain.num_kv_heads = 2;
  plain.head_dim = 64;
  plain.window = 7;
  expect_matches_reference(plain, rng);

  Case leaky = plain;
  leaky.num_heads = 4;
  leaky.num_kv_heads = 1;
  leaky.head_dim = 128;
  leaky.layout = RopeLayout::kInterleaved;
  leaky.yarn = true;
  leaky.window = 50;
  leaky.leak = 16.0;
  leaky.log_n_scaling = true;
  leaky.training_length = 64;
  expect_matches_reference(leaky, rng);

  Case chunk = plain;  // the last 300 queries, leak 2, partial rotary, sliding window
  chunk.q_len = 300;
  chunk.num_heads = 6;
  chunk.num_kv_heads = 2;
  chunk.head_dim = 72;
  chunk.rotary_dim = 40;
  chunk.window = 130;
  chunk.leak = 2.0;
  chunk.mask = Mask::sliding_window(400);
  expect_matches_reference(chunk, rng);
}

TEST(ReRopeAttendTest, QueriesBeforeTheFirstKeySeeNothing) {
  // Sequences shorter than q_len put their first queries at negative positions: they see no key
  // (zeros and LSE -inf), and no rotation may be formed for them.
  std::mt19937 rng(19);
  for (double leak : {kInfinity, 2.0}) {
    Case c;
    c.batch = 3;
    c.q_len = 10;
    c.kv_len = 30;
    c.kv_lens = {30, 4, 0};
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 32;
    c.window = 3;
    c.leak = leak;
    expect_matches_reference(c, rng);
  }
}

TEST(ReRopeAttendTest, KeysUpToTheLastTablePositionAreRotated) {
  // kv_len == max_positions: the last key sits at position max_positions - 1, the last row of the
  // table (and of the Leaky coarse table).
  std::mt19937 rng(23);
  for (double leak : {kInfinity, 16.0}) {
    Case c;
    c.q_len = 5;
    c.kv_len = 192;
    c.num_heads = 2;
    c.head_dim = 64;
    c.window = 9;
    c.leak = leak;
    ASSERT_EQ(c.rope().max_positions, 192);
    expect_matches_reference(c, rng);
  }
}

TEST(ReRopeAttendTest, PassThroughDimsCarryNoAttentionFactorBeyondTheWindow) {
  // Regression: with partial rotary and YaRN (attention factor af = 1.139), beyond the window the
  // kernel scaled the unrotated dims of q by af (ReRoPE) or af^2 (Leaky). RoPE leaves them as
  // they are, on both sides of the window (apply_rope; HF's cat(rotated, pass)).
  // Only pass-through dim 20 is nonzero: key 0 (at distance p >= w = 1 from query position p, so
  // beyond the window) has logit q_pass . k_pass = 1 at scale 1; the other p keys have logit 0.
  // So out[0] = e / (e + p) and LSE = log(e + p), by hand.
  const Index dim = 32, kv_len = 10;
  for (double leak : {kInfinity, 2.0, 16.0})
    for (Index q_len : {1, 8}) {  // the streamed decode path, then the key-major one
      SCOPED_TRACE("leak " + leak_name(leak) + " q_len " + std::to_string(q_len));
      const ReRope rerope(make_rope(dim, 16, RopeLayout::kRotateHalf, true, 16),
                          ReRopeConfig::leaky(1, leak));
      ASSERT_GT(rerope.table().attention_factor(), 1.1);
      std::vector<float> q(q_len * dim, 0.0f), k(kv_len * dim, 0.0f), v(kv_len * dim, 0.0f);
      for (Index i = 0; i < q_len; ++i) q[i * dim + 20] = 1.0f;
      k[20] = 1.0f;
      v[0] = 1.0f;
      std::vector<float> out(q_len * dim), lse(q_len);
      AttentionOptions options;
      options.mask = Mask::causal();
      options.rerope = &rerope;
      options.scale = 1.0f;
      options.lse = LseView::bhs(lse.data(), 1, 1, q_len);
      attend(TensorView<const float>::bshd(q.data(), 1, q_len, 1, dim),
             TensorView<const float>::bshd(k.data(), 1, kv_len, 1, dim),
             TensorView<const float>::bshd(v.data(), 1, kv_len, 1, dim),
             TensorView<float>::bshd(out.data(), 1, q_len, 1, dim), options);
      for (Index i = 0; i < q_len; ++i) {
        const double pos = as_double(kv_len - q_len + i), e = std::exp(1.0);
        // Exact inputs and O(1) logits: a few f32 roundings.
        EXPECT_NEAR(lse[i], std::log(e + pos), 1e-6) << "query at " << pos;
        EXPECT_NEAR(out[i * dim], e / (e + pos), 1e-6) << "query at " << pos;
      }
    }
}

TEST(ReRopeAttendTest, WindowCoveringEveryKeyIsOrdinaryRopeBitForBit) {
  // With w >= every kv_len, every visible pair is inside the window: the kernel's result must be
  // that of rotating q and k with apply_rope (f32, the same table) and attending without ReRoPE.
  // ReRoPE tiles multiply with FMAs; so must the tiles of the ordinary attend compared with them
  // (the AMX split products round differently, within the f32 tolerances of attend_test).
  const testing::ScopedF32TileProducts fma(detail::F32TileProducts::kFma);
  std::mt19937 rng(29);
  struct Setup {
    Index head_dim, rotary_dim;
    RopeLayout layout;
    bool yarn;
    double leak;
  };
  const Setup setups[] = {{64, 0, RopeLayout::kRotateHalf, false, kInfinity},
                          {128, 0, RopeLayout::kInterleaved, true, kInfinity},
                          {40, 24, RopeLayout::kInterleaved, false, 16.0},
                          {72, 72, RopeLayout::kRotateHalf, true, 2.0}};
  const Index batch = 2, kv_len = 200, heads = 4, kv_heads = 2;
  const std::vector<Index> kv_lens = {200, 150};
  for (const Setup& setup : setups)
    for (Index q_len : {1, 5, 130})
      for (Index window : {kv_len, Index{4096}}) {
        SCOPED_TRACE("dim " + std::to_string(setup.head_dim) + " rotary " +
                     std::to_string(setup.rotary_dim) + " leak " + leak_name(setup.leak) +
                     " q_len " + std::to_string(q_len) + " w " + std::to_string(window));
        const ReRope rerope(
            make_rope(setup.head_dim, setup.rotary_dim, setup.layout, setup.yarn, 4097),
            make_rerope(window, setup.leak, false, 4096));
        Tensor q(batch, q_len, heads, setup.head_dim, false, rng);
        Tensor k(batch, kv_len, kv_heads, setup.head_dim, false, rng);
        Tensor v(batch, kv_len, kv_heads, setup.head_dim, false, rng);
        std::unique_ptr<Tensor> q_rotated = q.Copy(), k_rotated = k.Copy();
        const std::vector<Index> positions =
            positions_after({kv_lens[0] - q_len, kv_lens[1] - q_len}, q_len);
        apply_rope(rerope.table(), q_rotated->view,
                   PositionView::bs(positions.data(), batch, q_len));
        apply_rope(rerope.table(), k_rotated->view, Index{0});

        std::vector<float> ordinary(batch * q_len * heads * setup.head_dim);
        std::vector<float> rectified(ordinary.size());
        AttentionOptions options;
        options.mask = Mask::causal();
        options.kv_lens = kv_lens;
        attend(q_rotated->view, k_rotated->view, v.view,
               TensorView<float>::bshd(ordinary.data(), batch, q_len, heads, setup.head_dim),
               options);
        options.rerope = &rerope;
        attend(q.view, k.view, v.view,
               TensorView<float>::bshd(rectified.data(), batch, q_len, heads, setup.head_dim),
               options);
        size_t differing = 0;
        double worst = 0.0;
        for (size_t i = 0; i < ordinary.size(); ++i) {
          if (ordinary[i] != rectified[i]) ++differing;
          worst = std::max(worst, static_cast<double>(std::abs(ordinary[i] - rectified[i])));
        }
        EXPECT_EQ(differing, 0u) << "of " << ordinary.size() << "; max difference " << worst;
      }
}

TEST(ReRopeAttendTest, ThreadCountsAndKeySplitsAgree) {
  std::mt19937 rng(31);
  // Prefill: the result is the same bits for any thread count (attend's promise).
  Case prefill;
  prefill.batch = 2;
  prefill.q_len = prefill.kv_len = 300;
  prefill.num_heads = 8;
  prefill.num_kv_heads = 2;
  prefill.head_dim = 64;
  prefill.window = 10;
  prefill.leak = 16.0;
  prefill.num_threads = 1;
  std::mt19937 same_inputs = rng;
  const Outcome one = expect_matches_reference(prefill, rng);
  prefill.num_threads = 2;
  const Outcome two = expect_matches_reference(prefill, same_inputs);
  EXPECT_EQ(one.out, two.out);
  EXPECT_EQ(one.lse, two.lse);

  // Decode over 600 keys, split into key ranges merged by LSE: each split count matches the
  // reference; for a given split count, the thread count changes no bit.
  Case decode;
  decode.q_len = 2;
  decode.kv_len = 600;
  decode.num_heads = 8;
  decode.num_kv_heads = 1;
  decode.head_dim = 128;
  decode.window = 20;
  decode.log_n_scaling = true;
  decode.training_length = 32;
  for (Index splits : {1, 2, 5, 10}) {
    decode.kv_splits = splits;
    decode.num_threads = 1;
    std::mt19937 again = rng;
    const Outcome single = expect_matches_reference(decode, rng);
    decode.num_threads = 2;
    const Outcome pair = expect_matches_reference(decode, again);
    EXPECT_EQ(single.out, pair.out) << "splits " << splits;
  }
}

// ---- attend with ReRoPE over caches ----

/// Dense copies of what a cache view stores (dequantised to f32), for the reference.
struct StoredKv {
  std::vector<float> k, v;     // [batch, max_len, num_kv_heads, head_dim_(k|v)]
  std::vector<Index> kv_lens;  // [batch]
  TensorView<const float> k_view, v_view;
};

/// Reads every readable key and value of a cache view; rows a ring buffer has overwritten stay 0
/// (the masks of the tests never reach them).
template <class View>
std::unique_ptr<StoredKv> read_back(const View& view) {
  auto stored = std::make_unique<StoredKv>();
  const Index batch = view.batch(), len = view.max_kv_len(), heads = view.num_kv_heads();
  const Index dk = view.head_dim_k(), dv = view.head_dim_v();
  stored->k.assign(batch * len * heads * dk, 0.0f);
  stored->v.assign(batch * len * heads * dv, 0.0f);
  for (Index b = 0; b < batch; ++b) {
    stored->kv_lens.push_back(view.kv_len(b));
    for (Index j = view.first_readable(b); j < view.kv_len(b); ++j) {
      for (Index h = 0; h < heads; ++h) {
        const float k_scale = view.k_scales(b, j, h) ? *view.k_scales(b, j, h) : 1.0f;
        const float v_scale = view.v_scales(b, j, h) ? *view.v_scales(b, j, h) : 1.0f;
        for (Index d = 0; d < dk; ++d) {
          stored->k[((b * len + j) * heads + h) * dk + d] =
              k_scale * static_cast<float>(view.k_row(b, j, h)[d]);
        }
        for (Index d = 0; d < dv; ++d) {
          stored->v[((b * len + j) * heads + h) * dv + d] =
              v_scale * static_cast<float>(view.v_row(b, j, h)[d]);
        }
      }
    }
  }
  stored->k_view = TensorView<const float>::bshd(stored->k.data(), batch, len, heads, dk);
  stored->v_view = TensorView<const float>::bshd(stored->v.data(), batch, len, heads, dv);
  return stored;
}

template <class Source>
std::vector<float> run_attend(const TensorView<const float>& q, const Source& kv,
                              const AttentionOptions& options, std::vector<float>* lse = nullptr) {
  std::vector<float> out(q.batch * q.seq * q.heads * kv.head_dim_v());
  AttentionOptions with_lse = options;
  if (lse != nullptr) {
    lse->assign(q.batch * q.heads * q.seq, 0.0f);
    with_lse.lse = LseView::bhs(lse->data(), q.batch, q.heads, q.seq);
  }
  attend(q, kv, TensorView<float>::bshd(out.data(), q.batch, q.seq, q.heads, kv.head_dim_v()),
         with_lse);
  return out;
}

/// Random [1, seq, heads, dim] tokens.
struct Tokens {
  std::vector<float> data;
  Index seq, heads, dim;

  Tokens(Index seq_len, Index num_heads, Index head_dim, std::mt19937& rng)
      : data(reference::random_vector(seq_len * num_heads * head_dim, rng)),
        seq(seq_len),
        heads(num_heads),
        dim(head_dim) {}
  TensorView<const float> all() const { return range(0, seq); }
  /// Tokens [begin, end) as a [1, end - begin, heads, dim] view.
  TensorView<const float> range(Index begin, Index end) const {
    return TensorView<const float>::bshd(data.data() + begin * heads * dim, 1, end - begin, heads,
                                         dim);
  }
};

template <class T>
class ReRopeCacheTest : public ::testing::Test {};
using Elements = ::testing::Types<float, Eigen::bfloat16, Eigen::half, std::int8_t>;
TYPED_TEST_SUITE(ReRopeCacheTest, Elements, );  // the empty name generator: clang -Wpedantic wants an argument for "..."

TYPED_TEST(ReRopeCacheTest, DecodeOverContiguousPagedAndRingCachesMatchesReference) {
  using T = TypeParam;
  std::mt19937 rng(37);
  struct Setup {
    Index num_heads, num_kv_heads, head_dim, rotary_dim;
    RopeLayout layout;
    bool yarn;
    Index window;
    double leak;
    bool log_n_scaling;
    Index training_length;
    Mask mask;
  };
  const Setup setups[] = {
      {8, 2, 64, 0, RopeLayout::kRotateHalf, false, 16, kInfinity, false, 4096, Mask::causal()},
      {4, 4, 128, 64, RopeLayout::kInterleaved, true, 5, 16.0, true, 32, Mask::causal()},
      {6, 1, 40, 40, RopeLayout::kRotateHalf, false, 1, 2.0, true, 16, Mask::sliding_window(100)},
      {2, 1, 72, 48, RopeLayout::kInterleaved, false, 700, kInfinity, false, 4096,
       Mask::sliding_window(300)}};
  // Sequences of different lengths, attended in an order that is not their ids'.
  const std::vector<Index> lengths = {8, 150, 600};
  const std::vector<Index> order = {2, 0, 1};
  for (const Setup& setup : setups) {
    const Index dim = setup.head_dim, kv_heads = setup.num_kv_heads;
    const ReRope rerope(
        make_rope(dim, setup.rotary_dim, setup.layout, setup.yarn, 701),
        make_rerope(setup.window, setup.leak, setup.log_n_scaling, setup.training_length));
    KvCache<T> contiguous(KvCacheConfig{kv_heads, dim, dim, 3, 600, false});
    PagedKvCache<T> paged(PagedKvCacheConfig{kv_heads, dim, dim, 16, 60});
    // A ring buffer as wide as the sliding window and the longest query chunk.
    const bool ring = setup.mask.kind == MaskKind::kSlidingWindow;
    KvCache<T> ring_buffer(KvCacheConfig{kv_heads, dim, dim, 3, setup.mask.window + 8, true});
    std::vector<Index> paged_ids;
    for (Index s = 0; s < 3; ++s) {
      paged_ids.push_back(paged.add_sequence());
      Tokens k(lengths[s], kv_heads, dim, rng), v(lengths[s], kv_heads, dim, rng);
      contiguous.append(s, k.all(), v.all());
      // In chunks: the paged blocks fill across appends; the ring buffer wraps.
      for (Index begin = 0; begin < lengths[s]; begin += 97) {
        const Index end = std::min(lengths[s], begin + 97);
        paged.append(paged_ids[s], k.range(begin, end), v.range(begin, end));
        if (ring) ring_buffer.append(s, k.range(begin, end), v.range(begin, end));
      }
    }
    const auto view = contiguous.view(order);
    const std::unique_ptr<StoredKv> stored = read_back(view);
    for (Index q_len : {1, 3, 8}) {
      SCOPED_TRACE("dim " + std::to_string(dim) + " heads " + std::to_string(setup.num_heads) +
                   "/" + std::to_string(kv_heads) + " w " + std::to_string(setup.window) +
                   " leak " + leak_name(setup.leak) + " q_len " + std::to_string(q_len));
      std::vector<float> q_data = reference::random_vector(3 * q_len * setup.num_heads * dim, rng);
      const auto q = TensorView<const float>::bshd(q_data.data(), 3, q_len, setup.num_heads, dim);
      AttentionOptions options;
      options.mask = setup.mask;
      options.rerope = &rerope;
      options.kv_splits = q_len == 3 ? 4 : 0;
      options.num_threads = q_len == 1 ? 1 : 2;
      std::vector<float> lse;
      const std::vector<float> got = run_attend(q, view, options, &lse);
      AttentionOptions dense = options;
      dense.kv_lens = stored->kv_lens;
      const reference::Result expected = published::attend(published::Settings::of(rerope), q,
                                                           stored->k_view, stored->v_view, dense);
      // The kernel and the reference read the same stored (rounded) keys and values, so the f32
      // tolerance of the dense tests holds for every element type.
      expect_close(expected,
                   TensorView<const float>::bshd(got.data(), 3, q_len, setup.num_heads, dim), lse,
                   1e-5);
      // Paged and contiguous storage hold the same rows: the same bits come out.
      const std::vector<float> got_paged =
          run_attend(q, paged.view({paged_ids[2], paged_ids[0], paged_ids[1]}), options);
      EXPECT_EQ(std::memcmp(got_paged.data(), got.data(), got.size() * sizeof(float)), 0);
      if (ring) {
        const std::vector<float> got_ring = run_attend(q, ring_buffer.view(order), options);
        for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got_ring[i], got[i], 1e-6) << i;
      }
    }
  }
}

/// The largest output error of ReRoPE attention through a cache of T against the f32 reference
/// on the original keys and values: D = 64, 300 keys, uniform in [-1, 1].
template <class T>
double low_precision_error() {
  std::mt19937 rng(41);
  const Index heads = 4, kv_heads = 2, len = 300, dim = 64;
  const ReRope rerope(make_rope(dim, 0, RopeLayout::kRotateHalf, false, 512),
                      make_rerope(16, 16.0, false, 4096));
  Tokens q(len, heads, dim, rng), k(len, kv_heads, dim, rng), v(len, kv_heads, dim, rng);
  KvCache<T> cache(KvCacheConfig{kv_heads, dim, dim, 1, len, false});
  cache.append(0, k.all(), v.all());
  AttentionOptions options;
  options.mask = Mask::causal();
  options.rerope = &rerope;
  const std::vector<float> got = run_attend(q.all(), cache.view({0}), options);
  const reference::Result expected =
      published::attend(published::Settings::of(rerope), q.all(), k.all(), v.all(), options);
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i)
    worst = std::max(worst, std::abs(got[i] - expected.out[i]));
  return worst;
}

TEST(ReRopeCacheErrorTest, LowPrecisionErrorAgainstF32IsBounded) {
  // A rotation is an isometry (the attention factor is 1 here), so rounding a key moves a logit
  // exactly as much as without RoPE: the bounds of KvCacheTest.LowPrecisionErrorAgainstF32IsBounded
  // (element rounding: bf16 2^-9, f16 2^-12, int8 2^-8 of the row's max) apply unchanged.
  // Measured: f32 9.7e-8, f16 2.4e-4, bf16 2.0e-3, int8 3.9e-3, the same as without ReRoPE.
  const double f32 = low_precision_error<float>(), f16 = low_precision_error<Eigen::half>();
  const double bf16 = low_precision_error<Eigen::bfloat16>();
  const double int8 = low_precision_error<std::int8_t>();
  EXPECT_LT(f32, 1e-5);
  EXPECT_LT(f16, 1e-3);
  EXPECT_LT(bf16, 6e-3);
  EXPECT_LT(int8, 1.2e-2);
  for (const auto& [name, error] :
       {std::pair<const char*, double>{"f32", f32}, {"f16", f16}, {"bf16", bf16}, {"int8", int8}}) {
    std::ostringstream text;
    text << std::scientific << std::setprecision(2) << error;
    RecordProperty(std::string(name) + "_error", text.str());
  }
}

// ---- rerope_attention: append raw keys, attend raw queries ----

template <class Cache>
struct CacheTraits;
template <class T>
struct CacheTraits<KvCache<T>> {
  using Element = T;
  static KvCache<T> make(Index kv_heads, Index dim, Index sequences, Index capacity) {
    return KvCache<T>(KvCacheConfig{kv_heads, dim, dim, sequences, capacity, false});
  }
  static std::vector<Index> add_sequences(KvCache<T>&, Index count) {
    std::vector<Index> ids;
    for (Index s = 0; s < count; ++s) ids.push_back(s);
    return ids;
  }
  /// Everything that must not change when a call is rejected.
  static std::vector<Index> bookkeeping(const KvCache<T>& cache, const std::vector<Index>& ids) {
    std::vector<Index> state;
    for (Index id : ids) state.push_back(cache.length(id));
    return state;
  }
};
template <class T>
struct CacheTraits<PagedKvCache<T>> {
  using Element = T;
  static PagedKvCache<T> make(Index kv_heads, Index dim, Index sequences, Index capacity) {
    return PagedKvCache<T>(
        PagedKvCacheConfig{kv_heads, dim, dim, 16, sequences * (capacity / 16 + 1)});
  }
  static std::vector<Index> add_sequences(PagedKvCache<T>& cache, Index count) {
    std::vector<Index> ids;
    for (Index s = 0; s < count; ++s) ids.push_back(cache.add_sequence());
    return ids;
  }
  static std::vector<Index> bookkeeping(const PagedKvCache<T>& cache,
                                        const std::vector<Index>& ids) {
    std::vector<Index> state{cache.free_blocks()};
    for (Index id : ids) {
      state.push_back(cache.length(id));
      for (Index block : cache.block_table(id)) state.push_back(block);
    }
    return state;
  }
};

template <class Cache>
class ReRopeAttentionTest : public ::testing::Test {};
using Caches = ::testing::Types<KvCache<float>, KvCache<Eigen::bfloat16>, KvCache<std::int8_t>,
                                PagedKvCache<float>, PagedKvCache<std::int8_t>>;
TYPED_TEST_SUITE(ReRopeAttentionTest, Caches, );  // the empty name generator: clang -Wpedantic wants an argument for "..."

/// The largest error of attention through a cache of T against f32 keys and values, for logits up
/// to 1.7 times those of LowPrecisionErrorAgainstF32IsBounded (log-n factor up to 1.33 and YaRN's
/// af^2 = 1.30 below): twice its bounds. Measured: bf16 2.2e-3, int8 4.2e-3 (f32 1.2e-7).
template <class T>
double low_precision_tolerance() {
  if constexpr (std::is_same_v<T, float>) {
    return 1e-5;
  } else if constexpr (std::is_same_v<T, Eigen::half>) {
    return 2e-3;
  } else if constexpr (std::is_same_v<T, Eigen::bfloat16>) {
    return 1.2e-2;
  } else {
    static_assert(std::is_same_v<T, std::int8_t>);
    return 2.4e-2;
  }
}

TYPED_TEST(ReRopeAttentionTest, PrefillThenDecodeStepsEqualsOneDensePrefill) {
  using Cache = TypeParam;
  using Traits = CacheTraits<Cache>;
  using T = typename Traits::Element;
  std::mt19937 rng(43);
  struct Setup {
    Index num_heads, num_kv_heads, head_dim, rotary_dim;
    RopeLayout layout;
    bool yarn;
    Index window;
    double leak;
    bool log_n_scaling;
    Index training_length;
  };
  const Setup setups[] = {{8, 2, 64, 48, RopeLayout::kInterleaved, true, 12, 16.0, true, 32},
                          {4, 1, 40, 0, RopeLayout::kRotateHalf, false, 1, kInfinity, false, 4096}};
  const std::vector<Index> prompts = {37, 90};
  const Index chunks[] = {1, 1, 3, 1, 2, 1, 8, 1};  // decode steps and short chunks
  Index generated = 0;
  for (Index n : chunks) generated += n;
  for (const Setup& setup : setups) {
    SCOPED_TRACE("dim " + std::to_string(setup.head_dim) + " w " + std::to_string(setup.window));
    const Index heads = setup.num_heads, kv_heads = setup.num_kv_heads, dim = setup.head_dim;
    const ReRope rerope(
        make_rope(dim, setup.rotary_dim, setup.layout, setup.yarn, 256),
        make_rerope(setup.window, setup.leak, setup.log_n_scaling, setup.training_length));
    Cache cache = Traits::make(kv_heads, dim, 2, 128);
    const std::vector<Index> ids = Traits::add_sequences(cache, 2);
    std::vector<Tokens> q, k, v;  // per sequence, every token
    for (Index s = 0; s < 2; ++s) {
      q.emplace_back(prompts[s] + generated, heads, dim, rng);
      k.emplace_back(prompts[s] + generated, kv_heads, dim, rng);
      v.emplace_back(prompts[s] + generated, kv_heads, dim, rng);
    }
    std::vector<std::vector<float>> stepped(2);  // per sequence, [tokens, heads, dim]
    // The prompts, one sequence at a time (their lengths differ); the default mask (kNone) is
    // taken as causal.
    for (Index s = 0; s < 2; ++s) {
      const std::vector<Index> positions = positions_after({0}, prompts[s]);
      std::vector<float> out(prompts[s] * heads * dim);
      rerope_attention(rerope, q[s].range(0, prompts[s]), k[s].range(0, prompts[s]),
                       v[s].range(0, prompts[s]), PositionView::bs(positions.data(), 1, prompts[s]),
                       cache, {ids[s]},
                       TensorView<float>::bshd(out.data(), 1, prompts[s], heads, dim));
      stepped[s] = out;
    }
    // Then both sequences together, each at its own positions.
    for (Index n : chunks) {
      const std::vector<Index> lengths = {cache.length(ids[0]), cache.length(ids[1])};
      std::vector<float> q_batch, k_batch, v_batch;
      for (Index s = 0; s < 2; ++s) {
        const auto append_rows = [&](const Tokens& x, std::vector<float>& dst) {
          const TensorView<const float> rows = x.range(lengths[s], lengths[s] + n);
          dst.insert(dst.end(), rows.data, rows.data + n * x.heads * x.dim);
        };
        append_rows(q[s], q_batch);
        append_rows(k[s], k_batch);
        append_rows(v[s], v_batch);
      }
      const std::vector<Index> positions = positions_after(lengths, n);
      std::vector<float> out(2 * n * heads * dim);
      AttentionOptions options;
      options.num_threads = n == 1 ? 1 : 2;
      rerope_attention(rerope, TensorView<const float>::bshd(q_batch.data(), 2, n, heads, dim),
                       TensorView<const float>::bshd(k_batch.data(), 2, n, kv_heads, dim),
                       TensorView<const float>::bshd(v_batch.data(), 2, n, kv_heads, dim),
                       PositionView::bs(positions.data(), 2, n), cache, ids,
                       TensorView<float>::bshd(out.data(), 2, n, heads, dim), options);
      for (Index s = 0; s < 2; ++s) {
        stepped[s].insert(stepped[s].end(), out.begin() + s * n * heads * dim,
                          out.begin() + (s + 1) * n * heads * dim);
      }
    }
    const std::unique_ptr<StoredKv> stored = read_back(cache.view(ids));
    for (Index s = 0; s < 2; ++s) {
      const Index total = prompts[s] + generated;
      ASSERT_EQ(cache.length(ids[s]), total);
      ASSERT_EQ(static_cast<Index>(stepped[s].size()), total * heads * dim);
      AttentionOptions options;
      options.mask = Mask::causal();
      options.rerope = &rerope;
      // One prefill of every token over the f32 keys and values...
      const std::vector<float> full =
          run_attend(q[s].all(), DenseKv<float>{k[s].all(), v[s].all(), {}}, options);
      // ... and over what the cache stored (sequence s of the read-back copy).
      TensorView<const float> k_stored = stored->k_view, v_stored = stored->v_view;
      k_stored.data += s * k_stored.batch_stride;
      v_stored.data += s * v_stored.batch_stride;
      k_stored.batch = v_stored.batch = 1;
      k_stored.seq = v_stored.seq = total;
      const std::vector<float> full_stored =
          run_attend(q[s].all(), DenseKv<float>{k_stored, v_stored, {}}, options);
      double worst = 0.0;
      for (size_t i = 0; i < full.size(); ++i) {
        worst = std::max(worst, static_cast<double>(std::abs(stepped[s][i] - full[i])));
        // Both read the same stored values; only the order of f32 sums differs (tiles start at
        // other keys): the f32 tolerance holds for every element type.
        ASSERT_NEAR(stepped[s][i], full_stored[i], 1e-5) << "sequence " << s << " at " << i;
        ASSERT_NEAR(stepped[s][i], full[i], low_precision_tolerance<T>())
            << "sequence " << s << " at " << i;
      }
      record_error(worst);
    }
  }
}

TYPED_TEST(ReRopeAttentionTest, PositionsOtherThanTheCacheEndAreRejectedAndChangeNothing) {
  using Cache = TypeParam;
  using Traits = CacheTraits<Cache>;
  std::mt19937 rng(47);
  const Index heads = 4, kv_heads = 2, dim = 16;
  const ReRope rerope(make_rope(dim, 0, RopeLayout::kRotateHalf, false, 64),
                      make_rerope(4, kInfinity, false, 4096));
  Cache cache = Traits::make(kv_heads, dim, 2, 40);
  const std::vector<Index> ids = Traits::add_sequences(cache, 2);
  Tokens k0(10, kv_heads, dim, rng), k1(20, kv_heads, dim, rng);
  cache.append(ids[0], k0.all(), k0.all());
  cache.append(ids[1], k1.all(), k1.all());
  const auto snapshot = [&] {
    const std::unique_ptr<StoredKv> stored = read_back(cache.view(ids));
    return std::make_pair(Traits::bookkeeping(cache, ids), std::make_pair(stored->k, stored->v));
  };
  const auto before = snapshot();

  std::vector<float> q = reference::random_vector(2 * 2 * heads * dim, rng);
  std::vector<float> kv = reference::random_vector(2 * 2 * kv_heads * dim, rng);
  std::vector<float> out(2 * 2 * heads * dim);
  const auto call = [&](const std::vector<Index>& positions) {
    const auto kv_view = TensorView<const float>::bshd(kv.data(), 2, 2, kv_heads, dim);
    rerope_attention(rerope, TensorView<const float>::bshd(q.data(), 2, 2, heads, dim), kv_view,
                     kv_view, PositionView::bs(positions.data(), 2, 2), cache, ids,
                     TensorView<float>::bshd(out.data(), 2, 2, heads, dim));
  };
  // Sequence 1's second token skips a position.
  expect_error(
      [&] {
        call({10, 11, 20, 22});
      },
      "headroom::rerope_attention: positions[1, 1] (22) must be 21");
  EXPECT_EQ(snapshot(), before);
  // Sequence 0 restarts inside its cached tokens.
  expect_error(
      [&] {
        call({9, 10, 20, 21});
      },
      "headroom::rerope_attention: positions[0, 0] (9) must be 10");
  EXPECT_EQ(snapshot(), before);
  // The right positions are taken (and append).
  call({10, 11, 20, 21});
  EXPECT_EQ(cache.length(ids[0]), 12);
  EXPECT_EQ(cache.length(ids[1]), 22);
}

TEST(ReRopeAttentionRingTest, SlidingWindowOverARingBufferEqualsOneDensePrefill) {
  // A ring buffer as wide as the sliding window and one decode step: keys keep their logical
  // positions (what ReRoPE rotates by) while their rows wrap.
  std::mt19937 rng(59);
  const Index heads = 4, kv_heads = 2, dim = 32, total = 100, prompt = 30, window = 32;
  const ReRope rerope(make_rope(dim, 0, RopeLayout::kRotateHalf, false, 128),
                      make_rerope(6, 2.0, true, 16));
  KvCache<float> cache(KvCacheConfig{kv_heads, dim, dim, 1, window + 1, true});
  Tokens q(total, heads, dim, rng), k(total, kv_heads, dim, rng), v(total, kv_heads, dim, rng);
  AttentionOptions options;
  options.mask = Mask::sliding_window(window);
  std::vector<float> stepped(total * heads * dim);
  for (Index begin = 0; begin < total;) {
    const Index n = begin == 0 ? prompt : 1;
    const std::vector<Index> positions = positions_after({begin}, n);
    rerope_attention(
        rerope, q.range(begin, begin + n), k.range(begin, begin + n), v.range(begin, begin + n),
        PositionView::bs(positions.data(), 1, n), cache, {0},
        TensorView<float>::bshd(stepped.data() + begin * heads * dim, 1, n, heads, dim), options);
    begin += n;
  }
  EXPECT_EQ(cache.first_readable(0), total - window - 1);
  options.rerope = &rerope;
  const std::vector<float> full =
      run_attend(q.all(), DenseKv<float>{k.all(), v.all(), {}}, options);
  // The same f32 keys, summed from other tile starts: a few ulp of the output scale.
  for (size_t i = 0; i < full.size(); ++i) ASSERT_NEAR(stepped[i], full[i], 1e-5) << i;

  // A causal mask reaches key 0: rejected, and nothing changes. Once the ring has wrapped, attend's
  // check names it; while the ring is full but not yet wrapped, the append would drop key 0.
  KvCache<float> full_ring(KvCacheConfig{kv_heads, dim, dim, 1, window + 1, true});
  full_ring.append(0, k.range(0, window + 1), v.range(0, window + 1));
  Tokens q1(1, heads, dim, rng), k1(1, kv_heads, dim, rng);
  options.mask = Mask::causal();
  for (KvCache<float>* ring : {&cache, &full_ring}) {
    const Index length = ring->length(0);
    const std::unique_ptr<StoredKv> before = read_back(ring->view({0}));
    std::vector<float> out(heads * dim);
    const std::vector<Index> next = {length};
    expect_error(
        [&] {
          rerope_attention(rerope, q1.all(), k1.all(), k1.all(),
                           PositionView::bs(next.data(), 1, 1), *ring, {0},
                           TensorView<float>::bshd(out.data(), 1, 1, heads, dim), options);
        },
        ring == &cache ? "headroom::attend: sequence 0: the mask reaches key 0 but the cache only "
                         "holds keys from 67 on"
                       : "headroom::rerope_attention: sequence 0: the mask reaches key 0 but after "
                         "appending the cache only holds keys from 1 on");
    EXPECT_EQ(ring->length(0), length);
    const std::unique_ptr<StoredKv> after = read_back(ring->view({0}));
    EXPECT_EQ(after->k, before->k);
    EXPECT_EQ(after->v, before->v);
  }
}

// ---- Errors ----

TEST(ReRopeErrorTest, BadConfigsThrowErrorsNamingTheField) {
  const RopeConfig rope = make_rope(16, 0, RopeLayout::kRotateHalf, false, 256);
  const auto build = [&](const ReRopeConfig& config) {
    return [=] { ReRope rerope(rope, config); };
  };
  expect_error(build(ReRopeConfig::rerope(0)), "headroom::ReRope: window (0) must be >= 1");
  expect_error(build(ReRopeConfig::leaky(8, 1.0)), "headroom::ReRope: leak (1) must be > 1");
  expect_error(build(ReRopeConfig::leaky(8, 0.5)), "headroom::ReRope: leak (0.5) must be > 1");
  expect_error(build(ReRopeConfig::leaky(8, std::numeric_limits<double>::quiet_NaN())),
               "headroom::ReRope: leak (nan) must be > 1");
  expect_error(build(make_rerope(100, kInfinity, false, 64)),
               "headroom::ReRope: window (100) exceeds training_length (64)");
  expect_error(build(ReRopeConfig::rerope(256)),
               "headroom::ReRope: window (256) must be below the table's max_positions (256)");
  expect_error(build(make_rerope(1, kInfinity, true, 1)),
               "headroom::ReRope: training_length (1) must be >= 2 with log_n_scaling");
  // The RoPE table's own checks come first.
  expect_error(
      [&] {
        ReRope(make_rope(15, 0, RopeLayout::kRotateHalf, false, 64), ReRopeConfig::rerope(8));
      },
      "headroom::RopeTable: rotary_dim (15) must be even");
  EXPECT_NO_THROW(ReRope(rope, ReRopeConfig::rerope(255)));
  EXPECT_NO_THROW(ReRope(rope, ReRopeConfig::leaky(1, 1.0000001)));
}

TEST(ReRopeErrorTest, AttendRejectsWhatReRopeCannotServe) {
  std::mt19937 rng(53);
  const ReRope rerope(make_rope(16, 0, RopeLayout::kRotateHalf, false, 40),
                      ReRopeConfig::rerope(8));
  Tensor q(1, 4, 2, 16, false, rng), k(1, 30, 1, 16, false, rng), v(1, 30, 1, 16, false, rng);
  Tensor out(1, 4, 2, 16, false, rng);
  AttentionOptions options;
  options.rerope = &rerope;
  expect_error([&] { attend(q.view, k.view, v.view, out.view, options); },
               "headroom::attend: rerope needs a causal or sliding-window mask, but mask.kind is "
               "none");
  options.mask = Mask::causal();
  EXPECT_NO_THROW(attend(q.view, k.view, v.view, out.view, options));
  options.mask = Mask::sliding_window(5);
  EXPECT_NO_THROW(attend(q.view, k.view, v.view, out.view, options));

  Tensor q8(1, 4, 2, 8, false, rng), k8(1, 30, 1, 8, false, rng), out8(1, 4, 2, 8, false, rng);
  expect_error([&] { attend(q8.view, k8.view, k8.view, out8.view, options); },
               "headroom::attend: q.dim (8) differs from the ReRoPE table's head_dim (16)");

  // Keys at positions 0 .. kv_len - 1 must all lie in the table.
  Tensor k41(1, 41, 1, 16, false, rng), v41(1, 41, 1, 16, false, rng);
  expect_error([&] { attend(q.view, k41.view, v41.view, out.view, options); },
               "sequence 0 has kv_len 41, beyond the ReRoPE table's max_positions (40)");
  options.kv_lens = {40};  // only the valid keys count
  EXPECT_NO_THROW(attend(q.view, k41.view, v41.view, out.view, options));
  options.kv_lens.clear();
  KvCache<float> cache(KvCacheConfig{1, 16, 16, 1, 64, false});
  cache.append(0, k41.view, v41.view);
  expect_error([&] { attend(q.view, cache.view({0}), out.view, options); },
               "sequence 0 has kv_len 41, beyond the ReRoPE table's max_positions (40)");
}

}  // namespace
}  // namespace headroom
