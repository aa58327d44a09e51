// SPDX-License-Identifier: MIT
// Merges partial attention results over disjoint key sets by their log-sum-exp.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "headroom/core/error.hpp"
#include "headroom/core/tensor_view.hpp"

namespace headroom {
namespace detail {

/// The weights of two partial results in their merge and the merged LSE:
/// lse = log(exp(lse_a) + exp(lse_b)), computed around the larger one so nothing overflows;
/// w_a = exp(lse_a - lse), w_b = exp(lse_b - lse). Two empty parts (-inf, -inf) give weights 0
/// and lse -inf, never NaN.
struct MergeWeights {
  float weight_a, weight_b, lse;
};

inline MergeWeights merge_weights(float lse_a, float lse_b) {
  const float hi = std::max(lse_a, lse_b);
  if (hi == -std::numeric_limits<float>::infinity()) {
    return {0.0f, 0.0f, hi};
  }
  const float e_a = std::exp(lse_a - hi), e_b = std::exp(lse_b - hi);
  const float sum = e_a + e_b;
  return {e_a / sum, e_b / sum, hi + std::log(sum)};
}

}  // namespace detail

/// Merges two attention results computed by attend over disjoint sets of keys for the same
/// queries, given their LSE outputs, into the result over the union (the split-KV combination of
/// flash-decoding). `out` may alias `out_a` or `out_b`, `lse` may alias `lse_a` or `lse_b`.
///
///   out_a, out_b, out: [batch, q_len, num_heads, head_dim_v]
///   lse_a, lse_b, lse: [batch, num_heads, q_len]
inline void merge_attention(TensorView<const float> out_a, const LseView& lse_a,
                            TensorView<const float> out_b, const LseView& lse_b,
                            TensorView<float> out, const LseView& lse) {
  constexpr const char* kWhere = "merge_attention";
  detail::check_view(out_a, kWhere, "out_a", false);
  detail::check_view(out_b, kWhere, "out_b", false);
  detail::check_view(out, kWhere, "out", true);
  const auto same_shape = [](const auto& x, const auto& y) {
    return x.batch == y.batch && x.seq == y.seq && x.heads == y.heads;
  };
  HEADROOM_CHECK(same_shape(out_a, out_b) && out_a.dim == out_b.dim, kWhere, "out_b [",
                 out_b.batch, ", ", out_b.seq, ", ", out_b.heads, ", ", out_b.dim,
                 "] differs from out_a [", out_a.batch, ", ", out_a.seq, ", ", out_a.heads, ", ",
                 out_a.dim, "]");
  HEADROOM_CHECK(same_shape(out_a, out) && out_a.dim == out.dim, kWhere, "out [", out.batch, ", ",
                 out.seq, ", ", out.heads, ", ", out.dim, "] differs from out_a [", out_a.batch,
                 ", ", out_a.seq, ", ", out_a.heads, ", ", out_a.dim, "]");
  const LseView* lses[] = {&lse_a, &lse_b, &lse};
  const char* lse_names[] = {"lse_a", "lse_b", "lse"};
  for (int i = 0; i < 3; ++i) {
    const LseView& view = *lses[i];
    HEADROOM_CHECK(view.data != nullptr || out.size() == 0, kWhere, lse_names[i], " is empty");
    HEADROOM_CHECK(same_shape(view, out_a), kWhere, lse_names[i], " is [", view.batch, ", ",
                   view.heads, ", ", view.seq, "] but must be [", out_a.batch, ", ", out_a.heads,
                   ", ", out_a.seq, "]");
    HEADROOM_CHECK(detail::lse_is_addressable(view), kWhere, lse_names[i],
                   " has a larger extent than an Index holds");
  }
  detail::check_lse_output(lse, kWhere, "lse", out.batch, out.heads, out.seq);
  for (Index b = 0; b < out.batch; ++b) {
    for (Index i = 0; i < out.seq; ++i) {
      for (Index h = 0; h < out.heads; ++h) {
        const detail::MergeWeights w = detail::merge_weights(lse_a(b, h, i), lse_b(b, h, i));
        const float* row_a = out_a.row(b, i, h);
        const float* row_b = out_b.row(b, i, h);
        float* row = out.row(b, i, h);
        for (Index d = 0; d < out.dim; ++d) {
          row[d * out.dim_stride] =
              w.weight_a * row_a[d * out_a.dim_stride] + w.weight_b * row_b[d * out_b.dim_stride];
        }
        lse(b, h, i) = w.lse;
      }
    }
  }
}

}  // namespace headroom
