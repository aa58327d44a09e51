// SPDX-License-Identifier: MIT
// Tests headroom::attend against the double-precision reference over randomized shapes.
#include "headroom/attention/attend.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "expect_error.hpp"
#include "headroom/attention/cost.hpp"
#include "headroom/attention/merge.hpp"
#include "reference.hpp"
#include "tile_products.hpp"

namespace headroom {
namespace {

enum class Layout { kBshd, kBhsd, kGappedStrided };

/// A buffer of random values and a view of it with logical axes [batch, seq, heads, dim].
struct Tensor {
  std::vector<float> storage;
  TensorView<float> view;

  Tensor(Index batch, Index seq, Index heads, Index dim, Layout layout, std::mt19937& rng,
         float amplitude = 1.0f) {
    switch (layout) {
      case Layout::kBshd:
        storage = reference::random_vector(batch * seq * heads * dim, rng, amplitude);
        view = TensorView<float>::bshd(storage.data(), batch, seq, heads, dim);
        break;
      case Layout::kBhsd:
        storage = reference::random_vector(batch * seq * heads * dim, rng, amplitude);
        view = TensorView<float>::bhsd(storage.data(), batch, heads, seq, dim);
        break;
      case Layout::kGappedStrided: {
        // Every element two apart, a gap of 3 after each token: strides no fast path assumes.
        const Index seq_stride = heads * dim * 2 + 3;
        storage = reference::random_vector(batch * seq * seq_stride + 1, rng, amplitude);
        view = {storage.data(), batch, seq, heads, dim, seq * seq_stride, seq_stride, dim * 2, 2};
        break;
      }
    }
  }
};

struct Case {
  Index batch, q_len, kv_len, num_heads, num_kv_heads, head_dim_k, head_dim_v;
  Mask mask;
  bool varlen = false;
  float softcap = 0.0f;
  Layout layout = Layout::kBshd;
  float amplitude = 1.0f;

  std::string describe() const {
    return "batch " + std::to_string(batch) + " q_len " + std::to_string(q_len) + " kv_len " +
           std::to_string(kv_len) + " heads " + std::to_string(num_heads) + "/" +
           std::to_string(num_kv_heads) + " dims " + std::to_string(head_dim_k) + "/" +
           std::to_string(head_dim_v) + " mask " + std::to_string(static_cast<int>(mask.kind)) +
           " window " + std::to_string(mask.window) + (varlen ? " varlen" : "") +
           " softcap " + std::to_string(softcap) + " layout " +
           std::to_string(static_cast<int>(layout));
  }
};

/// Runs attend on a random instance of `c` and checks it against the reference: every output
/// element within 1e-5 of the output scale (the largest |v|, a bound on |out|), every LSE within
/// 1e-5 relative. f32 accumulation over a few hundred keys keeps errors near 1e-6.
void expect_matches_reference(const Case& c, std::mt19937& rng, int num_threads = 0) {
  SCOPED_TRACE(c.describe());
  Tensor q(c.batch, c.q_len, c.num_heads, c.head_dim_k, c.layout, rng, c.amplitude);
  Tensor k(c.batch, c.kv_len, c.num_kv_heads, c.head_dim_k, c.layout, rng, c.amplitude);
  Tensor v(c.batch, c.kv_len, c.num_kv_heads, c.head_dim_v, c.layout, rng);
  Tensor out(c.batch, c.q_len, c.num_heads, c.head_dim_v, c.layout, rng);
  std::vector<float> lse(c.batch * c.num_heads * c.q_len);
  AttentionOptions options;
  options.mask = c.mask;
  options.softcap = c.softcap;
  options.num_threads = num_threads;
  options.lse = LseView::bhs(lse.data(), c.batch, c.num_heads, c.q_len);
  if (c.varlen) {
    std::uniform_int_distribution<Index> length(0, c.kv_len);
    for (Index b = 0; b < c.batch; ++b) options.kv_lens.push_back(b == 0 ? c.kv_len : length(rng));
  }
  attend(q.view, k.view, v.view, out.view, options);
  const reference::Result expected = reference::attend(q.view, k.view, v.view, options);

  const double tolerance = 1e-5;  // relative to max |v| = 1
  for (Index b = 0; b < c.batch; ++b) {
    for (Index i = 0; i < c.q_len; ++i) {
      for (Index h = 0; h < c.num_heads; ++h) {
        for (Index d = 0; d < c.head_dim_v; ++d) {
          const double want = expected.out[((b * c.q_len + i) * c.num_heads + h) * c.head_dim_v + d];
          ASSERT_NEAR(out.view(b, i, h, d), want, tolerance)
              << "b " << b << " i " << i << " h " << h << " d " << d;
        }
        const double want_lse = expected.lse[(b * c.num_heads + h) * c.q_len + i];
        const float got_lse = lse[(b * c.num_heads + h) * c.q_len + i];
        if (std::isinf(want_lse)) {
          ASSERT_EQ(got_lse, -std::numeric_limits<float>::infinity()) << "b " << b << " i " << i;
        } else {
          ASSERT_NEAR(got_lse, want_lse, 1e-5 * std::max(1.0, std::abs(want_lse)))
              << "b " << b << " i " << i << " h " << h;
        }
      }
    }
  }
}

/// Each test runs with the key-major f32 tiles multiplied by the AMX split products (skipped
/// where the build, processor or OS lacks AMX-BF16), forced on for every tile, and by FMAs.
class AttendTest : public ::testing::TestWithParam<detail::F32TileProducts> {
 protected:
  void SetUp() override {
    if (GetParam() == detail::F32TileProducts::kAmxSplit && !detail::amx_available()) {
      GTEST_SKIP() << "no AMX-BF16 here (build, processor or OS permission)";
    }
    products_.emplace(GetParam());
  }
  void TearDown() override { products_.reset(); }

 private:
  std::optional<testing::ScopedF32TileProducts> products_;
};

INSTANTIATE_TEST_SUITE_P(Products, AttendTest,
                         ::testing::Values(detail::F32TileProducts::kAmxSplit,
                                           detail::F32TileProducts::kFma),
                         [](const auto& param_info) {
                           return param_info.param == detail::F32TileProducts::kAmxSplit
                                      ? "AmxSplit"
                                      : "Fma";
                         });

/// Sizes around the tile boundaries of the kernel (64 keys per tile, 6 rows per register block,
/// 512 rows per work item).
constexpr Index kAwkwardLengths[] = {1, 2, 5, 6, 7, 63, 64, 65, 127, 129, 200};

TEST_P(AttendTest, MatchesReferenceOverRandomShapes) {
  std::mt19937 rng(2026);
  const std::pair<Index, Index> dims[] = {{64, 64}, {128, 128}, {192, 128}, {5, 7},
                                          {16, 48}, {33, 17}, {1, 1}, {96, 80}};
  const Mask masks[] = {Mask::none(), Mask::causal(), Mask::sliding_window(1),
                        Mask::sliding_window(17), Mask::sliding_window(100)};
  const std::pair<Index, Index> heads[] = {{1, 1}, {4, 4}, {4, 2}, {6, 1}, {5, 5}, {8, 2}, {12, 3}};
  auto pick = [&](auto& options) {
    return options[std::uniform_int_distribution<size_t>(0, std::size(options) - 1)(rng)];
  };
  for (int trial = 0; trial < 60; ++trial) {
    Case c{};
    c.batch = std::uniform_int_distribution<Index>(1, 3)(rng);
    c.q_len = pick(kAwkwardLengths);
    c.kv_len = pick(kAwkwardLengths);
    std::tie(c.num_heads, c.num_kv_heads) = pick(heads);
    std::tie(c.head_dim_k, c.head_dim_v) = pick(dims);
    c.mask = pick(masks);
    c.varlen = trial % 3 == 0;
    c.softcap = trial % 7 == 0 ? 2.0f : 0.0f;
    c.layout = static_cast<Layout>(trial % 3);
    expect_matches_reference(c, rng);
  }
}

TEST_P(AttendTest, MatchesReferenceForMlaAbsorbedDims) {
  std::mt19937 rng(7);
  expect_matches_reference({1, 3, 70, 4, 1, 576, 512, Mask::causal()}, rng);
}

TEST_P(AttendTest, EveryGroupSizeFromMhaToMqa) {
  std::mt19937 rng(11);
  for (Index num_kv_heads : {12, 6, 4, 3, 2, 1}) {
    expect_matches_reference({2, 33, 70, 12, num_kv_heads, 16, 16, Mask::causal()}, rng);
  }
}

TEST_P(AttendTest, DecodeShapesSingleAndFewQueriesOverLongerKeys) {
  std::mt19937 rng(13);
  for (Index q_len : {1, 2, 8}) {
    expect_matches_reference({2, q_len, 300, 8, 2, 64, 64, Mask::causal(), true}, rng);
    expect_matches_reference({1, q_len, 300, 8, 1, 128, 128, Mask::sliding_window(50)}, rng);
    // One kv head of 700 keys: a lone work item, which the kernel splits in two by default.
    expect_matches_reference({1, q_len, 700, 8, 1, 64, 64, Mask::causal()}, rng);
  }
}

TEST_P(AttendTest, LogitsOfTenThousandStayFiniteAndCorrect) {
  // Logits near +1e4 and -1e4 that f32 represents exactly (q = e0, k_j[0] = +-1e4 + j / 8), so the
  // only rounding left is the kernel's own: a naive exp would overflow to inf and give NaN.
  std::mt19937 rng(17);
  const Index kv_len = 150, dim = 16;
  Tensor q(1, 3, 2, dim, Layout::kBshd, rng), k(1, kv_len, 1, dim, Layout::kBshd, rng);
  Tensor v(1, kv_len, 1, dim, Layout::kBshd, rng), out(1, 3, 2, dim, Layout::kBshd, rng);
  std::fill(q.storage.begin(), q.storage.end(), 0.0f);
  std::fill(k.storage.begin(), k.storage.end(), 0.0f);
  for (Index i = 0; i < 3; ++i) {
    for (Index h = 0; h < 2; ++h) q.view(0, i, h, 0) = h == 0 ? 1.0f : -1.0f;
  }
  for (Index j = 0; j < kv_len; ++j) {
    k.view(0, j, 0, 0) = (j % 2 == 0 ? 1e4f : -1e4f) + static_cast<float>(j % 40) / 8.0f;
  }
  AttentionOptions options;
  options.scale = 1.0f;
  attend(q.view, k.view, v.view, out.view, options);
  const reference::Result expected = reference::attend(q.view, k.view, v.view, options);
  for (Index i = 0; i < 3; ++i) {
    for (Index h = 0; h < 2; ++h) {
      for (Index d = 0; d < dim; ++d) {
        ASSERT_TRUE(std::isfinite(out.view(0, i, h, d)));
        EXPECT_NEAR(out.view(0, i, h, d), expected.out[(i * 2 + h) * dim + d], 1e-5);
      }
    }
  }
}

TEST_P(AttendTest, RowsWithoutVisibleKeysGiveZerosAndNegativeInfinityLse) {
  std::mt19937 rng(19);
  // More queries than keys under a causal mask: the first queries sit at negative positions.
  Case causal{1, 80, 10, 2, 1, 8, 8, Mask::causal()};
  expect_matches_reference(causal, rng);
  // A sequence with no valid keys at all, next to one with some.
  Tensor q(2, 3, 2, 8, Layout::kBshd, rng), k(2, 5, 1, 8, Layout::kBshd, rng);
  Tensor v(2, 5, 1, 8, Layout::kBshd, rng), out(2, 3, 2, 8, Layout::kBshd, rng);
  std::vector<float> lse(2 * 2 * 3);
  AttentionOptions options;
  options.kv_lens = {0, 5};
  options.lse = LseView::bhs(lse.data(), 2, 2, 3);
  attend(q.view, k.view, v.view, out.view, options);
  for (Index i = 0; i < 3; ++i) {
    for (Index h = 0; h < 2; ++h) {
      EXPECT_EQ(options.lse(0, h, i), -std::numeric_limits<float>::infinity());
      EXPECT_TRUE(std::isfinite(options.lse(1, h, i)));
      for (Index d = 0; d < 8; ++d) EXPECT_EQ(out.view(0, i, h, d), 0.0f);
    }
  }
}

TEST_P(AttendTest, EmptyInputs) {
  std::mt19937 rng(23);
  // q_len = 0: nothing is written.
  Tensor q(1, 0, 2, 8, Layout::kBshd, rng), k(1, 4, 2, 8, Layout::kBshd, rng);
  Tensor v(1, 4, 2, 8, Layout::kBshd, rng), out(1, 0, 2, 8, Layout::kBshd, rng);
  EXPECT_NO_THROW(attend(q.view, k.view, v.view, out.view));
  // kv_len = 0: zero output, LSE -inf.
  Tensor q1(1, 3, 2, 8, Layout::kBshd, rng), k0(1, 0, 2, 8, Layout::kBshd, rng);
  Tensor v0(1, 0, 2, 8, Layout::kBshd, rng), out1(1, 3, 2, 8, Layout::kBshd, rng);
  std::vector<float> lse(6, 1.0f);
  AttentionOptions options;
  options.lse = LseView::bhs(lse.data(), 1, 2, 3);
  attend(q1.view, k0.view, v0.view, out1.view, options);
  for (float value : out1.storage) EXPECT_EQ(value, 0.0f);
  for (float value : lse) EXPECT_EQ(value, -std::numeric_limits<float>::infinity());
}

TEST_P(AttendTest, MergingTwoKeyHalvesByLseEqualsTheFullResult) {
  std::mt19937 rng(29);
  const Index batch = 2, q_len = 9, kv_len = 150, heads = 4, kv_heads = 2, dim = 32;
  Tensor q(batch, q_len, heads, dim, Layout::kBshd, rng);
  Tensor k(batch, kv_len, kv_heads, dim, Layout::kBshd, rng);
  Tensor v(batch, kv_len, kv_heads, dim, Layout::kBshd, rng);
  std::vector<float> out_full(batch * q_len * heads * dim), lse_full(batch * heads * q_len);
  auto out_view = [&](std::vector<float>& buffer) {
    return TensorView<float>::bshd(buffer.data(), batch, q_len, heads, dim);
  };
  AttentionOptions options;
  options.lse = LseView::bhs(lse_full.data(), batch, heads, q_len);
  attend(q.view, k.view, v.view, out_view(out_full), options);

  const Index split = 70;  // not a tile multiple
  auto keys = [&](const Tensor& t, Index begin, Index end) {
    TensorView<const float> part = t.view;
    part.data = t.view.row(0, begin, 0);
    part.seq = end - begin;
    return part;
  };
  std::vector<float> out_a(out_full.size()), out_b(out_full.size());
  std::vector<float> lse_a(lse_full.size()), lse_b(lse_full.size());
  options.lse = LseView::bhs(lse_a.data(), batch, heads, q_len);
  attend(q.view, keys(k, 0, split), keys(v, 0, split), out_view(out_a), options);
  options.lse = LseView::bhs(lse_b.data(), batch, heads, q_len);
  attend(q.view, keys(k, split, kv_len), keys(v, split, kv_len), out_view(out_b), options);
  merge_attention(out_view(out_a), LseView::bhs(lse_a.data(), batch, heads, q_len),
                  out_view(out_b), LseView::bhs(lse_b.data(), batch, heads, q_len),
                  out_view(out_a), LseView::bhs(lse_a.data(), batch, heads, q_len));
  for (size_t i = 0; i < out_full.size(); ++i) ASSERT_NEAR(out_a[i], out_full[i], 1e-6) << i;
  for (size_t i = 0; i < lse_full.size(); ++i) ASSERT_NEAR(lse_a[i], lse_full[i], 1e-5) << i;
}

TEST_P(AttendTest, ResultsAreBitIdenticalForEveryThreadCount) {
  std::mt19937 rng(31);
  const Index batch = 2, q_len = 300, kv_len = 300, heads = 8, kv_heads = 2, dim = 64;
  Tensor q(batch, q_len, heads, dim, Layout::kBshd, rng);
  Tensor k(batch, kv_len, kv_heads, dim, Layout::kBshd, rng);
  Tensor v(batch, kv_len, kv_heads, dim, Layout::kBshd, rng);
  std::vector<std::vector<float>> outs;
  for (int threads : {1, 2, 3, 4}) {
    std::vector<float> out(batch * q_len * heads * dim);
    AttentionOptions options;
    options.mask = Mask::causal();
    options.num_threads = threads;
    attend(q.view, k.view, v.view, TensorView<float>::bshd(out.data(), batch, q_len, heads, dim),
           options);
    outs.push_back(std::move(out));
  }
  for (size_t t = 1; t < outs.size(); ++t) {
    EXPECT_EQ(std::memcmp(outs[t].data(), outs[0].data(), outs[0].size() * sizeof(float)), 0)
        << "thread count index " << t;
  }
}

// Each thread keeps its scratch from call to call (attend.hpp: thread_scratch), unzeroed: a call
// must not see what an earlier call of another shape left there, not even the NaN and inf of
// non-finite inputs. The first results come from a new calling thread (with GCC's OpenMP, new
// worker threads too).
TEST_P(AttendTest, ResultsDoNotDependOnEarlierCallsOfOtherShapes) {
  std::mt19937 rng(37);
  // Decode over split keys (one kv head: four splits, in pairs whose first requests the second's
  // first tile), odd dims (padded columns): 6 heads read K and V in place (streamed), 20 heads
  // key-major tiles (padded rows, and the last tile partial).
  const Index kv_len = 4500, dim = 40;
  Tensor k(1, kv_len, 1, dim, Layout::kBshd, rng);
  Tensor v(1, kv_len, 1, dim, Layout::kBshd, rng);
  AttentionOptions options;
  options.mask = Mask::causal();
  options.num_threads = 2;
  std::vector<Tensor> queries;
  queries.reserve(2);  // views point into their storage: no copies
  for (Index heads : {6, 20}) queries.emplace_back(1, 1, heads, dim, Layout::kBshd, rng);
  const auto run = [&] {
    std::vector<std::vector<float>> outs;
    for (const Tensor& q : queries) {
      const Index heads = q.view.heads;
      std::vector<float> out(heads * dim, std::numeric_limits<float>::quiet_NaN());
      attend(q.view, k.view, v.view, TensorView<float>::bshd(out.data(), 1, 1, heads, dim),
             options);
      outs.push_back(std::move(out));
    }
    return outs;
  };
  std::vector<std::vector<float>> fresh;
  std::thread([&] { fresh = run(); }).join();
  const auto expect_fresh = [&](const std::string& after) {
    const std::vector<std::vector<float>> again = run();
    for (size_t i = 0; i < fresh.size(); ++i) {
      EXPECT_EQ(std::memcmp(again[i].data(), fresh[i].data(), fresh[i].size() * sizeof(float)), 0)
          << queries[i].view.heads << " heads, after " << after;
    }
  };
  // Larger calls of other shapes first: wider rows and dims, a sliding window, a softcap, and
  // logits of another scale (their scratch holds other values wherever the decode call looks).
  for (const Case& other : {Case{2, 130, 260, 8, 2, 96, 80, Mask::sliding_window(70), false, 30.0f,
                                 Layout::kBshd, 4.0f},
                            Case{1, 1, 3000, 8, 8, 128, 128, Mask::none()}}) {
    expect_matches_reference(other, rng, 2);
    expect_fresh(other.describe());
  }
  // Calls whose every input is NaN or inf leave non-finite values all over the scratch: prefill
  // (48 and 384 rows per kv head: key-major tiles) and decode (2 and 16 rows: streamed and
  // key-major) of wider dims.
  for (const float poison : {std::numeric_limits<float>::quiet_NaN(),
                             std::numeric_limits<float>::infinity()}) {
    for (const Index q_len : {Index{24}, Index{1}}) {
      for (const Index heads : {Index{4}, Index{32}}) {
        const Index poison_dim = 72, poison_keys = 200;
        std::vector<float> q_in(q_len * heads * poison_dim, poison);
        std::vector<float> kv_in(poison_keys * 2 * poison_dim, -poison);
        std::vector<float> out(q_len * heads * poison_dim);
        AttentionOptions poison_options;
        poison_options.num_threads = 2;
        attend(TensorView<const float>::bshd(q_in.data(), 1, q_len, heads, poison_dim),
               TensorView<const float>::bshd(kv_in.data(), 1, poison_keys, 2, poison_dim),
               TensorView<const float>::bshd(kv_in.data(), 1, poison_keys, 2, poison_dim),
               TensorView<float>::bshd(out.data(), 1, q_len, heads, poison_dim), poison_options);
        expect_fresh(std::to_string(poison) + " inputs, q_len " + std::to_string(q_len) + ", " +
                     std::to_string(heads) + " heads");
      }
    }
  }
}

TEST_P(AttendTest, DimMajorKeysAndValuesAcrossSeveralTiles) {
  // K and V stored [head_dim, kv_len] (dim stride = kv_len): every element is gathered.
  std::mt19937 rng(43);
  const Index kv_len = 150, dim = 32, heads = 2;
  std::vector<float> k = reference::random_vector(dim * kv_len, rng);
  std::vector<float> v = reference::random_vector(dim * kv_len, rng);
  Tensor q(1, 5, heads, dim, Layout::kBshd, rng), out(1, 5, heads, dim, Layout::kBshd, rng);
  const TensorView<const float> k_view{k.data(), 1, kv_len, 1, dim, 0, 1, 0, kv_len};
  const TensorView<const float> v_view{v.data(), 1, kv_len, 1, dim, 0, 1, 0, kv_len};
  AttentionOptions options;
  options.mask = Mask::causal();
  attend(q.view, k_view, v_view, out.view, options);
  const reference::Result expected = reference::attend(q.view, k_view, v_view, options);
  for (Index i = 0; i < 5; ++i) {
    for (Index h = 0; h < heads; ++h) {
      for (Index d = 0; d < dim; ++d) {
        ASSERT_NEAR(out.view(0, i, h, d), expected.out[(i * heads + h) * dim + d], 1e-5);
      }
    }
  }
}

TEST_P(AttendTest, ExtremeWindowAndSplitCountsAreSafe) {
  // Regressions: pos - window overflowed for a huge window; a huge split count allocated
  // partial results for every split.
  std::mt19937 rng(47);
  Tensor q(1, 9, 2, 16, Layout::kBshd, rng), k(1, 7, 1, 16, Layout::kBshd, rng);
  Tensor v(1, 7, 1, 16, Layout::kBshd, rng), out(1, 9, 2, 16, Layout::kBshd, rng);
  AttentionOptions options;
  options.mask = Mask::sliding_window(std::numeric_limits<Index>::max());
  options.kv_splits = Index{1} << 40;
  attend(q.view, k.view, v.view, out.view, options);
  options.kv_splits = 0;
  options.mask = Mask::causal();  // the same keys: the window covers everything
  std::vector<float> causal(out.storage.size());
  const TensorView<float> causal_view{causal.data(), 1, 9, 2, 16, 0, 32, 16, 1};
  attend(q.view, k.view, v.view, causal_view, options);
  for (Index i = 0; i < 9; ++i) {
    for (Index h = 0; h < 2; ++h) {
      for (Index d = 0; d < 16; ++d) EXPECT_NEAR(out.view(0, i, h, d), causal_view(0, i, h, d), 1e-6);
    }
  }
}

TEST_P(AttendTest, CustomScaleIsApplied) {
  std::mt19937 rng(37);
  Tensor q(1, 4, 2, 8, Layout::kBshd, rng), k(1, 9, 2, 8, Layout::kBshd, rng);
  Tensor v(1, 9, 2, 8, Layout::kBshd, rng), out(1, 4, 2, 8, Layout::kBshd, rng);
  AttentionOptions options;
  options.scale = 0.7f;
  attend(q.view, k.view, v.view, out.view, options);
  const reference::Result expected = reference::attend(q.view, k.view, v.view, options);
  for (Index i = 0; i < 4; ++i) {
    for (Index h = 0; h < 2; ++h) {
      for (Index d = 0; d < 8; ++d) {
        EXPECT_NEAR(out.view(0, i, h, d), expected.out[(i * 2 + h) * 8 + d], 1e-5);
      }
    }
  }
}

/// Expects attend to throw headroom::Error containing `message` and to leave `out` untouched.
void expect_rejected(const TensorView<float>& q, const TensorView<float>& k,
                     const TensorView<float>& v, const TensorView<float>& out,
                     const AttentionOptions& options, const std::string& message) {
  const std::vector<float> before(out.data, out.data + std::max<Index>(out.size(), 0));
  try {
    attend(q, k, v, out, options);
    ADD_FAILURE() << "no error for: " << message;
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find(message), std::string::npos)
        << "got: " << error.what() << "\nwanted: " << message;
  }
  EXPECT_EQ(std::vector<float>(out.data, out.data + std::max<Index>(out.size(), 0)), before);
}

TEST_P(AttendTest, BadArgumentsThrowErrorsNamingThem) {
  std::mt19937 rng(41);
  Tensor q(2, 4, 6, 8, Layout::kBshd, rng), k(2, 5, 3, 8, Layout::kBshd, rng);
  Tensor v(2, 5, 3, 8, Layout::kBshd, rng), out(2, 4, 6, 8, Layout::kBshd, rng);
  const AttentionOptions ok;
  {
    Tensor k5(2, 5, 4, 8, Layout::kBshd, rng), v5(2, 5, 4, 8, Layout::kBshd, rng);
    expect_rejected(q.view, k5.view, v5.view, out.view, ok,
                    "headroom::attend: q.heads (6) is not a multiple of k.heads (4)");
  }
  {
    Tensor k7(2, 5, 3, 7, Layout::kBshd, rng);
    expect_rejected(q.view, k7.view, v.view, out.view, ok, "k.dim (7) differs from q.dim (8)");
  }
  {
    Tensor v6(2, 6, 3, 8, Layout::kBshd, rng);
    expect_rejected(q.view, k.view, v6.view, out.view, ok, "v.seq (6) differs from k.seq (5)");
  }
  {
    Tensor out4(2, 4, 6, 4, Layout::kBshd, rng);
    expect_rejected(q.view, k.view, v.view, out4.view, ok, "out.dim (4) differs from v.dim (8)");
  }
  {
    Tensor k1(1, 5, 3, 8, Layout::kBshd, rng);
    expect_rejected(q.view, k1.view, v.view, out.view, ok, "v.batch (2) differs from k.batch (1)");
  }
  TensorView<float> negative = q.view;
  negative.seq = -1;
  expect_rejected(negative, k.view, v.view, out.view, ok, "q.seq (-1) is negative");
  TensorView<float> no_heads = k.view;
  no_heads.heads = 0;
  expect_rejected(q.view, no_heads, v.view, out.view, ok, "k.heads (0) must be positive");
  TensorView<float> no_dim = q.view;
  no_dim.dim = 0;
  expect_rejected(no_dim, k.view, v.view, out.view, ok, "q.dim (0) must be positive");
  TensorView<float> null_v = v.view;
  null_v.data = nullptr;
  expect_rejected(q.view, k.view, null_v, out.view, ok, "v.data is null but the view has 240");
  TensorView<float> aliasing = out.view;
  aliasing.seq_stride = 0;
  expect_rejected(q.view, k.view, v.view, aliasing, ok, "out.seq_stride is 0");

  AttentionOptions bad_window;
  bad_window.mask = Mask::sliding_window(0);
  expect_rejected(q.view, k.view, v.view, out.view, bad_window, "mask.window (0) must be at least 1");
  AttentionOptions bad_lens;
  bad_lens.kv_lens = {5, 6};
  expect_rejected(q.view, k.view, v.view, out.view, bad_lens,
                  "kv_lens[1] (6) is outside [0, k.seq = 5]");
  bad_lens.kv_lens = {5};
  expect_rejected(q.view, k.view, v.view, out.view, bad_lens,
                  "kv_lens.size() (1) differs from the batch (2)");
  AttentionOptions bad_scale;
  bad_scale.scale = std::numeric_limits<float>::quiet_NaN();
  expect_rejected(q.view, k.view, v.view, out.view, bad_scale, "scale (nan) must be finite");
  AttentionOptions bad_softcap;
  bad_softcap.softcap = -1.0f;
  expect_rejected(q.view, k.view, v.view, out.view, bad_softcap, "softcap (-1) must be finite");
  AttentionOptions bad_threads;
  bad_threads.num_threads = -2;
  expect_rejected(q.view, k.view, v.view, out.view, bad_threads, "num_threads (-2) must be >= 0");
  AttentionOptions bad_lse;
  std::vector<float> lse(100);
  bad_lse.lse = LseView::bhs(lse.data(), 2, 6, 3);
  expect_rejected(q.view, k.view, v.view, out.view, bad_lse,
                  "lse is [2, 6, 3] but must be [batch 2, heads 6, q_len 4]");
}

TEST(AttendLimitsTest, BroadcastKeysOfAnyLengthWithShortKvLensAreSafe) {
  // Regression: the split count rounded kv_len up to whole tiles and overflowed for a broadcast
  // (seq_stride 0) view of INT64_MAX keys, of which kv_lens lets one be read.
  const std::vector<float> q = {1}, k = {1}, v = {3};
  std::vector<float> out(1);
  const Index keys = std::numeric_limits<Index>::max();
  const TensorView<const float> k_view{k.data(), 1, keys, 1, 1, 0, 0, 0, 1};
  const TensorView<const float> v_view{v.data(), 1, keys, 1, 1, 0, 0, 0, 1};
  AttentionOptions options;
  options.kv_lens = {1};
  attend(TensorView<const float>::bshd(q.data(), 1, 1, 1, 1), k_view, v_view,
         TensorView<float>::bshd(out.data(), 1, 1, 1, 1), options);
  EXPECT_EQ(out, v);  // one key: its value, exactly
}

TEST(SplitCountTest, DefaultSplitsArePowersOfTwoOfEnoughKeysAndGiveALoneItemTwo) {
  using detail::default_num_splits;
  for (Index groups = 1; groups <= 12; ++groups) {
    for (Index kv_len = 0; kv_len <= 20000; kv_len += 37) {
      SCOPED_TRACE("groups " + std::to_string(groups) + " kv_len " + std::to_string(kv_len));
      const Index splits = default_num_splits(groups, kv_len);
      ASSERT_GE(splits, 1);
      EXPECT_EQ(splits & (splits - 1), 0) << splits << " is not a power of two";
      // Splits only where there are fewer items than kSplitBelowItems, at most as many as make
      // up that many items (rounded up)...
      const Index most = groups >= detail::kSplitBelowItems
                             ? 1
                             : (detail::kSplitBelowItems + groups - 1) / groups;
      EXPECT_LE(splits, most);
      if (splits == 1) continue;
      // ...and each split holds kMinKeysPerSplit keys, or half a lone item of at least twice
      // kMinKeysPerSecondSplit.
      if (splits == 2 && groups == 1) {
        EXPECT_GE(kv_len, 2 * detail::kMinKeysPerSecondSplit);
      } else {
        EXPECT_GE(kv_len / splits, detail::kMinKeysPerSplit);
      }
    }
  }
  EXPECT_EQ(default_num_splits(1, 2 * detail::kMinKeysPerSecondSplit - 1), 1);
  EXPECT_EQ(default_num_splits(1, 2 * detail::kMinKeysPerSecondSplit), 2);
  EXPECT_EQ(default_num_splits(1, 3 * detail::kMinKeysPerSplit), 2);  // not 3: 2 threads, 2 rounds
  EXPECT_EQ(default_num_splits(1, 8 * detail::kMinKeysPerSplit), 8);
  EXPECT_EQ(default_num_splits(2, 1 << 20), 4);
  EXPECT_EQ(default_num_splits(3, 1 << 20), 2);  // not 3
  EXPECT_EQ(default_num_splits(detail::kSplitBelowItems, 1 << 20), 1);
}

TEST(MergeTest, RejectsAnLseOutputWhoseRowsAlias) {
  // Regression: merge_attention checked `out` for aliasing rows but not `lse`.
  const std::vector<float> a = {1, 2}, b = {3, 4}, lse_a = {0, 5}, lse_b = {0, 1};
  std::vector<float> out(2), lse(2, -1.0f);
  const LseView aliased{lse.data(), 1, 1, 2, 2, 2, 0};  // seq_stride 0 over 2 rows
  headroom::testing::expect_error(
      [&] {
        merge_attention(TensorView<const float>::bshd(a.data(), 1, 2, 1, 1),
                        LseView::bhs(const_cast<float*>(lse_a.data()), 1, 1, 2),
                        TensorView<const float>::bshd(b.data(), 1, 2, 1, 1),
                        LseView::bhs(const_cast<float*>(lse_b.data()), 1, 1, 2),
                        TensorView<float>::bshd(out.data(), 1, 2, 1, 1), aliased);
      },
      "headroom::merge_attention: lse has a zero stride on an axis longer than one");
  EXPECT_EQ(lse, std::vector<float>(2, -1.0f));
}

TEST(CostTest, VisiblePairsCountEveryMaskAndRejectBadArguments) {
  EXPECT_EQ(visible_pairs(Mask::none(), 3, 5), 15.0);
  EXPECT_EQ(visible_pairs(Mask::causal(), 4, 4), 10.0);                // 1 + 2 + 3 + 4
  EXPECT_EQ(visible_pairs(Mask::sliding_window(2), 4, 4), 7.0);        // 1 + 2 + 2 + 2
  EXPECT_EQ(visible_pairs(Mask::causal(), 3, 1), 1.0);                 // two queries before key 0
  EXPECT_EQ(visible_pairs(Mask::sliding_window(std::numeric_limits<Index>::max()), 4, 4), 10.0);
  EXPECT_EQ(attention_flops(1, 2, 4, 4, 8, 4, Mask::causal()), 2.0 * 12 * 10 * 2);
  using headroom::testing::expect_error;
  // Regression: a negative window overflowed pos - window + 1.
  expect_error([] { visible_pairs(Mask::sliding_window(std::numeric_limits<Index>::min()), 1, 1); },
               "headroom::visible_pairs: mask.window (-9223372036854775808) must be >= 1");
  expect_error([] { visible_pairs(Mask::causal(), -1, 1); }, "q_len (-1) is negative");
  expect_error([] { visible_pairs(Mask::causal(), 1, -1); }, "kv_len (-1) is negative");
}

}  // namespace
}  // namespace headroom
