// SPDX-License-Identifier: MIT
// Products with a decoder's weight rows held in low precision (bf16): the dot products of a few
// activation rows with each weight row, widening the weights to f32 in registers.
#pragma once

#include <Eigen/Core>
#include <algorithm>

#include "headroom/core/element.hpp"
#include "headroom/core/tensor_view.hpp"
#include "headroom/detail/micro_kernel.hpp"

namespace headroom::detail {

/// out[t * out_stride + r] = sum_c x[t * x_stride + c] * w[r * w_stride + c] for t < kTokens and
/// r < kRows, one packet of every row per step: the rows are kRows independent FMA chains per
/// token and kRows read streams (one stream per core reads at half the DRAM rate here). A row's
/// sum is taken in the same order whatever kRows is. The kRows rows at `ahead` (w_stride apart,
/// within the matrix) are requested from memory meanwhile.
template <int kTokens, int kRows, class Weight>
EIGEN_ALWAYS_INLINE void weight_row_group_dots(const float* x, Index x_stride, const Weight* w,
                                               const Weight* ahead, Index w_stride, Index cols,
                                               float* out, Index out_stride) {
  namespace ei = Eigen::internal;
  Packet acc[kRows][kTokens];
  for (int r = 0; r < kRows; ++r) {
    for (int t = 0; t < kTokens; ++t) acc[r][t] = ei::pset1<Packet>(0.0f);
  }
  Index c = 0;
  for (; c + kPacketSize <= cols; c += kPacketSize) {
    Packet xs[kTokens];
    for (int t = 0; t < kTokens; ++t) xs[t] = ei::ploadu<Packet>(x + t * x_stride + c);
    for (int r = 0; r < kRows; ++r) {
      __builtin_prefetch(ahead + r * w_stride + c);
      const Packet row = load_packet(w + r * w_stride + c);
      for (int t = 0; t < kTokens; ++t) acc[r][t] = ei::pmadd(row, xs[t], acc[r][t]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int t = 0; t < kTokens; ++t) {
      float sum = ei::predux(acc[r][t]);
      for (Index k = c; k < cols; ++k) {
        sum += x[t * x_stride + k] * static_cast<float>(w[r * w_stride + k]);
      }
      out[t * out_stride + r] = sum;
    }
  }
}

/// out[t * out_stride + r] = sum_c x[t * x_stride + c] * w[r * w_stride + c] for t < kTokens and
/// r < rows: each weight row is read once, as f32 packets converted in registers, against the
/// kTokens activation rows (which stay in L1), a group of rows at a time. Results do not depend
/// on how the caller cuts the rows into blocks, so not on how threads share them.
/// Measured on Zen 3 (BM_DecoderStep/bf16, medians of 3): rows one at a time (two chains each)
/// took 71.6 ms per step on one thread and 36.3 on two; four at a time 49.0 and 30.2; eight at a
/// time (one token) no better, 51.5 and 30.4.
template <int kTokens, class Weight>
void weight_row_dots(const float* x, Index x_stride, const Weight* w, Index w_stride, Index cols,
                     Index rows, float* out, Index out_stride) {
  // Four rows keep 4 x kTokens accumulators; for 3-4 tokens two rows keep the registers of AVX2.
  constexpr int kRows = kTokens <= 2 ? 4 : 2;
  // Each group requests the rows two groups on, which follow it in memory: rows of a few KiB are
  // streams too short for the hardware prefetcher to run ahead of. examples/generate's random
  // model (rows of 2 KiB), one thread on Zen 3, three alternated runs: 32-35 tokens/s without,
  // 46-48 with (f32 weights: 33-35); one, two or four groups on were alike. Near the block's end
  // the groups request its last group (which the last one then reads twice) rather than rows
  // past it: another thread's, or past the matrix.
  constexpr Index kAheadRows = 2 * kRows;
  Index r = 0;
  for (; r + kRows <= rows; r += kRows) {
    const Index ahead = std::min(r + kAheadRows, rows - kRows);
    weight_row_group_dots<kTokens, kRows>(x, x_stride, w + r * w_stride, w + ahead * w_stride,
                                          w_stride, cols, out + r, out_stride);
  }
  for (; r < rows; ++r) {
    weight_row_group_dots<kTokens, 1>(x, x_stride, w + r * w_stride, w + r * w_stride, w_stride,
                                      cols, out + r, out_stride);
  }
}

}  // namespace headroom::detail
