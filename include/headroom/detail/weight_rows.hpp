// SPDX-License-Identifier: MIT
// Products with a decoder's weight rows held in low precision (bf16): the dot products of a few
// activation rows with each weight row, widening the weights to f32 in registers, and the widening
// of a block of weight rows to f32 for a matrix product.
#pragma once

#include <Eigen/Core>

#include "headroom/core/element.hpp"
#include "headroom/core/tensor_view.hpp"
#include "headroom/detail/micro_kernel.hpp"

namespace headroom::detail {

/// out[t * out_stride + r] = sum_c x[t * x_stride + c] * w[r * w_stride + c] for t < kTokens and
/// r < rows: each weight row is read once, as f32 packets converted in registers, against the
/// kTokens activation rows (which stay in L1). Two packets of each row are in flight per step, so
/// even one token has two independent FMA chains. Every sum is taken in the same order whatever
/// the caller's blocking, so results do not depend on how rows are shared among threads.
template <int kTokens, class Weight>
void weight_row_dots(const float* x, Index x_stride, const Weight* w, Index w_stride, Index cols,
                     Index rows, float* out, Index out_stride) {
  constexpr Index kSize = kPacketSize;
  namespace ei = Eigen::internal;
  for (Index r = 0; r < rows; ++r) {
    const Weight* row = w + r * w_stride;
    Packet even[kTokens], odd[kTokens];
    for (int t = 0; t < kTokens; ++t) even[t] = odd[t] = ei::pset1<Packet>(0.0f);
    Index c = 0;
    for (; c + 2 * kSize <= cols; c += 2 * kSize) {
      const Packet w0 = load_packet(row + c), w1 = load_packet(row + c + kSize);
      for (int t = 0; t < kTokens; ++t) {
        even[t] = ei::pmadd(w0, ei::ploadu<Packet>(x + t * x_stride + c), even[t]);
        odd[t] = ei::pmadd(w1, ei::ploadu<Packet>(x + t * x_stride + c + kSize), odd[t]);
      }
    }
    if (c + kSize <= cols) {
      const Packet w0 = load_packet(row + c);
      for (int t = 0; t < kTokens; ++t) {
        even[t] = ei::pmadd(w0, ei::ploadu<Packet>(x + t * x_stride + c), even[t]);
      }
      c += kSize;
    }
    for (int t = 0; t < kTokens; ++t) {
      float sum = ei::predux(ei::padd(even[t], odd[t]));
      for (Index k = c; k < cols; ++k) sum += x[t * x_stride + k] * static_cast<float>(row[k]);
      out[t * out_stride + r] = sum;
    }
  }
}

/// Writes the `count` weights at `w` to `out` as f32, a packet at a time.
template <class Weight>
void widen_weights(const Weight* w, Index count, float* out) {
  constexpr Index kSize = kPacketSize;
  Index i = 0;
  for (; i + kSize <= count; i += kSize) Eigen::internal::pstoreu(out + i, load_packet(w + i));
  for (; i < count; ++i) out[i] = static_cast<float>(w[i]);
}

}  // namespace headroom::detail
