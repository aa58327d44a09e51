// SPDX-License-Identifier: MIT
// The decode-side products: a few query rows against K and V read straight from a cache, each
// element loaded once and converted to f32 in registers, never copied to scratch.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <type_traits>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "headroom/core/element.hpp"
#include "headroom/core/tensor_view.hpp"
#include "headroom/detail/micro_kernel.hpp"

namespace headroom::detail {

/// How far ahead of its use a streamed row is requested from memory: enough to cover DRAM latency
/// at one core's share of the bandwidth, little enough to stay in L1 until used. Measured (decode,
/// D = 128): on a Zen 4 VM with 4 KiB pages, 2-4 KiB suited one row per kv head, 8-16 KiB four, and
/// against no software prefetch f32 GQA gained 25%, bf16 MHA 40%. On a Xeon VM with the caches in
/// 2 MiB pages (HugePageAllocator), where the hardware prefetchers run further, 2 KiB was 6% faster
/// than 4 KiB for f32 MHA and GQA; later runs there, alternating 512 B, 1 KiB and 2 KiB four times
/// at 16k keys and 2 threads, found 1 KiB best: int8 MHA 7-9% faster than at 2 KiB (512 B 10%
/// slower), f32 MHA 3-6% and f32 GQA 5-10%; bf16 MHA the same, bf16 and int8 GQA within 3%.
/// Zen 4 again (the bench at 16k keys, 1 thread, medians of 3, two alternated rounds) prefers
/// 4 KiB to 1 KiB: f32 GQA 32/8 3-10% faster, f32 MQA 4-8%, bf16 GQA 12-23%, int8 GQA 4-20%, f32
/// MHA the same; 8 KiB lost int8 MHA a third of its speed.
inline constexpr Index kPrefetchBytes = kTargetZen4 ? 4096 : 1024;

/// Requests the `bytes` bytes at `row` (if not null) into the cache ahead of their use. A decode
/// step does little arithmetic per byte, and the hardware prefetchers alone keep too few lines in
/// flight for one core to reach its share of DRAM bandwidth.
/// \tparam kLocality 3 brings the lines to L1 (prefetcht0), 2 to L2 (prefetcht1).
template <int kLocality = 3>
EIGEN_ALWAYS_INLINE void prefetch_row(const void* row, Index bytes) {
  const char* at = static_cast<const char*>(row);
  if (at == nullptr) return;
  for (Index offset = 0; offset < bytes; offset += 64) request_line<kLocality>(at + offset);
}

/// Whether one row per kv head (MHA decode) requests rows a phase ahead too. Its products are so
/// short that on some cores the near requests and the hardware prefetchers keep both streams busy
/// and far requests only take fill buffers from them. Measured without them on a Xeon with AMX
/// (the bench, 4k-64k keys, 1 and 2 threads, medians of three alternated runs): f32 MHA 8-9% less
/// time per step (roof 0.75 -> 0.85), bf16 13-15%, int8 11-15%; a profile of decode there puts
/// most of dot_scores' samples on prefetch instructions waiting for fill buffers. On Zen 5 f32 MHA
/// was faster without them too. Zen 4 needs them: without, MHA decode at 16k keys (medians of 3,
/// two alternated rounds) ran at 20-23 tok/s instead of 33 with 1 thread for f32, 33-37 instead
/// of 67-77 for bf16, 70-76 instead of 109-113 for int8, and 1.4-1.6x slower with 2 threads.
#if defined(__AMX_TILE__)
inline constexpr bool kOneRowFarRequests = false;
#else
inline constexpr bool kOneRowFarRequests = !kTargetZen5;
#endif

/// The rows a decode product requests a phase ahead (kAheadLocality) as it goes, a step at a time:
/// up to two lists of row pointers (entries may be null), each with its row size. A tile's scores
/// request its own V rows and the next tile's K rows, its P.V the next tile's V rows: both streams
/// are then requested one phase and one tile ahead. Measured on a Zen 4 VM (2 threads, 16k keys,
/// D = 128, medians of three paired rounds) against one list (the V rows during the scores, the
/// next K rows during the P.V): f32 GQA 166 -> 217 tok/s (roof 0.69 -> 0.80); f32 and bf16 MHA,
/// bf16 GQA and int8 within the noise, as the host's read bandwidth swung from 25 to 53 GB/s.
///
/// A decode tile reads its K rows (scores), then its V rows (P.V): without help, each stream of
/// DRAM reads would idle while the other phase runs, and the hardware prefetchers would ramp up
/// again at every switch, once per tile, so the fewer bytes a tile holds (bf16, int8) the more of
/// the time is lost. Each phase therefore also requests rows a phase ahead. Measured
/// on a Xeon VM (AVX-512, 2 threads, 16k keys, D = 128), the scores requesting this tile's V rows
/// and the P.V the next tile's K rows, against the near requests alone: roof of f32 GQA 0.77 ->
/// 0.84, f32 MHA 0.88 -> 0.93, bf16 MHA 0.76 -> 0.83, bf16 GQA 0.60 -> 0.68, int8 MHA 0.68 ->
/// 0.71. prefetcht2 the same as prefetcht1 there and on a Zen 4 VM; prefetcht0 (into L1) there
/// 15-20% slower, and no far requests 20%; on Zen 5 prefetcht0 is faster, on Zen 4 far slower
/// (see kAheadLocality).
template <class T>
struct FarRows {
  const T* const* rows = nullptr;
  Index row_bytes = 0;
  const T* const* more_rows = nullptr;
  Index more_row_bytes = 0;

  EIGEN_ALWAYS_INLINE void step(Index k) const {
    if (rows != nullptr) prefetch_row<kAheadLocality>(rows[k], row_bytes);
    if (more_rows != nullptr) prefetch_row<kAheadLocality>(more_rows[k], more_row_bytes);
  }
};

#if defined(__AVX512F__)
/// Returns the packet whose lane i is the horizontal sum of acc[i], for kCount <= 16 packets.
/// A tree of 15 pairwise steps (two shuffles and an add each: 512-bit halves, 128-bit quarters,
/// then pairs and single lanes within the quarters) does what 16 separate reductions do in about
/// 130 instructions. The inputs enter the tree transposed as 4 x 4 (slot 4e + l takes acc[4l +
/// e]), because the tree leaves the sum of slot 4e + l in lane 4l + e.
template <int kCount>
EIGEN_ALWAYS_INLINE __m512 sum_each_packet(const Packet* acc) {
  static_assert(kCount >= 1 && kCount <= 16, "one packet holds at most 16 sums");
  __m512 level[16];
  HEADROOM_UNROLL
  for (int slot = 0; slot < 16; ++slot) {
    const int i = 4 * (slot % 4) + slot / 4;
    level[slot] = i < kCount ? static_cast<__m512>(acc[i]) : _mm512_setzero_ps();
  }
  // Halves: the sums of slots 2i and 2i + 1 as the low and high 256 bits.
  HEADROOM_UNROLL
  for (int i = 0; i < 8; ++i) {
    const __m512 a = level[2 * i], b = level[2 * i + 1];
    level[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  }
  // Quarters: slot 4i + q in the 128-bit quarter q.
  HEADROOM_UNROLL
  for (int i = 0; i < 4; ++i) {
    const __m512 a = level[2 * i], b = level[2 * i + 1];
    level[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD));
  }
  // Within the quarters: pairs of partial sums, then the final sums.
  HEADROOM_UNROLL
  for (int i = 0; i < 2; ++i) {
    const __m512 a = level[2 * i], b = level[2 * i + 1];
    level[i] = _mm512_add_ps(_mm512_shuffle_ps(a, b, 0x44), _mm512_shuffle_ps(a, b, 0xEE));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(level[0], level[1], 0x88),
                       _mm512_shuffle_ps(level[0], level[1], 0xDD));
}
#elif defined(__AVX2__)
/// Returns the packet whose lane i is the horizontal sum of acc[i], for kCount <= 8 packets (the
/// AVX2 form of the tree above). Two rounds of vhaddps leave, for four inputs each, their 128-bit
/// halves' sums side by side; adding the halves finishes them. No lane-crossing shuffle but the
/// extract and insert of 128 bits: vperm2f128 is 8 micro-ops on Zen 1 and 2. Against 8 separate
/// reductions (about 6 instructions and a scalar store each) this is 11 instructions: callgrind
/// counts 6.5% fewer in dot_scores<4> (GQA decode), whose time on Zen 1 is spent waiting for K.
template <int kCount>
EIGEN_ALWAYS_INLINE __m256 sum_each_packet(const Packet* acc) {
  static_assert(kCount >= 1 && kCount <= 8, "one packet holds at most 8 sums");
  static_assert(sizeof(Packet) == sizeof(__m256), "without AVX-512 the float packet is 8 lanes");
  __m256 in[8];
  HEADROOM_UNROLL
  for (int i = 0; i < 8; ++i) {
    in[i] = i < kCount ? static_cast<__m256>(acc[i]) : _mm256_setzero_ps();
  }
  // Lane l of quad q (l < 4 low half, l >= 4 high half) holds a half-sum of input 4q + l % 4.
  const __m256 quad0 = _mm256_hadd_ps(_mm256_hadd_ps(in[0], in[1]), _mm256_hadd_ps(in[2], in[3]));
  const __m256 quad1 = _mm256_hadd_ps(_mm256_hadd_ps(in[4], in[5]), _mm256_hadd_ps(in[6], in[7]));
  const __m128 low = _mm_add_ps(_mm256_castps256_ps128(quad0), _mm256_extractf128_ps(quad0, 1));
  const __m128 high = _mm_add_ps(_mm256_castps256_ps128(quad1), _mm256_extractf128_ps(quad1, 1));
  return _mm256_insertf128_ps(_mm256_castps128_ps256(low), high, 1);
}
#endif

/// Returns `value`, which the compiler must then hold in a register. GCC otherwise folds a load
/// used by several FMAs into each of them as a memory operand: dot_scores<4> loaded every f32 K
/// packet (or, for int8 keys, every Q packet) four times, 20 loads per 16 FMAs, and the load
/// ports bounded the product. Measured here (Zen 5, GQA 32/8 decode from L3, 1 thread, medians
/// of 8 alternated runs): int8 keys 8% and f32 keys 6% faster.
EIGEN_ALWAYS_INLINE Packet in_register(Packet value) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __asm__("" : "+v"(value));
#endif
  return value;
}

/// Writes scores[r * score_stride + j] = key_scale[j] * sums[r * kKeys + j].
template <int kRows, int kKeys>
EIGEN_ALWAYS_INLINE void store_lane_sums(const float* sums, const float* key_scale, float* scores,
                                         Index score_stride) {
  HEADROOM_UNROLL
  for (int r = 0; r < kRows; ++r) {
    HEADROOM_UNROLL
    for (int j = 0; j < kKeys; ++j) {
      scores[r * score_stride + j] = key_scale[j] * sums[r * kKeys + j];
    }
  }
}

/// Writes scores[r * score_stride + j] = key_scale[j] * sum of the lanes of acc[r][j], for the
/// kRows x kKeys accumulators of a block of dot products.
template <int kRows, int kKeys>
EIGEN_ALWAYS_INLINE void store_dot_sums(const Packet (&acc)[kRows][kKeys], const float* key_scale,
                                        float* scores, Index score_stride) {
  using namespace Eigen::internal;
#if defined(__AVX512F__)
  if constexpr (kRows * kKeys <= 16 && kRows * kKeys > 1) {
    const __m512 sums = sum_each_packet<kRows * kKeys>(&acc[0][0]);  // lane r * kKeys + j
    if constexpr (kKeys == 16 || kKeys == 8 || kKeys == 4) {
      // Rows of 16, 8 or 4 sums: each row is a 512-, 256- or 128-bit part of the packet.
      __m512 scales;
      if constexpr (kKeys == 16) scales = _mm512_loadu_ps(key_scale);
      if constexpr (kKeys == 8) scales = _mm512_broadcast_f32x8(_mm256_loadu_ps(key_scale));
      if constexpr (kKeys == 4) scales = _mm512_broadcast_f32x4(_mm_loadu_ps(key_scale));
      const __m512 scaled = _mm512_mul_ps(sums, scales);
      HEADROOM_UNROLL
      for (int r = 0; r < kRows; ++r) {
        float* row = scores + r * score_stride;
        if constexpr (kKeys == 16) _mm512_storeu_ps(row, scaled);
        if constexpr (kKeys == 8) {
          _mm256_storeu_ps(row, r == 0 ? _mm512_castps512_ps256(scaled)
                                       : _mm512_extractf32x8_ps(scaled, 1));
        }
        if constexpr (kKeys == 4) {
          const __m128 part = r == 0   ? _mm512_castps512_ps128(scaled)
                              : r == 1 ? _mm512_extractf32x4_ps(scaled, 1)
                              : r == 2 ? _mm512_extractf32x4_ps(scaled, 2)
                                       : _mm512_extractf32x4_ps(scaled, 3);
          _mm_storeu_ps(row, part);
        }
      }
    } else {
      alignas(64) float lanes[16];
      _mm512_store_ps(lanes, sums);
      store_lane_sums<kRows, kKeys>(lanes, key_scale, scores, score_stride);
    }
    return;
  }
#elif defined(__AVX2__)
  if constexpr (kRows * kKeys <= 8 && kRows * kKeys > 1) {
    const __m256 sums = sum_each_packet<kRows * kKeys>(&acc[0][0]);  // lane r * kKeys + j
    if constexpr (kKeys == 8 || kKeys == 4) {
      // Rows of 8 or 4 sums: each row is a 256- or 128-bit part of the packet.
      const __m256 scales =
          kKeys == 8 ? _mm256_loadu_ps(key_scale)
                     : _mm256_broadcast_ps(reinterpret_cast<const __m128*>(key_scale));
      const __m256 scaled = _mm256_mul_ps(sums, scales);
      if constexpr (kKeys == 8) {
        _mm256_storeu_ps(scores, scaled);
      } else {
        _mm_storeu_ps(scores, _mm256_castps256_ps128(scaled));
        if constexpr (kRows == 2) {
          _mm_storeu_ps(scores + score_stride, _mm256_extractf128_ps(scaled, 1));
        }
      }
    } else {
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, sums);
      store_lane_sums<kRows, kKeys>(lanes, key_scale, scores, score_stride);
    }
    return;
  }
#endif
  HEADROOM_UNROLL
  for (int r = 0; r < kRows; ++r) {
    HEADROOM_UNROLL
    for (int j = 0; j < kKeys; ++j) scores[r * score_stride + j] = key_scale[j] * predux(acc[r][j]);
  }
}

/// Scores of kRows query rows against `count` keys: scores[r * score_stride + c] =
/// key_scale[c] * (q[r] . k[c]). Vectorised along the head dim (dk a multiple of kPacketSize):
/// kRows x kKeys accumulators each gather one dot product, then fold horizontally. With one to a
/// few rows this reads K at memory speed, where a transposed copy would cost more than the math.
///   q: [kRows, dk] aligned; k: count row pointers of dk elements; key_scale: [count];
///   prefetch: count row pointers (entries may be null, rows of dk elements of type A) to request
///             meanwhile, or null. (K rows rotated into scratch request the source's rows.)
///   far: the rows to request a phase ahead at each key (see FarRows).
template <int kRows, class T, class A>
void dot_scores(const float* q, Index dk, const T* const* k, const float* key_scale, Index count,
                const A* const* prefetch, float* scores, Index score_stride,
                const FarRows<A>& far = {}) {
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
    for (int j = 0; j < kBlock; ++j) far.step(c + j);
    Packet acc[kRows][kBlock];
    HEADROOM_UNROLL
    for (int r = 0; r < kRows; ++r) {
      HEADROOM_UNROLL
      for (int j = 0; j < kBlock; ++j) acc[r][j] = pset1<Packet>(0.0f);
    }
    for (Index d = 0; d < dk; d += kPacketSize) {
      Packet k_d[kBlock];
      HEADROOM_UNROLL
      for (int j = 0; j < kBlock; ++j) k_d[j] = in_register(load_packet(k[c + j] + d));
      HEADROOM_UNROLL
      for (int r = 0; r < kRows; ++r) {
        const Packet q_d = in_register(pload<Packet>(q + r * dk + d));
        HEADROOM_UNROLL
        for (int j = 0; j < kBlock; ++j) acc[r][j] = pmadd(q_d, k_d[j], acc[r][j]);
      }
    }
    store_dot_sums(acc, key_scale + c, scores + c, score_stride);
  };
  for (; c + kKeys <= count; c += kKeys) block(std::integral_constant<int, kKeys>{});
  for (; c < count; ++c) block(std::integral_constant<int, 1>{});
}

/// The B operand of the micro-kernel read straight from a KV source: row k at rows[k], converted
/// to f32 as it is loaded (int8 rows unscaled: the caller multiplies A's column k by row k's
/// scale first, once per tile rather than once per row and panel of the product); rows
/// `ahead[k]` (if given) are requested from memory meanwhile, and `far`'s rows a phase ahead (see
/// FarRows).
template <class T>
struct SourceRows {
  static constexpr bool kStreamed = true;
  const T* const* rows;
  const T* const* ahead;  // or null
  Index row_bytes;
  FarRows<T> far = {};

  EIGEN_ALWAYS_INLINE Packet load(Index k, Index col) const { return load_packet(rows[k] + col); }
  /// Requests row ahead[k] at step k of a product (when `depth` > 0 and there are such rows).
  struct Plan {
    const T* const* ahead;
    Index row_bytes;
    FarRows<T> far;
    EIGEN_ALWAYS_INLINE void step(Index k) const {
      if (ahead != nullptr) prefetch_row(ahead[k], row_bytes);
      far.step(k);
    }
  };
  EIGEN_ALWAYS_INLINE Plan prefetch_plan(Index depth) const {
    return depth > 0 ? Plan{ahead, row_bytes, far} : Plan{nullptr, row_bytes, {}};
  }
};

}  // namespace headroom::detail
