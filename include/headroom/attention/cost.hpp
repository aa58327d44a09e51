// SPDX-License-Identifier: MIT
// The work of an attention call, counted once here for benchmarks and tests alike.
#pragma once

#include <algorithm>

#include "headroom/attention/options.hpp"
#include "headroom/core/error.hpp"
#include "headroom/core/tensor_view.hpp"

namespace headroom {

/// Returns the number of (query, key) pairs a mask lets one head of one sequence see, with q_len
/// queries at the last positions of kv_len keys (see MaskKind).
inline double visible_pairs(const Mask& mask, Index q_len, Index kv_len) {
  constexpr const char* kWhere = "visible_pairs";
  HEADROOM_CHECK(q_len >= 0, kWhere, "q_len (", q_len, ") is negative");
  HEADROOM_CHECK(kv_len >= 0, kWhere, "kv_len (", kv_len, ") is negative");
  HEADROOM_CHECK(mask.kind != MaskKind::kSlidingWindow || mask.window >= 1, kWhere,
                 "mask.window (", mask.window, ") must be >= 1 for a sliding-window mask");
  double pairs = 0.0;
  for (Index i = 0; i < q_len; ++i) {
    // kv_len - q_len + i, written so that no lengths overflow.
    const Index pos = i - (q_len - kv_len);
    Index first = 0, end = kv_len;
    if (mask.kind != MaskKind::kNone) end = pos < 0 ? 0 : std::min(pos + 1, kv_len);
    if (mask.kind == MaskKind::kSlidingWindow && pos >= mask.window) first = pos - mask.window + 1;
    pairs += static_cast<double>(std::max<Index>(0, end - first));
  }
  return pairs;
}

/// Returns the floating-point operations of attention: a multiply and an add per element of q.k
/// (head_dim_k) and of p.v (head_dim_v) for every visible pair and query head. For a full mask this
/// is 4 * q_len * kv_len * head_dim * num_heads; a causal mask with q_len == kv_len about halves it.
inline double attention_flops(Index batch, Index num_heads, Index q_len, Index kv_len,
                              Index head_dim_k, Index head_dim_v, const Mask& mask) {
  return 2.0 * static_cast<double>(head_dim_k + head_dim_v) * visible_pairs(mask, q_len, kv_len) *
         static_cast<double>(num_heads * batch);
}

}  // namespace headroom
