// SPDX-License-Identifier: MIT
// The register-blocked product at the heart of the tiled kernel, written once in Eigen packets so the
// same source becomes AVX-512, AVX2, SSE or NEON code.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "headroom/core/error.hpp"
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
/// with 16 registers (AVX2) 6 x 2 = 12 leave room for 2 B loads and a broadcast (the shape of the
/// Haswell-class SGEMM kernels of BLIS and OpenBLAS; on Zen 3 prefill ran 15-30% faster than with
/// 4 x 2). 4-lane packets (SSE, NEON) keep 4 rows, whose rescale factors fill one packet.
inline constexpr int kTileRows = kPacketSize >= 8 ? 6 : 4;
inline constexpr int kTilePackets = kPacketSize == 16 ? 4 : 2;

/// How the micro-kernel starts its accumulators.
enum class Accumulate {
  kOverwrite,       ///< C = A.B
  kRescaleAndAdd,   ///< C = diag(row_scale).C + A.B (the online-softmax correction of the output)
};

/// The cores whose memory behaviour the decode's prefetch tuning was measured on, as the compiler
/// targets them: AMD Zen (__CLZERO__, Zen 1 to 5) splits into Zen 5 (__AVXVNNI__, which Zen 4
/// lacks) and the earlier ones, measured on Zen 4. They differ in the hint, the distance and the
/// reach of the decode's requests (kAheadLocality, kPrefetchBytes, kOneRowFarRequests).
#if defined(__CLZERO__) && defined(__AVXVNNI__)
inline constexpr bool kTargetZen5 = true;
#else
inline constexpr bool kTargetZen5 = false;
#endif
#if defined(__CLZERO__) && !defined(__AVXVNNI__)
inline constexpr bool kTargetZen4 = true;
#else
inline constexpr bool kTargetZen4 = false;
#endif

/// The locality hint of the requests made a phase or a tile ahead of use (LinePrefetcher here,
/// FarRows in stream_kernel.hpp): 2 (prefetcht1, into L2) in general, 3 (prefetcht0, into L1) on
/// Zen 5, where prefetcht1 and prefetcht2 are at times dropped (so reported for Zen 4: Wang et
/// al., "The Hitchhiker's Guide to Programming and Optimizing CXL-Based Heterogeneous Systems",
/// 2024, "Software Prefetching Instruction"). Measured on Zen 5 (decode, 16k keys from DRAM, D =
/// 128, medians of 3-6 alternated rounds), prefetcht0 against prefetcht1 took 7-9% less time for
/// f32 MQA with 1 thread and 2-3.5% with 2, f32 GQA 7% and 3%, bf16 MHA 10% and 5%, bf16 GQA 6%
/// and 4%; f32 MHA, int8, prefill and MLA decode within the noise. On Zen 4 prefetcht0 is far
/// slower: f32 decode at 16k keys with 1 thread fell from 33 to 19 tok/s for MHA and from 129 to
/// 58 for GQA 32/8 (the bench, medians of 3). On a Xeon VM prefetcht0 was 15-20% slower (see
/// FarRows in stream_kernel.hpp).
inline constexpr int kAheadLocality = kTargetZen5 ? 3 : 2;

/// Requests the cache line at `at` for reading, with a locality hint of kLocality (3 into L1,
/// 2 into L2); a no-op where the compiler has no prefetch builtin.
template <int kLocality>
EIGEN_ALWAYS_INLINE void request_line(const void* at) {
#if defined(__GNUC__)
  __builtin_prefetch(at, 0, kLocality);
#else
  Eigen::internal::prefetch(static_cast<const char*>(at));
#endif
}

/// Requests a list of rows into the cache a few cache lines at a time. A tile's products take the
/// lines out in slices (take) and request them as they go, so the next tile arrives spread over the
/// computation: one burst of a tile's lines would overflow the core's miss queues and most of it
/// would be dropped, and requests faster than DRAM delivers stall the core on full queues.
class LinePrefetcher {
 public:
  /// Rows of a product's depth between two requests.
  static constexpr Index kDepthPerStep = 4;

  /// The lines one product requests, lines_per_step every kDepthPerStep rows of its depth.
  struct Slice {
    const std::uintptr_t* lines = nullptr;
    Index count = 0;
    Index lines_per_step = 0;

    EIGEN_ALWAYS_INLINE void step(Index k) const {
      if (k % kDepthPerStep != 0) return;
      const Index first = k / kDepthPerStep * lines_per_step;
      for (Index i = first; i < std::min(count, first + lines_per_step); ++i) {
        request_line<kAheadLocality>(reinterpret_cast<const void*>(lines[i]));
      }
    }
  };

  void clear() { size_ = next_ = 0; }
  /// Adds the lines of `count` keys' rows, each key's K row (k_bytes) then its V row (v_bytes;
  /// none where it is the K row, as in MLA's latent cache), after those added before.
  template <class T>
  void add_rows(const T* const* k, const T* const* v, Index count, Index k_bytes, Index v_bytes) {
    const Index k_lines = (k_bytes + 63) / 64, v_lines = (v_bytes + 63) / 64;
    const Index most = size_ + count * (k_lines + v_lines);
    // The storage only grows (a tile's worth, kept with the thread's scratch), so adding is plain
    // stores.
    if (most > static_cast<Index>(lines_.size())) lines_.resize(static_cast<size_t>(2 * most));
    // Addresses as integers: GCC vectorises the stores of an integer sequence, not of pointers.
    // Measured here: a tile's 1024 lines (f32 K and V at head dim 128) 324 -> 101 ns, against
    // the 9 us of products of an MQA decode tile (32 rows).
    const auto append = [](std::uintptr_t* out, const void* row, Index lines) {
      const std::uintptr_t first = reinterpret_cast<std::uintptr_t>(row);
      for (Index i = 0; i < lines; ++i) out[i] = first + static_cast<std::uintptr_t>(i) * 64;
      return out + lines;
    };
    std::uintptr_t* const begin = lines_.data();
    std::uintptr_t* out = begin + size_;
    for (Index c = 0; c < count; ++c) {
      out = append(out, k[c], k_lines);
      if (static_cast<const void*>(v[c]) != static_cast<const void*>(k[c])) {
        out = append(out, v[c], v_lines);
      }
    }
    size_ = out - begin;
  }
  /// Spreads the lines evenly over products of `depth` rows in all: decode tiles have little
  /// arithmetic per byte, prefill tiles much. Measured here: requesting the next tile within the
  /// first panel of scores suits both (absorbed MLA decode gains 15% over a fixed rate tuned for
  /// prefill, MQA decode 25% over no requests).
  void spread_over(Index depth) {
    const Index steps = std::max<Index>(1, (depth + kDepthPerStep - 1) / kDepthPerStep);
    lines_per_step_ = (size_ + steps - 1) / steps;
  }
  /// Hands out the lines a product of `depth` rows requests.
  Slice take(Index depth) {
    const Index steps = (depth + kDepthPerStep - 1) / kDepthPerStep;
    const Index count = std::min(steps * lines_per_step_, size_ - next_);
    const Slice slice{lines_.data() + next_, count, lines_per_step_};
    next_ += count;
    return slice;
  }
  /// Issues whatever the computation did not get to.
  void finish() {
    for (; next_ < size_; ++next_) {
      request_line<kAheadLocality>(reinterpret_cast<const void*>(lines_[next_]));
    }
  }

 private:
  std::vector<std::uintptr_t> lines_;  // [size_] in use: the address of each line
  Index size_ = 0, next_ = 0;
  Index lines_per_step_ = 6;
};

/// The B operand of the micro-kernel as f32 rows in scratch: row k at base + k * stride, aligned.
/// With a prefetcher, the product requests lines of the next tile as it goes (a tile of 64 keys
/// is 1024 lines of f32 K and V at head dim 128).
struct PackedRows {
  static constexpr bool kStreamed = false;
  const float* base;
  Index stride;
  LinePrefetcher* prefetcher = nullptr;

  EIGEN_ALWAYS_INLINE Packet load(Index k, Index col) const {
    return Eigen::internal::pload<Packet>(base + k * stride + col);
  }
  /// Returns the prefetches of a product of `depth` rows (none for depth 0).
  EIGEN_ALWAYS_INLINE LinePrefetcher::Slice prefetch_plan(Index depth) const {
    return prefetcher != nullptr && depth > 0 ? prefetcher->take(depth) : LinePrefetcher::Slice{};
  }
};

/// The A operand of a product: element (r, k) at data[r * row_stride + k * depth_stride]. Read one
/// scalar at a time and broadcast, so any strides cost the same: query rows (row-major), K rows
/// (key-major scores) and probabilities stored key-major (P.V) all fit.
struct Lhs {
  const float* data;
  Index row_stride;
  Index depth_stride;

  EIGEN_ALWAYS_INLINE const float* row(Index r) const { return data + r * row_stride; }
  EIGEN_ALWAYS_INLINE float at(Index r, Index k) const {
    return data[r * row_stride + k * depth_stride];
  }
};

/// Marks a head dim (and with it a row stride) that is only known at run time.
inline constexpr int kDynamicDim = -1;

/// An A operand of consecutive rows kRowStride floats apart, each contiguous. With the stride
/// known at compile time, a register block's rows are one pointer plus constant offsets; with a
/// run-time stride each row would hold a register of its own, more than x86-64 has to spare.
template <Index kRowStride>
struct FixedStrideLhs {
  static constexpr Index depth_stride = 1;
  const float* data;

  EIGEN_ALWAYS_INLINE const float* row(Index r) const { return data + r * kRowStride; }
  EIGEN_ALWAYS_INLINE float at(Index r, Index k) const { return data[r * kRowStride + k]; }
};

/// The prefetch plan of a product that requests nothing.
struct NoRequests {
  EIGEN_ALWAYS_INLINE void step(Index) const {}
};

/// Computes a kRows x (kPackets * kPacketSize) block of C from A [kRows, depth] (a Lhs or a
/// FixedStrideLhs) and the rows of B at columns [col, col + kPackets * kPacketSize) (a
/// PackedRows, or SourceRows read straight from a KV source: int8 rows' scales are already in A's
/// columns). c must be aligned, c_stride a multiple of the packet size. Accumulators live in
/// registers for the whole depth loop. B's prefetch hook runs when `prefetch` is set (once per
/// row of B, not once per panel).
template <int kRows, int kPackets, Accumulate kMode, class BRows, class A>
EIGEN_ALWAYS_INLINE void micro_kernel(const A& a, const BRows& b, Index col, Index depth,
                                      float* c, Index c_stride, const float* row_scale,
                                      bool prefetch) {
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
  // Local copies: the prefetcher writes memory, and the compiler would otherwise reload every
  // field of a and b after each of its steps.
  const A a_local = a;
  const BRows b_local = b;
  const auto products = [&](const auto& plan) {
    for (Index k = 0; k < depth; ++k) {
      plan.step(k);
      Packet b_row[kPackets];
      HEADROOM_UNROLL
      for (int p = 0; p < kPackets; ++p) b_row[p] = b_local.load(k, col + p * kPacketSize);
      HEADROOM_UNROLL
      for (int r = 0; r < kRows; ++r) {
        const Packet a_rk = pset1<Packet>(a_local.at(r, k));
        HEADROOM_UNROLL
        for (int p = 0; p < kPackets; ++p) acc[r][p] = pmadd(a_rk, b_row[p], acc[r][p]);
      }
    }
  };
  // A product that requests nothing runs a loop without the plan's tests: an empty plan still
  // tests its lists at every step, a third of the instructions per step of the P.V of a few rows
  // (streamed decode, 4 rows and 2 packets on AVX2). Measured on Zen 3 (AVX2; decode at 16k
  // keys, 1 thread, medians of 3, two alternated rounds): bf16 GQA 32/8 25-30% less time per
  // step, int8 GQA 15%.
  if (prefetch) {
    products(b_local.prefetch_plan(depth));
  } else {
    products(NoRequests{});
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
EIGEN_ALWAYS_INLINE void row_panel(const Lhs& a, const BRows& b, Index depth, float* c,
                                   Index c_stride, Index columns, const float* row_scale) {
  // Rows read straight from a KV source are best walked whole: one or two rows leave room for
  // twice the accumulators, and each V row is then read once, front to back, instead of half by half.
  constexpr int kPanelPackets = BRows::kStreamed && kRows <= 2 ? 2 * kTilePackets : kTilePackets;
  constexpr Index kTileColumns = kPanelPackets * kPacketSize;
  Index col = 0;
  for (; col + kTileColumns <= columns; col += kTileColumns) {
    micro_kernel<kRows, kPanelPackets, kMode>(a, b, col, depth, c + col, c_stride, row_scale,
                                              col == 0);
  }
  if constexpr (kPanelPackets > kTilePackets) {
    for (; col + kTilePackets * kPacketSize <= columns; col += kTilePackets * kPacketSize) {
      micro_kernel<kRows, kTilePackets, kMode>(a, b, col, depth, c + col, c_stride, row_scale,
                                               col == 0);
    }
  }
  for (; col < columns; col += kPacketSize) {
    micro_kernel<kRows, 1, kMode>(a, b, col, depth, c + col, c_stride, row_scale, col == 0);
  }
}

/// Calls fn(std::integral_constant<int, n>{}) for n in [1, kMax], so kernels see their row count
/// at compile time and keep their accumulators in registers.
template <int kMax, class Fn>
EIGEN_ALWAYS_INLINE void dispatch_up_to(Index n, Fn&& fn) {
  HEADROOM_DASSERT(n >= 1 && n <= kMax);
  if constexpr (kMax >= 1) {
    if (n == kMax) {
      fn(std::integral_constant<int, kMax>{});
    } else {
      dispatch_up_to<kMax - 1>(n, fn);
    }
  }
}

/// dispatch_up_to for a block of at most kTileRows rows.
template <class Fn>
EIGEN_ALWAYS_INLINE void dispatch_rows(Index rows, Fn&& fn) {
  dispatch_up_to<kTileRows>(rows, fn);
}

/// Calls fn(r0, block_rows) for blocks of at most kTileRows rows covering [first, end), their sizes
/// as equal as can be: 32 rows as 6, 6, 5, 5, 5, 5 rather than five 6s and a 2, whose register
/// tile would do a third of the FMAs per load of a full one.
template <class Fn>
EIGEN_ALWAYS_INLINE void for_each_row_block(Index first, Index end, Fn&& fn) {
  const Index rows = end - first;
  const Index num_blocks = (rows + kTileRows - 1) / kTileRows;
  for (Index block = 0, r0 = first; block < num_blocks; ++block) {
    const Index block_rows = rows / num_blocks + (block < rows % num_blocks ? 1 : 0);
    fn(r0, block_rows);
    r0 += block_rows;
  }
}

/// Computes `rows` (at most kTileRows) rows of C = A.B (or diag(row_scale).C + A.B) with the
/// micro-kernel; B is a PackedRows or a SourceRows.
template <Accumulate kMode, class BRows>
inline void gemm_rows(Index rows, const Lhs& a, const BRows& b, Index depth, float* c,
                      Index c_stride, Index columns, const float* row_scale) {
  dispatch_rows(rows, [&](auto rows_tag) {
    row_panel<decltype(rows_tag)::value, kMode>(a, b, depth, c, c_stride, columns, row_scale);
  });
}

}  // namespace headroom::detail
