// SPDX-License-Identifier: MIT
// Non-owning strided views over the caller's buffers, so any [b, s, h, d] or [b, h, s, d] layout works
// without a copy.
#pragma once

#include <cstddef>
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

/// Checks sizes and the data pointer of a view named `name`; when `writable`, also that no two
/// elements alias (a zero stride on an axis longer than one would make threads race).
template <class T>
void check_view(const TensorView<T>& view, const char* where, const char* name, bool writable) {
  HEADROOM_CHECK(view.batch >= 0, where, name, ".batch (", view.batch, ") is negative");
  HEADROOM_CHECK(view.seq >= 0, where, name, ".seq (", view.seq, ") is negative");
  HEADROOM_CHECK(view.heads > 0, where, name, ".heads (", view.heads, ") must be positive");
  HEADROOM_CHECK(view.dim > 0, where, name, ".dim (", view.dim, ") must be positive");
  HEADROOM_CHECK(view.data != nullptr || view.size() == 0, where, name,
                 ".data is null but the view has ", view.size(), " elements");
  if (writable) {
    const Index sizes[] = {view.batch, view.seq, view.heads, view.dim};
    const Index strides[] = {view.batch_stride, view.seq_stride, view.head_stride,
                             view.dim_stride};
    const char* axes[] = {"batch", "seq", "head", "dim"};
    for (int axis = 0; axis < 4; ++axis) {
      HEADROOM_CHECK(sizes[axis] <= 1 || strides[axis] != 0, where, name, ".", axes[axis],
                     "_stride is 0 for an output axis of size ", sizes[axis],
                     "; outputs must not alias");
    }
  }
}

}  // namespace detail
}  // namespace headroom
