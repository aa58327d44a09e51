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

/// Requests a list of rows into L2 one cache line per step. A tile's arithmetic calls step() as it
/// goes, so the next tile arrives spread over the whole computation: one burst of a tile's lines
/// would overflow the core's miss queues and most of it would be dropped.
class LinePrefetcher {
 public:
  static constexpr Index kMaxRows = 128;

  void clear() { num_rows_ = row_ = offset_ = 0; }
  void add(const void* row, Index bytes) {
    if (num_rows_ == kMaxRows || row == nullptr) return;
    rows_[num_rows_] = static_cast<const char*>(row);
    bytes_[num_rows_++] = bytes;
  }
  /// Requests the next `lines` cache lines of the list.
  EIGEN_ALWAYS_INLINE void step(int lines) {
    for (int i = 0; i < lines && row_ < num_rows_; ++i) {
#if defined(__GNUC__)
      __builtin_prefetch(rows_[row_] + offset_, 0, 2);
#endif
      offset_ += 64;
      if (offset_ >= bytes_[row_]) {
        offset_ = 0;
        ++row_;
      }
    }
  }
  /// Issues whatever the computation did not get to.
  void finish() {
    while (row_ < num_rows_) step(1);
  }

 private:
  const char* rows_[kMaxRows];
  Index bytes_[kMaxRows];
  Index num_rows_ = 0, row_ = 0, offset_ = 0;
};

/// The B operand of the micro-kernel as f32 rows in scratch: row k at base + k * stride, aligned.
/// With a prefetcher, every fourth row of the product also requests six lines of the next tile
/// (a tile of 64 keys is 1024 lines of f32 K and V at head dim 128; its products have about 1100
/// such steps).
struct PackedRows {
  static constexpr bool kStreamed = false;
  const float* base;
  Index stride;
  LinePrefetcher* prefetcher = nullptr;

  EIGEN_ALWAYS_INLINE Packet load(Index k, Index col) const {
    return Eigen::internal::pload<Packet>(base + k * stride + col);
  }
  EIGEN_ALWAYS_INLINE float scale(Index) const { return 1.0f; }
  EIGEN_ALWAYS_INLINE void prefetch(Index k) const {
    if (prefetcher != nullptr && (k & 3) == 0) prefetcher->step(6);
  }
};

/// Computes a kRows x (kPackets * kPacketSize) block of C from A [kRows, depth] (row stride
/// a_stride, read one scalar at a time and broadcast) and the rows of B at columns [col, col +
/// kPackets * kPacketSize) (a PackedRows, or SourceRows read straight from a KV source). B's
/// per-row scale (int8 values) multiplies A's column. c must be aligned, c_stride a multiple of
/// the packet size. Accumulators live in registers for the whole depth loop.
template <int kRows, int kPackets, Accumulate kMode, class BRows>
EIGEN_ALWAYS_INLINE void micro_kernel(const float* a, Index a_stride, const BRows& b, Index col,
                                      Index depth, float* c, Index c_stride,
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
    if (col == 0) b.prefetch(k);  // later column panels find the row in L1
    Packet b_row[kPackets];
    HEADROOM_UNROLL
    for (int p = 0; p < kPackets; ++p) b_row[p] = b.load(k, col + p * kPacketSize);
    const float b_scale = b.scale(k);
    HEADROOM_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const Packet a_rk = pset1<Packet>(a[r * a_stride + k] * b_scale);
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
template <int kRows, Accumulate kMode, class BRows>
EIGEN_ALWAYS_INLINE void row_panel(const float* a, Index a_stride, const BRows& b, Index depth,
                                   float* c, Index c_stride, Index columns,
                                   const float* row_scale) {
  // Rows read straight from a KV source are best walked whole: one or two rows leave room for
  // twice the accumulators, and each V row is then read once, front to back, instead of half by half.
  constexpr int kPanelPackets = BRows::kStreamed && kRows <= 2 ? 2 * kTilePackets : kTilePackets;
  constexpr Index kTileColumns = kPanelPackets * kPacketSize;
  Index col = 0;
  for (; col + kTileColumns <= columns; col += kTileColumns) {
    micro_kernel<kRows, kPanelPackets, kMode>(a, a_stride, b, col, depth, c + col, c_stride,
                                              row_scale);
  }
  if constexpr (kPanelPackets > kTilePackets) {
    for (; col + kTilePackets * kPacketSize <= columns; col += kTilePackets * kPacketSize) {
      micro_kernel<kRows, kTilePackets, kMode>(a, a_stride, b, col, depth, c + col, c_stride,
                                               row_scale);
    }
  }
  for (; col < columns; col += kPacketSize) {
    micro_kernel<kRows, 1, kMode>(a, a_stride, b, col, depth, c + col, c_stride, row_scale);
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

/// Computes `rows` (at most kTileRows) rows of C = A.B (or diag(row_scale).C + A.B) with the
/// micro-kernel; B is a PackedRows or a SourceRows.
template <Accumulate kMode, class BRows>
inline void gemm_rows(Index rows, const float* a, Index a_stride, const BRows& b, Index depth,
                      float* c, Index c_stride, Index columns, const float* row_scale) {
  dispatch_rows(rows, [&](auto rows_tag) {
    row_panel<decltype(rows_tag)::value, kMode>(a, a_stride, b, depth, c, c_stride, columns,
                                                row_scale);
  });
}

}  // namespace headroom::detail
