// SPDX-License-Identifier: MIT
// Tests dot_scores, the decode-side scores of a few query rows against K rows read in place.
#include "headroom/detail/stream_kernel.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace headroom::detail {
namespace {

/// Checks dot_scores<kRows> for `count` keys of type T against dot products in double.
template <int kRows, class T>
void check_dot_scores(Index count, Index dk, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float, Eigen::aligned_allocator<float>> q(static_cast<size_t>(kRows * dk));
  for (float& x : q) x = dist(rng);
  std::vector<T> keys(static_cast<size_t>(count * dk));
  for (T& x : keys) {
    if constexpr (std::is_same_v<T, std::int8_t>) {
      x = static_cast<std::int8_t>(std::lround(127.0f * dist(rng)));
    } else {
      x = static_cast<T>(dist(rng));
    }
  }
  std::vector<const T*> rows(static_cast<size_t>(count));
  std::vector<float> scales(static_cast<size_t>(count));
  for (Index c = 0; c < count; ++c) {
    rows[c] = keys.data() + c * dk;
    scales[c] = 0.5f + dist(rng);
  }
  const Index stride = count + 3;  // rows of scores apart by more than count
  std::vector<float> scores(static_cast<size_t>(kRows * stride), -7.0f);
  dot_scores<kRows>(q.data(), dk, rows.data(), scales.data(), count,
                    static_cast<const T* const*>(nullptr), scores.data(), stride);
  for (int r = 0; r < kRows; ++r) {
    for (Index c = 0; c < count; ++c) {
      double exact = 0.0, magnitude = 0.0;
      for (Index d = 0; d < dk; ++d) {
        const double term = static_cast<double>(q[r * dk + d]) * static_cast<double>(keys[c * dk + d]);
        exact += term;
        magnitude += std::abs(term);
      }
      exact *= scales[c];
      // f32 sums of dk products: each rounding is at most 2^-24 of a partial sum no larger than
      // the sum of |terms|, and there are at most dk of them.
      const double tolerance = 1e-6 + static_cast<double>(dk) * 0x1p-24 * magnitude * std::abs(scales[c]);
      EXPECT_NEAR(scores[r * stride + c], exact, tolerance)
          << "rows " << kRows << ", key " << c << " of " << count << ", row " << r;
    }
    for (Index c = count; c < stride; ++c) {
      EXPECT_EQ(scores[r * stride + c], -7.0f) << "wrote past the keys of row " << r;
    }
  }
}

template <class T>
void check_all_row_counts(std::mt19937& rng) {
  for (Index count : {1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 33, 64}) {
    for (Index dk : {Index{kPacketSize}, Index{128}}) {
      check_dot_scores<1, T>(count, dk, rng);
      check_dot_scores<2, T>(count, dk, rng);
      check_dot_scores<3, T>(count, dk, rng);
      check_dot_scores<4, T>(count, dk, rng);
      check_dot_scores<5, T>(count, dk, rng);
      check_dot_scores<6, T>(count, dk, rng);
    }
  }
}

TEST(DotScoresTest, MatchesDoubleDotProductsForEveryRowCountAndKeyCount) {
  std::mt19937 rng(11);
  check_all_row_counts<float>(rng);
}

TEST(DotScoresTest, FoldsInt8ScalesAndConvertsBf16Keys) {
  std::mt19937 rng(12);
  check_all_row_counts<std::int8_t>(rng);
  check_all_row_counts<Eigen::bfloat16>(rng);
}

}  // namespace
}  // namespace headroom::detail
