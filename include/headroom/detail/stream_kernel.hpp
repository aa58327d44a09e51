// SPDX-License-Identifier: MIT
// The decode-side products: a few query rows against K and V read straight from a cache, each
// element loaded once and converted to f32 in registers, never copied to scratch.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "headroom/core/element.hpp"
#include "headroom/core/tensor_view.hpp"
#include "headroom/detail/micro_kernel.hpp"

namespace headroom::detail {

/// How far ahead of its use a streamed row is requested from memory: enough to cover DRAM latency
/// at one core's share of the bandwidth, little enough to stay in L1 until used. Measured (decode,
/// D = 128): on a Zen 4 VM with 4 KiB pages, 2-4 KiB suited one row per kv head, 8-16 KiB four, and
/// against no software prefetch f32 GQA gained 25%, bf16 MHA 40%. On a Xeon VM with the caches in
/// 2 MiB pages (HugePageAllocator), where the hardware prefetchers run further, 2 KiB is 6% faster
/// than 4 KiB for f32 MHA and GQA with 1 and 2 threads, and 1 KiB or 8 KiB slower again.
inline constexpr Index kPrefetchBytes = 2048;

/// Requests the `bytes` bytes at `row` (if not null) into the cache ahead of their use. A decode
/// step does little arithmetic per byte, and the hardware prefetchers alone keep too few lines in
/// flight for one core to reach its share of DRAM bandwidth.
/// \tparam kLocality 3 brings the lines to L1 (prefetcht0), 2 to L2 (prefetcht1).
template <int kLocality = 3>
EIGEN_ALWAYS_INLINE void prefetch_row(const void* row, Index bytes) {
  const char* at = static_cast<const char*>(row);
  if (at == nullptr) return;
#if defined(__GNUC__)
  for (Index offset = 0; offset < bytes; offset += 64) __builtin_prefetch(at + offset, 0, kLocality);
#else
  for (Index offset = 0; offset < bytes; offset += 64) Eigen::internal::prefetch(at + offset);
#endif
}

/// Scores of kRows query rows against `count` keys: scores[r * score_stride + c] =
/// key_scale[c] * (q[r] . k[c]). Vectorised along the head dim (dk a multiple of kPacketSize):
/// kRows x kKeys accumulators each gather one dot product, then fold horizontally. With one to a
/// few rows this reads K at memory speed, where a transposed copy would cost more than the math.
///   q: [kRows, dk] aligned; k: count row pointers of dk elements; key_scale: [count];
///   prefetch: count row pointers (entries may be null, rows of dk elements of type A) to request
///             meanwhile, or null. (K rows rotated into scratch request the source's rows.)
template <int kRows, class T, class A>
void dot_scores(const float* q, Index dk, const T* const* k, const float* key_scale, Index count,
                const A* const* prefetch, float* scores, Index score_stride) {
  using namespace Eigen::internal;
  // Enough independent accumulators to hide the FMA latency, few enough to stay in registers.
  constexpr int kKeys = std::max(1, (kPacketSize == 16 ? 16 : 8) / kRows);
  const Index row_bytes = dk * static_cast<Index>(sizeof(A));
  Index c = 0;
  const auto block = [&](auto keys_tag) {
    constexpr int kBlock = decltype(keys_tag)::value;
    if (prefetch != nullptr) {
      for (int j = 0; j < kBlock; ++j) prefetch_row(prefetch[c + j], row_bytes);
    }
    Packet acc[kRows][kBlock];
    HEADROOM_UNROLL
    for (int r = 0; r < kRows; ++r) {
      HEADROOM_UNROLL
      for (int j = 0; j < kBlock; ++j) acc[r][j] = pset1<Packet>(0.0f);
    }
    for (Index d = 0; d < dk; d += kPacketSize) {
      Packet k_d[kBlock];
      HEADROOM_UNROLL
      for (int j = 0; j < kBlock; ++j) k_d[j] = load_packet(k[c + j] + d);
      HEADROOM_UNROLL
      for (int r = 0; r < kRows; ++r) {
        const Packet q_d = pload<Packet>(q + r * dk + d);
        HEADROOM_UNROLL
        for (int j = 0; j < kBlock; ++j) acc[r][j] = pmadd(q_d, k_d[j], acc[r][j]);
      }
    }
    HEADROOM_UNROLL
    for (int r = 0; r < kRows; ++r) {
      HEADROOM_UNROLL
      for (int j = 0; j < kBlock; ++j) {
        scores[r * score_stride + c + j] = key_scale[c + j] * predux(acc[r][j]);
      }
    }
  };
  for (; c + kKeys <= count; c += kKeys) block(std::integral_constant<int, kKeys>{});
  for (; c < count; ++c) block(std::integral_constant<int, 1>{});
}

/// The B operand of the micro-kernel read straight from a KV source: row k at rows[k], converted
/// to f32 as it is loaded, its int8 scale folded into A; rows `ahead[k]` (if given) are requested
/// from memory meanwhile.
template <class T>
struct SourceRows {
  static constexpr bool kStreamed = true;
  const T* const* rows;
  const float* scales;
  const T* const* ahead;  // or null
  Index row_bytes;

  EIGEN_ALWAYS_INLINE Packet load(Index k, Index col) const { return load_packet(rows[k] + col); }
  EIGEN_ALWAYS_INLINE float scale(Index k) const {
    if constexpr (kHasScale<T>) return scales[k];
    return 1.0f;
  }
  /// Requests row ahead[k] at step k of a product (when `depth` > 0 and there are such rows).
  struct Plan {
    const T* const* ahead;
    Index row_bytes;
    EIGEN_ALWAYS_INLINE void step(Index k) const {
      if (ahead != nullptr) prefetch_row(ahead[k], row_bytes);
    }
  };
  EIGEN_ALWAYS_INLINE Plan prefetch_plan(Index depth) const {
    return Plan{depth > 0 ? ahead : nullptr, row_bytes};
  }
};

}  // namespace headroom::detail
