// SPDX-License-Identifier: MIT
// Tests headroom::attend with bf16 queries, keys and values (the AMX tile products and the
// AVX512_BF16 pair products where the build and processor have them, and the f32 conversions)
// against the double-precision reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "headroom/attention/attend.hpp"
#include "headroom/cache/kv_cache.hpp"
#include "headroom/cache/paged_kv_cache.hpp"
#include "reference.hpp"

namespace headroom {
namespace {

using Eigen::bfloat16;

/// bf16 values and the f32 copy of exactly those values, which the reference reads.
struct Bf16Tensor {
  std::vector<bfloat16> values;
  std::vector<float> exact;
  Index batch, seq, heads, dim;
  bool heads_first;  // [batch, heads, seq, dim] storage instead of [batch, seq, heads, dim]

  Bf16Tensor(Index b, Index s, Index h, Index d, bool bhsd, std::mt19937& rng)
      : batch(b), seq(s), heads(h), dim(d), heads_first(bhsd) {
    exact = reference::random_vector(b * s * h * d, rng, 1.0f);
    for (float& x : exact) {
      values.push_back(bfloat16(x));
      x = static_cast<float>(values.back());
    }
  }
  template <class T>
  TensorView<const T> view(const std::vector<T>& data) const {
    return heads_first ? TensorView<const T>::bhsd(data.data(), batch, heads, seq, dim)
                       : TensorView<const T>::bshd(data.data(), batch, seq, heads, dim);
  }
};

/// The pair and AMX products round each probability to bf16 (relative error <= 2^-9) before P.V, and
/// normalise by the sum of the unrounded ones: every output element is within 2^-9 max|v| of the
/// exact result, plus f32 accumulation (~1e-6). max|v| <= 1 here. The logits are exact products
/// of bf16 values summed in f32, so the LSE keeps the f32 tolerance.
constexpr double kOutputTolerance = 1.0 / 512 + 1e-5;
constexpr double kLseTolerance = 1e-5;

void expect_near_reference(const reference::Result& expected, const std::vector<float>& out,
                           const std::vector<float>& lse, Index batch, Index q_len,
                           Index num_heads, Index dv) {
  for (Index b = 0; b < batch; ++b) {
    for (Index i = 0; i < q_len; ++i) {
      for (Index h = 0; h < num_heads; ++h) {
        const Index row = (b * q_len + i) * num_heads + h;
        for (Index d = 0; d < dv; ++d) {
          ASSERT_NEAR(out[row * dv + d], expected.out[row * dv + d], kOutputTolerance)
              << "b " << b << " i " << i << " h " << h << " d " << d;
        }
        const Index lse_at = (b * num_heads + h) * q_len + i;
        const double want = expected.lse[lse_at];
        if (std::isinf(want)) {
          ASSERT_EQ(lse[lse_at], -std::numeric_limits<float>::infinity());
        } else {
          ASSERT_NEAR(lse[lse_at], want, kLseTolerance * std::max(1.0, std::abs(want)))
              << "b " << b << " i " << i << " h " << h;
        }
      }
    }
  }
}

/// Each test runs with the pair products forced on (where the build has them: elsewhere that run
/// converts), with the AMX products (skipped where the build, processor or OS lacks them) and
/// with conversions to f32, whichever this processor would choose.
class AttendBf16Test : public ::testing::TestWithParam<detail::Bf16PairProducts> {
 protected:
  void SetUp() override {
    if (GetParam() == detail::Bf16PairProducts::kAmxTiles && !detail::amx_available()) {
      GTEST_SKIP() << "no AMX-BF16 here (build, processor or OS permission)";
    }
    detail::bf16_pair_products() = GetParam();
  }
  void TearDown() override {
    detail::bf16_pair_products() = detail::Bf16PairProducts::kWhereFaster;
  }
};

INSTANTIATE_TEST_SUITE_P(Products, AttendBf16Test,
                         ::testing::Values(detail::Bf16PairProducts::kAlways,
                                           detail::Bf16PairProducts::kAmxTiles,
                                           detail::Bf16PairProducts::kNever),
                         [](const auto& param_info) {
                           switch (param_info.param) {
                             case detail::Bf16PairProducts::kAlways:
                               return "Pairs";
                             case detail::Bf16PairProducts::kAmxTiles:
                               return "Amx";
                             default:
                               return "Converted";
                           }
                         });

TEST_P(AttendBf16Test, DenseMatchesReferenceOverRandomShapes) {
  std::mt19937 rng(77);
  // 64 / 128 / 96 / 32 take the pair or AMX products; 16 and 40 the conversions.
  const std::pair<Index, Index> dims[] = {{64, 64}, {128, 128}, {96, 32}, {32, 96}, {16, 16},
                                          {40, 64}};
  const Index lengths[] = {1, 2, 7, 63, 64, 65, 129, 200, 300};
  const Mask masks[] = {Mask::none(), Mask::causal(), Mask::sliding_window(1),
                        Mask::sliding_window(50)};
  const std::pair<Index, Index> heads[] = {{1, 1}, {4, 4}, {8, 2}, {6, 1}, {32, 8}};
  auto pick = [&](auto& options) {
    return options[std::uniform_int_distribution<size_t>(0, std::size(options) - 1)(rng)];
  };
  for (int trial = 0; trial < 40; ++trial) {
    const Index batch = std::uniform_int_distribution<Index>(1, 2)(rng);
    const Index q_len = pick(lengths), kv_len = std::max(q_len, pick(lengths));
    const auto [num_heads, num_kv_heads] = pick(heads);
    const auto [dk, dv] = pick(dims);
    const bool bhsd = trial % 2 == 1;
    AttentionOptions options;
    options.mask = pick(masks);
    options.softcap = trial % 5 == 0 ? 3.0f : 0.0f;
    options.num_threads = 1 + trial % 2;
    if (trial % 4 == 0) {
      for (Index b = 0; b < batch; ++b) {
        options.kv_lens.push_back(std::uniform_int_distribution<Index>(0, kv_len)(rng));
      }
    }
    SCOPED_TRACE("trial " + std::to_string(trial) + " q_len " + std::to_string(q_len) +
                 " kv_len " + std::to_string(kv_len) + " heads " + std::to_string(num_heads) + "/" +
                 std::to_string(num_kv_heads) + " dims " + std::to_string(dk) + "/" +
                 std::to_string(dv));
    const Bf16Tensor q(batch, q_len, num_heads, dk, bhsd, rng);
    const Bf16Tensor k(batch, kv_len, num_kv_heads, dk, bhsd, rng);
    const Bf16Tensor v(batch, kv_len, num_kv_heads, dv, bhsd, rng);
    std::vector<float> out(batch * q_len * num_heads * dv), lse(batch * num_heads * q_len);
    options.lse = LseView::bhs(lse.data(), batch, num_heads, q_len);
    attend(q.view(q.values), k.view(k.values), v.view(v.values),
           TensorView<float>::bshd(out.data(), batch, q_len, num_heads, dv), options);
    const reference::Result expected =
        reference::attend(q.view(q.exact), k.view(k.exact), v.view(v.exact), options);
    expect_near_reference(expected, out, lse, batch, q_len, num_heads, dv);
  }
}

/// Each thread keeps its scratch from call to call, unzeroed (attend.hpp: TileScratch::prepare):
/// the NaN and inf that calls of non-finite inputs leave in the pair and tile buffers must not
/// reach a later call. Shapes with partial tiles and padded rows: prefill and decode.
TEST_P(AttendBf16Test, ResultsDoNotDependOnEarlierCallsOfNonFiniteInputs) {
  std::mt19937 rng(79);
  struct Shape {
    Index q_len, kv_len, num_heads, num_kv_heads, dim;
  };
  const Shape shapes[] = {{37, 100, 8, 2, 64}, {1, 700, 20, 1, 64}};
  const auto run = [&](const Shape& shape, const Bf16Tensor& q, const Bf16Tensor& k,
                       const Bf16Tensor& v) {
    std::vector<float> out(shape.q_len * shape.num_heads * shape.dim);
    AttentionOptions options;
    options.mask = Mask::causal();
    options.num_threads = 2;
    attend(q.view(q.values), k.view(k.values), v.view(v.values),
           TensorView<float>::bshd(out.data(), 1, shape.q_len, shape.num_heads, shape.dim),
           options);
    return out;
  };
  for (const Shape& shape : shapes) {
    const Bf16Tensor q(1, shape.q_len, shape.num_heads, shape.dim, false, rng);
    const Bf16Tensor k(1, shape.kv_len, shape.num_kv_heads, shape.dim, false, rng);
    const Bf16Tensor v(1, shape.kv_len, shape.num_kv_heads, shape.dim, false, rng);
    const std::vector<float> fresh = run(shape, q, k, v);
    for (const float poison : {std::numeric_limits<float>::quiet_NaN(),
                               std::numeric_limits<float>::infinity()}) {
      // A larger call, every input non-finite: 48 query rows of 128 dims per kv head.
      const Shape wide{24, 300, 4, 2, 128};
      Bf16Tensor q_bad(1, wide.q_len, wide.num_heads, wide.dim, false, rng);
      Bf16Tensor kv_bad(1, wide.kv_len, wide.num_kv_heads, wide.dim, false, rng);
      std::fill(q_bad.values.begin(), q_bad.values.end(), bfloat16(poison));
      std::fill(kv_bad.values.begin(), kv_bad.values.end(), bfloat16(-poison));
      run(wide, q_bad, kv_bad, kv_bad);
      const std::vector<float> again = run(shape, q, k, v);
      EXPECT_EQ(std::memcmp(again.data(), fresh.data(), fresh.size() * sizeof(float)), 0)
          << "q_len " << shape.q_len << " after " << poison << " inputs";
    }
  }
}

/// Prefill from bf16 queries over bf16 caches (the pair products read the cache rows in place)
/// and over an f32 cache (converted), contiguous and paged.
TEST_P(AttendBf16Test, CachesMatchReference) {
  std::mt19937 rng(78);
  const Index batch = 2, kv_len = 150, q_len = 150, num_heads = 8, num_kv_heads = 2, dim = 64;
  const Bf16Tensor q(batch, q_len, num_heads, dim, false, rng);
  const Bf16Tensor k(batch, kv_len, num_kv_heads, dim, false, rng);
  const Bf16Tensor v(batch, kv_len, num_kv_heads, dim, false, rng);
  AttentionOptions options;
  options.mask = Mask::causal();
  std::vector<float> lse(batch * num_heads * q_len);
  options.lse = LseView::bhs(lse.data(), batch, num_heads, q_len);
  const reference::Result expected =
      reference::attend(q.view(q.exact), k.view(k.exact), v.view(v.exact), options);
  const auto out_view = [&](std::vector<float>& out) {
    return TensorView<float>::bshd(out.data(), batch, q_len, num_heads, dim);
  };

  KvCacheConfig config;
  config.num_sequences = batch;
  config.capacity = kv_len;
  config.num_kv_heads = num_kv_heads;
  config.head_dim_k = config.head_dim_v = dim;
  const auto check_cache = [&](auto& cache, const auto& ids) {
    cache.append(ids, k.view(k.exact), v.view(v.exact));
    std::vector<float> out(batch * q_len * num_heads * dim);
    attend(q.view(q.values), cache.view(ids), out_view(out), options);
    expect_near_reference(expected, out, lse, batch, q_len, num_heads, dim);
  };
  {
    SCOPED_TRACE("KvCache<bfloat16>");
    KvCache<bfloat16> cache(config);
    check_cache(cache, std::vector<Index>{0, 1});
  }
  {
    SCOPED_TRACE("KvCache<float>");
    KvCache<float> cache(config);
    check_cache(cache, std::vector<Index>{0, 1});
  }
  {
    SCOPED_TRACE("PagedKvCache<bfloat16>");
    PagedKvCacheConfig paged;
    paged.num_blocks = 32;
    paged.block_size = 16;
    paged.num_kv_heads = num_kv_heads;
    paged.head_dim_k = paged.head_dim_v = dim;
    PagedKvCache<bfloat16> cache(paged);
    const std::vector<Index> ids{cache.add_sequence(), cache.add_sequence()};
    check_cache(cache, ids);
  }
}

}  // namespace
}  // namespace headroom
