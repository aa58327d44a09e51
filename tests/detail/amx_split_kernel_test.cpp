// SPDX-License-Identifier: MIT
// Tests the AMX split products: the three-part split of f32 values and both product layouts
// against sums in double.
#include "headroom/detail/amx_split_kernel.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <vector>

namespace headroom::detail {
namespace {

#if HEADROOM_HAS_AMX

using Bits = std::vector<Bf16Bits, Eigen::aligned_allocator<Bf16Bits>>;

std::uint32_t bits_of(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

/// Appends random values of both signs with exponents in [first, last] until `values` holds 4096.
void add_random_values(int first, int last, std::mt19937& rng, std::vector<float>& values) {
  std::uniform_real_distribution<float> mantissa(1.0f, 2.0f);
  std::uniform_int_distribution<int> exponent(first, last);
  while (values.size() < 4096) {
    values.push_back((rng() % 2 == 0 ? 1.0f : -1.0f) * std::ldexp(mantissa(rng), exponent(rng)));
  }
}

/// Splits `values` (a multiple of 16) and checks that every part has a zero lower half (else a
/// pair unit's odd value would spill into its even neighbour); then check(x, hi, mid, lo).
template <class Check>
void check_splits(const std::vector<float>& values, const Check& check) {
  ASSERT_EQ(values.size() % 16, 0u);
  for (size_t i = 0; i < values.size(); i += 16) {
    const SplitPacket parts = split_bf16x3(_mm512_loadu_ps(values.data() + i));
    alignas(64) float hi[16], mid[16], lo[16];
    _mm512_store_ps(hi, parts.hi);
    _mm512_store_ps(mid, parts.mid);
    _mm512_store_ps(lo, parts.lo);
    for (int j = 0; j < 16; ++j) {
      const float x = values[i + j];
      EXPECT_EQ(bits_of(hi[j]) & 0xFFFFu, 0u) << x;
      EXPECT_EQ(bits_of(mid[j]) & 0xFFFFu, 0u) << x;
      EXPECT_EQ(bits_of(lo[j]) & 0xFFFFu, 0u) << x;
      check(x, hi[j], mid[j], lo[j]);
    }
  }
}

TEST(AmxSplitKernelTest, PartsAreBf16ValuesThatSumToTheInputExactly) {
  // Values over the whole normal f32 range, both signs, the largest finite value included: the
  // truncated hi part never rounds past it.
  std::mt19937 rng(41);
  std::vector<float> values = {std::numeric_limits<float>::max(),
                               -std::numeric_limits<float>::max(),
                               1.0f,
                               -0.0f,
                               0.0f,
                               1.0f + 0x1p-23f,
                               3.0f - 0x1p-22f};
  add_random_values(-100, 127, rng, values);
  check_splits(values, [](float x, float hi, float mid, float lo) {
    const double sum = static_cast<double>(hi) + mid + lo;
    EXPECT_EQ(sum, static_cast<double>(x)) << x;
    // hi keeps 8 significant bits, mid the next 8: what is left weighs at most 2^-16 of x.
    EXPECT_LE(std::abs(static_cast<double>(lo)), 0x1p-16 * std::abs(static_cast<double>(x)));
  });
  // Down to the subnormals: the parts stay bf16 values, and what the flush loses is below 2^-126.
  std::vector<float> tiny = {0x1p-112f + 0x1p-135f, std::numeric_limits<float>::denorm_min()};
  add_random_values(-149, -100, rng, tiny);
  check_splits(tiny, [](float x, float hi, float mid, float lo) {
    const double sum = static_cast<double>(hi) + mid + lo;
    EXPECT_LE(std::abs(sum - static_cast<double>(x)), 0x1p-126) << x;
  });
}

/// Largest |C - exact| over the elements, relative to sum |a_i b_i| of each element's terms.
struct ProductError {
  double worst_relative = 0.0;
};

/// Checks C = A.B (and C += A.B over a preset C) through amx_split_product for A [rows, depth]
/// row-major and B given as `cols` key rows of length depth (scores: B = K^T, packed by
/// pack_split_key_pairs) or as depth value rows of length cols (output: packed by
/// pack_split_value_pairs), against double.
void check_products(Index rows, Index depth, Index cols, Index count, bool key_layout,
                    std::mt19937& rng, ProductError& error) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  const Index rows_pad = (rows + kAmxRows - 1) / kAmxRows * kAmxRows;
  std::vector<float> a(static_cast<size_t>(rows_pad * depth), 0.0f);
  for (Index i = 0; i < rows * depth; ++i) a[i] = dist(rng) * (i % 7 == 0 ? 1e-3f : 1.0f);
  // key_layout: `count` key rows [depth] (zero past count, up to cols); else `count` value rows
  // [cols] (zero past count, up to depth).
  const Index b_rows = key_layout ? cols : depth, b_len = key_layout ? depth : cols;
  std::vector<float> b(static_cast<size_t>(b_rows * b_len));
  for (float& x : b) x = dist(rng);
  std::vector<const float*> b_at(static_cast<size_t>(b_rows));
  for (Index r = 0; r < b_rows; ++r) b_at[r] = b.data() + r * b_len;
  const auto b_elem = [&](Index d, Index n) {  // B[d][n], zero where packing zeroes it
    if (key_layout) return n < count ? static_cast<double>(b[n * b_len + d]) : 0.0;
    return d < count ? static_cast<double>(b[d * b_len + n]) : 0.0;
  };

  Bits a_parts(static_cast<size_t>(kSplitParts * rows_pad * depth));
  Bits b_parts(static_cast<size_t>(kSplitParts * depth * cols), Bf16Bits{0x7FC0});  // NaN fill
  pack_split_rows(a.data(), depth, 0, rows_pad, depth, a_parts.data(), depth, rows_pad * depth);
  if (key_layout) {
    ASSERT_EQ(cols, 64);
    pack_split_key_pairs<64>(b_at.data(), count, depth, b_parts.data(), depth * cols);
  } else {
    pack_split_value_pairs(b_at.data(), count, depth, cols, b_parts.data(), depth * cols);
  }
  std::vector<float> preset(static_cast<size_t>(rows_pad * cols));
  for (float& x : preset) x = dist(rng);
  for (bool accumulate : {false, true}) {
    std::vector<float> c = preset;
    configure_amx_tiles();
    amx_split_product(a_parts.data(), rows_pad * depth, depth, b_parts.data(), depth * cols,
                      2 * cols, depth, cols, 0, rows_pad / kAmxRows, c.data(), cols, accumulate,
                      nullptr);
    release_amx_tiles();
    for (Index r = 0; r < rows; ++r) {
      for (Index n = 0; n < cols; ++n) {
        double exact = accumulate ? preset[r * cols + n] : 0.0, magnitude = std::abs(exact);
        for (Index d = 0; d < depth; ++d) {
          const double term = static_cast<double>(a[r * depth + d]) * b_elem(d, n);
          exact += term;
          magnitude += std::abs(term);
        }
        const double got = c[r * cols + n];
        ASSERT_TRUE(std::isfinite(got)) << "row " << r << " col " << n;
        const double relative = magnitude > 0.0 ? std::abs(got - exact) / magnitude : 0.0;
        error.worst_relative = std::max(error.worst_relative, relative);
      }
    }
  }
}

TEST(AmxSplitKernelTest, ProductsMatchDoubleWithinF32Rounding) {
  if (!amx_available()) GTEST_SKIP() << "no AMX-BF16 here (processor or OS permission)";
  std::mt19937 rng(43);
  ProductError error;
  // Scores: Q rows by K^T, keys past `count` zero; an odd count of row blocks (the last one
  // alone), dims of one and several depth steps.
  for (Index count : {64, 37, 1}) {
    for (Index dk : {32, 128, 576}) check_products(48, dk, 64, count, true, rng, error);
  }
  // Output: P rows by V in key pairs, keys past `count` zero, depth of one or two steps.
  for (Index count : {64, 33, 2}) {
    for (Index dv : {32, 128, 512}) {
      check_products(40, 64, dv, count, false, rng, error);
      check_products(16, 32, dv, std::min<Index>(count, 32), false, rng, error);
    }
  }
  // The six part products leave below 2^-21.9 of each term's size (amx_split_kernel.hpp) and
  // f32 accumulation a few roundings more; one bf16 product would leave 2^-9, five (no lo.hi)
  // 2^-16.
  std::ostringstream worst;
  worst << std::scientific << error.worst_relative;
  RecordProperty("worst_relative_error", worst.str());
  EXPECT_LT(error.worst_relative, 0x1p-20) << error.worst_relative;
}

#else

TEST(AmxSplitKernelTest, NeedsAnAmxBuild) { GTEST_SKIP() << "this build has no AMX-BF16"; }

#endif  // HEADROOM_HAS_AMX

}  // namespace
}  // namespace headroom::detail
