// SPDX-License-Identifier: MIT
// Tests headroom::Error and HEADROOM_CHECK.
#include "headroom/core/error.hpp"

#include <gtest/gtest.h>

#include <limits>

#include "expect_error.hpp"
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

TEST(TensorViewTest, CheckViewRejectsViewsTooLargeToCountOrAddress) {
  using headroom::testing::expect_error;
  constexpr Index kBig = Index{1} << 62;
  // 2^62 x 4 elements wrap to 0 in an Index: a null pointer must not pass as an empty view.
  const TensorView<const float> uncountable{nullptr, 1, kBig, 4, 1, 0, 4, 1, 1};
  expect_error([&] { detail::check_view(uncountable, "f", "q", false); },
               "headroom::f: q [1, 4611686018427387904, 4, 1] with strides [0, 4, 1, 1] has more "
               "elements or a larger extent than an Index holds");
  // Few elements, but offsets that overflow: (3 - 1) * 2^62 on the seq axis.
  float buffer[4] = {};
  const TensorView<const float> far_apart{buffer, 1, 3, 1, 1, 0, kBig, 1, 1};
  expect_error([&] { detail::check_view(far_apart, "f", "k", false); },
               "has more elements or a larger extent than an Index holds");
  // Negative strides reach as far: -(2^62) + -(2^62) + -(2^62) no longer fits.
  const TensorView<const float> backwards{buffer, 2, 2, 2, 1, -kBig, -kBig, -kBig, 1};
  expect_error([&] { detail::check_view(backwards, "f", "v", false); },
               "has more elements or a larger extent than an Index holds");
  // A broadcast view (stride 0) of as many rows as an Index counts is fine to read: every
  // offset is 0. One element more per row and they can no longer be counted.
  const Index most = std::numeric_limits<Index>::max();
  const TensorView<const float> broadcast{buffer, 1, most, 1, 1, 0, 0, 0, 1};
  EXPECT_NO_THROW(detail::check_view(broadcast, "f", "k", false));
  const TensorView<const float> wider{buffer, 1, most, 1, 2, 0, 0, 0, 1};
  expect_error([&] { detail::check_view(wider, "f", "k", false); }, "has more elements");
}

TEST(TensorViewTest, CheckLseOutputRejectsAliasingAndWrongShapes) {
  using headroom::testing::expect_error;
  float values[4] = {};
  EXPECT_NO_THROW(detail::check_lse_output(LseView::bhs(values, 1, 2, 2), "f", "lse", 1, 2, 2));
  EXPECT_NO_THROW(detail::check_lse_output(LseView{}, "f", "lse", 1, 2, 2));  // not asked for
  expect_error([&] { detail::check_lse_output(LseView::bhs(values, 1, 2, 2), "f", "lse", 1, 2, 3); },
               "headroom::f: lse is [1, 2, 2] but must be [batch 1, heads 2, q_len 3]");
  const LseView aliased{values, 1, 1, 2, 2, 2, 0};  // seq_stride 0 over 2 rows
  expect_error([&] { detail::check_lse_output(aliased, "f", "lse", 1, 1, 2); },
               "headroom::f: lse has a zero stride on an axis longer than one");
}

}  // namespace
}  // namespace headroom
