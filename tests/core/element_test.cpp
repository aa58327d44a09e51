// SPDX-License-Identifier: MIT
// Tests the conversions of storage elements to f32: to_float against one element at a time.
#include "headroom/core/element.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace headroom::detail {
namespace {

/// Checks to_float over every count up to three AVX-512 packets and a tail, into a destination
/// one float off any alignment: each element is scale * float(src[i]), bit for bit, and nothing
/// past `count` is written.
template <class T>
void check_to_float(float scale) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-3.0f, 3.0f);
  constexpr Index kMost = 3 * 16 + 5;
  std::vector<T> src(kMost);
  for (T& x : src) {
    if constexpr (std::is_same_v<T, std::int8_t>) {
      x = static_cast<std::int8_t>(std::uniform_int_distribution<int>(-127, 127)(rng));
    } else {
      x = static_cast<T>(dist(rng));
    }
  }
  for (Index count = 0; count <= kMost; ++count) {
    std::vector<float> out(static_cast<size_t>(count + 2), -9.0f);
    to_float(src.data(), count, scale, out.data() + 1);
    const std::string where = std::string(element_name<T>()) + " count " + std::to_string(count);
    EXPECT_EQ(out[0], -9.0f) << where;
    EXPECT_EQ(out[static_cast<size_t>(count + 1)], -9.0f) << where;
    for (Index i = 0; i < count; ++i) {
      ASSERT_EQ(out[static_cast<size_t>(i + 1)], scale * static_cast<float>(src[i]))
          << where << " element " << i;
    }
  }
}

TEST(ToFloatTest, EveryElementTypeAndCountMatchesOneElementAtATime) {
  check_to_float<float>(1.0f);
  check_to_float<Eigen::bfloat16>(1.0f);
  check_to_float<Eigen::half>(1.0f);
  check_to_float<std::int8_t>(0.0123f);
}

}  // namespace
}  // namespace headroom::detail
