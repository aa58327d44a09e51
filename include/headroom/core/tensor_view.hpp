// SPDX-License-Identifier: MIT
// Non-owning strided views over the caller's buffers, so any [b, s, h, d] or [b, h, s, d] layout works
// without a copy.
#pragma once

#include <cstddef>
#include <limits>
#include <type_traits>

#include "headroom/core/error.hpp"

namespace headroom {

/// Signed index type for sizes, strides and positions (like Eigen::Index).
using Index = std::ptrdiff_t;

/// A non-owning view of a rank-4 tensor with logical axes [batch, seq, heads, dim] and arbitrary
/// strides in elements. The factories name the two common memory orders.
/// \tparam T element type; `const float` for inputs, `float` for outputs.
template <class T>
struct TensorView {
  T* data = nullptr;
  Index batch = 0, seq = 0, heads = 0, dim = 0;
  Index batch_stride = 0, seq_stride = 0, head_stride = 0, dim_stride = 1;

  /// Views a contiguous [batch, seq, heads, dim] buffer (the projection output of most models).
  static TensorView bshd(T* base, Index batch, Index seq, Index heads, Index dim) {
    return {base, batch, seq, heads, dim, seq * heads * dim, heads * dim, dim, 1};
  }
  /// Views a contiguous [batch, heads, seq, dim] buffer (the layout of PyTorch's SDPA).
  static TensorView bhsd(T* base, Index batch, Index heads, Index seq, Index dim) {
    return {base, batch, seq, heads, dim, heads * seq * dim, dim, seq * dim, 1};
  }

  /// Returns the address of element [b, s, h, 0].
  T* row(Index b, Index s, Index h) const {
    return data + b * batch_stride + s * seq_stride + h * head_stride;
  }
  T& operator()(Index b, Index s, Index h, Index d) const { return row(b, s, h)[d * dim_stride]; }

  Index size() const { return batch * seq * heads * dim; }

  /// A view of mutable data converts to a view of const data (of the same element type only: U is
  /// deduced from the target of a conversion).
  template <class U = T, std::enable_if_t<!std::is_const_v<U> && std::is_same_v<U, T>, int> = 0>
  operator TensorView<const U>() const {  // NOLINT(google-explicit-constructor)
    return {data, batch, seq, heads, dim, batch_stride, seq_stride, head_stride, dim_stride};
  }
};

/// A non-owning view of per-row log-sum-exp values, logical axes [batch, heads, seq].
struct LseView {
  float* data = nullptr;
  Index batch = 0, heads = 0, seq = 0;
  Index batch_stride = 0, head_stride = 0, seq_stride = 1;

  /// Views a contiguous [batch, heads, seq] buffer.
  static LseView bhs(float* base, Index batch, Index heads, Index seq) {
    return {base, batch, heads, seq, heads * seq, seq, 1};
  }
  float& operator()(Index b, Index h, Index s) const {
    return data[b * batch_stride + h * head_stride + s * seq_stride];
  }
  bool empty() const { return data == nullptr; }
};

namespace detail {

/// Returns whether a * b overflows Index; otherwise stores it in *product.
inline bool multiply_overflows(Index a, Index b, Index* product) {
#if defined(__GNUC__) || defined(__clang__)
  return __builtin_mul_overflow(a, b, product);
#else
  const long double exact = static_cast<long double>(a) * static_cast<long double>(b);
  if (exact > static_cast<long double>(std::numeric_limits<Index>::max()) ||
      exact < static_cast<long double>(std::numeric_limits<Index>::min())) {
    return true;
  }
  *product = a * b;
  return false;
#endif
}

/// Returns whether the elements of a view of these sizes (non-negative) and strides can be
/// counted, and addressed from its first element, without overflowing Index: every offset
/// b * batch_stride + s * seq_stride + h * head_stride + d * dim_stride, and each of its partial
/// sums, then lies between the sum of the negative and the sum of the positive extents.
inline bool view_is_addressable(const Index (&sizes)[4], const Index (&strides)[4]) {
  constexpr Index kMax = std::numeric_limits<Index>::max();
  Index count = 1, below = 0, above = 0;
  for (int axis = 0; axis < 4; ++axis) {
    if (multiply_overflows(count, sizes[axis], &count)) return false;
  }
  if (count == 0) return true;  // no element is ever addressed
  for (int axis = 0; axis < 4; ++axis) {
    Index extent = 0;
    if (multiply_overflows(sizes[axis] - 1, strides[axis], &extent)) return false;
    if (extent >= 0) {
      if (extent > kMax - above) return false;
      above += extent;
    } else {
      if (extent < -kMax - below) return false;
      below += extent;
    }
  }
  return true;
}

/// Checks sizes and the data pointer of a view named `name`; when `writable`, also that no two
/// elements alias (a zero stride on an axis longer than one would make threads race).
template <class T>
void check_view(const TensorView<T>& view, const char* where, const char* name, bool writable) {
  HEADROOM_CHECK(view.batch >= 0, where, name, ".batch (", view.batch, ") is negative");
  HEADROOM_CHECK(view.seq >= 0, where, name, ".seq (", view.seq, ") is negative");
  HEADROOM_CHECK(view.heads > 0, where, name, ".heads (", view.heads, ") must be positive");
  HEADROOM_CHECK(view.dim > 0, where, name, ".dim (", view.dim, ") must be positive");
  const Index sizes[] = {view.batch, view.seq, view.heads, view.dim};
  const Index strides[] = {view.batch_stride, view.seq_stride, view.head_stride, view.dim_stride};
  HEADROOM_CHECK(view_is_addressable(sizes, strides), where, name, " [", view.batch, ", ",
                 view.seq, ", ", view.heads, ", ", view.dim, "] with strides [",
                 view.batch_stride, ", ", view.seq_stride, ", ", view.head_stride, ", ",
                 view.dim_stride, "] has more elements or a larger extent than an Index holds");
  HEADROOM_CHECK(view.data != nullptr || view.size() == 0, where, name,
                 ".data is null but the view has ", view.size(), " elements");
  if (writable) {
    const char* axes[] = {"batch", "seq", "head", "dim"};
    for (int axis = 0; axis < 4; ++axis) {
      HEADROOM_CHECK(sizes[axis] <= 1 || strides[axis] != 0, where, name, ".", axes[axis],
                     "_stride is 0 for an output axis of size ", sizes[axis],
                     "; outputs must not alias");
    }
  }
}

/// Returns whether every value of an LSE view is addressed without overflowing Index.
inline bool lse_is_addressable(const LseView& lse) {
  const Index sizes[] = {lse.batch, lse.heads, lse.seq, 1};
  const Index strides[] = {lse.batch_stride, lse.head_stride, lse.seq_stride, 0};
  return lse.batch >= 0 && lse.heads >= 0 && lse.seq >= 0 && view_is_addressable(sizes, strides);
}

/// Checks an LSE view named `name` that a call writes, if given (not empty): its shape
/// [batch, heads, seq], that it can be addressed, and that no two of its values alias.
inline void check_lse_output(const LseView& lse, const char* where, const char* name, Index batch,
                             Index heads, Index seq) {
  if (lse.empty()) return;
  HEADROOM_CHECK(lse.batch == batch && lse.heads == heads && lse.seq == seq, where, name, " is [",
                 lse.batch, ", ", lse.heads, ", ", lse.seq, "] but must be [batch ", batch,
                 ", heads ", heads, ", q_len ", seq, "]");
  HEADROOM_CHECK(lse_is_addressable(lse), where, name, " has a larger extent than an Index holds");
  HEADROOM_CHECK((lse.batch <= 1 || lse.batch_stride != 0) &&
                     (lse.heads <= 1 || lse.head_stride != 0) &&
                     (lse.seq <= 1 || lse.seq_stride != 0),
                 where, name, " has a zero stride on an axis longer than one; outputs must not alias");
}

}  // namespace detail
}  // namespace headroom
