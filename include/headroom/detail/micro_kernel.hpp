// SPDX-License-Identifier: MIT
// The register-blocked product at the heart of the tiled kernel, written once in Eigen packets so the
// same source becomes AVX-512, AVX2, SSE or NEON code.
#pragma once

#include <Eigen/Core>
#include <type_traits>

#include "headroom/core/tensor_view.hpp"

/// Fully unrolls a loop with a compile-time trip count. The micro-kernel's accumulators only stay
/// in registers when its row and packet loops are unrolled, which GCC does at -O3 but not at -O2.
#if defined(__clang__)
#define HEADROOM_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define HEADROOM_UNROLL _Pragma("GCC unroll 16")
#else
#define HEADROOM_UNROLL
#endif

namespace headroom::detail {

using Packet = Eigen::internal::packet_traits<float>::type;
inline constexpr int kPacketSize = Eigen::internal::packet_traits<float>::size;

/// Register tile of the micro-kernel: kTileRows rows by kTilePackets packets of columns. With 32
/// vector registers (AVX-512) 6 x 4 = 24 accumulators leave room for 4 B loads and a broadcast;
/// with 16 registers (AVX2, SSE, NEON) 4 x 2 = 8 do.
inline constexpr int kTileRows = kPacketSize == 16 ? 6 : 4;
inline constexpr int kTilePackets = kPacketSize == 16 ? 4 : 2;

/// How the micro-kernel starts its accumulators.
enum class Accumulate {
  kOverwrite,       ///< C = A.B
  kRescaleAndAdd,   ///< C = diag(row_scale).C + A.B (the online-softmax correction of the output)
};

/// Computes a kRows x (kPackets * kPacketSize) block of C from A [kRows, depth] (row stride
/// a_stride, read one scalar at a time and broadcast) and B [depth, columns] (row stride b_stride,
/// read in aligned packets). b and c must be aligned to the packet size and their strides multiples
/// of it. Accumulators live in registers for the whole depth loop.
template <int kRows, int kPackets, Accumulate kMode>
EIGEN_ALWAYS_INLINE void micro_kernel(const float* a, Index a_stride, const float* b,
                                      Index b_stride, Index depth, float* c, Index c_stride,
                                      const float* row_scale) {
  using namespace Eigen::internal;
  Packet acc[kRows][kPackets];
  HEADROOM_UNROLL
  for (int r = 0; r < kRows; ++r) {
    HEADROOM_UNROLL
    for (int p = 0; p < kPackets; ++p) {
      if constexpr (kMode == Accumulate::kOverwrite) {
        acc[r][p] = pset1<Packet>(0.0f);
      } else {
        acc[r][p] = pmul(pload<Packet>(c + r * c_stride + p * kPacketSize),
                         pset1<Packet>(row_scale[r]));
      }
    }
  }
  for (Index k = 0; k < depth; ++k) {
    Packet b_row[kPackets];
    HEADROOM_UNROLL
    for (int p = 0; p < kPackets; ++p) b_row[p] = pload<Packet>(b + k * b_stride + p * kPacketSize);
    HEADROOM_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const Packet a_rk = pset1<Packet>(a[r * a_stride + k]);
      HEADROOM_UNROLL
      for (int p = 0; p < kPackets; ++p) acc[r][p] = pmadd(a_rk, b_row[p], acc[r][p]);
    }
  }
  HEADROOM_UNROLL
  for (int r = 0; r < kRows; ++r) {
    HEADROOM_UNROLL
    for (int p = 0; p < kPackets; ++p) pstore(c + r * c_stride + p * kPacketSize, acc[r][p]);
  }
}

/// Computes kRows rows of C [kRows, columns] with the micro-kernel, walking the columns in register
/// tiles; `columns` is a multiple of kPacketSize.
template <int kRows, Accumulate kMode>
EIGEN_ALWAYS_INLINE void row_panel(const float* a, Index a_stride, const float* b, Index b_stride,
                                   Index depth, float* c, Index c_stride, Index columns,
                                   const float* row_scale) {
  constexpr Index kTileColumns = kTilePackets * kPacketSize;
  Index col = 0;
  for (; col + kTileColumns <= columns; col += kTileColumns) {
    micro_kernel<kRows, kTilePackets, kMode>(a, a_stride, b + col, b_stride, depth, c + col,
                                             c_stride, row_scale);
  }
  for (; col < columns; col += kPacketSize) {
    micro_kernel<kRows, 1, kMode>(a, a_stride, b + col, b_stride, depth, c + col, c_stride,
                                  row_scale);
  }
}

/// Calls fn(std::integral_constant<int, rows>{}) for a row count in [1, kTileRows], so kernels
/// see their row count at compile time and keep their accumulators in registers.
template <class Fn>
EIGEN_ALWAYS_INLINE void dispatch_rows(Index rows, Fn&& fn) {
  static_assert(kTileRows <= 6, "dispatch_rows handles at most 6 rows; extend the switch.");
  HEADROOM_DASSERT(rows >= 1 && rows <= kTileRows);
  using std::integral_constant;
  switch (rows) {
    case 1: fn(integral_constant<int, 1>{}); break;
    case 2: fn(integral_constant<int, 2>{}); break;
    case 3: fn(integral_constant<int, 3>{}); break;
    case 4: fn(integral_constant<int, 4>{}); break;
    case 5: if constexpr (kTileRows >= 5) fn(integral_constant<int, 5>{}); break;
    case 6: if constexpr (kTileRows >= 6) fn(integral_constant<int, 6>{}); break;
    default: break;
  }
}

/// Row scales of 1, for a product that only accumulates.
inline constexpr float kOnes[6] = {1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f};

/// Computes `rows` (at most kTileRows) rows of C with the micro-kernel.
template <Accumulate kMode>
inline void gemm_rows(Index rows, const float* a, Index a_stride, const float* b, Index b_stride,
                      Index depth, float* c, Index c_stride, Index columns,
                      const float* row_scale) {
  dispatch_rows(rows, [&](auto rows_tag) {
    row_panel<decltype(rows_tag)::value, kMode>(a, a_stride, b, b_stride, depth, c, c_stride,
                                                columns, row_scale);
  });
}

}  // namespace headroom::detail
