// SPDX-License-Identifier: MIT
// Tests headroom::Error and HEADROOM_CHECK.
#include "headroom/core/error.hpp"

#include <gtest/gtest.h>

#include "headroom/core/tensor_view.hpp"

namespace headroom {
namespace {

TEST(ErrorTest, CheckThrowsErrorNamingFunctionAndValue) {
  try {
    const int heads = 12;
    HEADROOM_CHECK(heads % 5 == 0, "attend", "q.heads (", heads, ") is not a multiple of 5");
    FAIL() << "no throw";
  } catch (const Error& error) {
    EXPECT_STREQ(error.what(), "headroom::attend: q.heads (12) is not a multiple of 5");
  }
}

TEST(ErrorTest, ErrorIsAnInvalidArgument) {
  EXPECT_THROW(detail::throw_error("f", "x"), std::invalid_argument);
}

TEST(TensorViewTest, FactoriesAddressTheSameLogicalElement) {
  float buffer[2 * 3 * 4 * 5];
  auto bshd = TensorView<float>::bshd(buffer, 2, 3, 4, 5);
  auto bhsd = TensorView<float>::bhsd(buffer, 2, 4, 3, 5);
  EXPECT_EQ(&bshd(1, 2, 3, 4), buffer + ((1 * 3 + 2) * 4 + 3) * 5 + 4);
  EXPECT_EQ(&bhsd(1, 2, 3, 4), buffer + ((1 * 4 + 3) * 3 + 2) * 5 + 4);
  TensorView<const float> read_only = bshd;
  EXPECT_EQ(read_only.row(1, 0, 0), bshd.row(1, 0, 0));
}

TEST(TensorViewTest, CheckViewRejectsNullDataAndAliasingOutputs) {
  TensorView<float> view{nullptr, 1, 2, 1, 4, 8, 4, 4, 1};
  EXPECT_THROW(detail::check_view(view, "f", "out", true), Error);
  float buffer[8];
  TensorView<float> aliased{buffer, 1, 2, 1, 4, 8, 0, 4, 1};
  EXPECT_THROW(detail::check_view(aliased, "f", "out", true), Error);
  EXPECT_NO_THROW(detail::check_view(aliased, "f", "k", false));
}

}  // namespace
}  // namespace headroom
