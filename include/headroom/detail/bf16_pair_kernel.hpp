// SPDX-License-Identifier: MIT
// The products of a key-major tile for bf16 queries, keys and values on processors with AVX512_BF16:
// one vdpbf16ps multiplies 16 pairs of bf16 values and adds each pair's two products to an f32 lane,
// twice the work of an f32 FMA in the same time. Both operands therefore hold pairs of consecutive
// depth elements: the broadcast operand as one 32-bit value, the vector operand as 16 such pairs.
//
// With the tile's rows along the vector lanes (as in the f32 key-major path), both products of a tile
// have the same form, C[i][r] (+)= sum over depth pairs e of A(i, e) . B(e, r):
//   scores  S^T[c][r] = scale * sum_e K_c(e) . Q^T(e, r)   A = K rows in place, B = Q^T in pairs
//   output  O^T[d][r] = rescale[r] O^T[d][r] + sum_e V^T_d(e) . P^T(e, r)   A = V in key pairs,
//                                                                          B = P^T in key pairs
// The probabilities are rounded to bf16 for the second product, as the values already are; both
// products accumulate in f32.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "headroom/core/tensor_view.hpp"
#include "headroom/detail/micro_kernel.hpp"

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512F__)
#include <immintrin.h>
#if defined(__GNUC__)
#include <cpuid.h>
#endif
#define HEADROOM_HAS_BF16_DOT 1
#else
#define HEADROOM_HAS_BF16_DOT 0
#endif

namespace headroom::detail {

/// Whether this build has the bf16 pair products (compiled for AVX512_BF16).
inline constexpr bool kHasBf16Dot = HEADROOM_HAS_BF16_DOT != 0;

/// How key-major tiles of bf16 queries, keys and values are multiplied: AMX tiles
/// (amx_tile_kernel.hpp), vdpbf16ps pair products, or conversions to f32 for the FMA micro-kernel.
enum class Bf16PairProducts {
  kWhereFaster,  ///< the default: AMX tiles where available, else pair products on processors
                 ///< where vdpbf16ps outruns the FMAs (see below), else f32
  kAlways,       ///< pair products wherever the build has them (tests check them on any such processor)
  kAmxTiles,     ///< AMX tiles wherever available, else f32 (tests)
  kNever,        ///< f32
};

/// The choice for this process.
inline std::atomic<Bf16PairProducts>& bf16_pair_products() {
  static std::atomic<Bf16PairProducts> choice{Bf16PairProducts::kWhereFaster};
  return choice;
}

/// Whether vdpbf16ps does more f32 work per second than FMAs here. Measured with independent
/// chains of each: AMD Zen 4 issues vdpbf16ps at the FMA rate, twice the FLOPs; an Intel Xeon
/// with AVX512_BF16 (and AMX) issues it at a quarter of the FMA rate, half the FLOPs, and there the
/// pair products ran bf16 prefill at 0.72x the f32 rate where converting to f32 runs at about 1x.
/// So: AMD processors only (the vendor string of cpuid leaf 0).
inline bool bf16_dot_outruns_fma() {
#if HEADROOM_HAS_BF16_DOT && defined(__GNUC__)
  static const bool amd = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (__get_cpuid(0, &eax, &ebx, &ecx, &edx) == 0) return false;
    return ebx == 0x68747541u && edx == 0x69746e65u && ecx == 0x444d4163u;  // "AuthenticAMD"
  }();
  return amd;
#else
  return false;
#endif
}

/// Whether bf16 tiles use the pair products in this process (see Bf16PairProducts).
inline bool use_bf16_pair_products() {
  if (!kHasBf16Dot) return false;
  switch (bf16_pair_products().load(std::memory_order_relaxed)) {
    case Bf16PairProducts::kAlways:
      return true;
    case Bf16PairProducts::kAmxTiles:
    case Bf16PairProducts::kNever:
      return false;
    case Bf16PairProducts::kWhereFaster:
      break;
  }
  return bf16_dot_outruns_fma();
}

/// Raw bits of bf16 values, as the pair layouts store them.
using Bf16Bits = std::uint16_t;

/// Pairs per vector: 16 lanes of two bf16 each.
inline constexpr int kPairLanes = 16;

#if HEADROOM_HAS_BF16_DOT
// PacketBlock<Packet16f> drops the vector type's alignment attribute, harmlessly: it is a local.
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif
/// 16 vectors of 16 floats, as Eigen's register transpose (ptranspose) takes them.
using PacketBlock16 = Eigen::internal::PacketBlock<Eigen::internal::Packet16f, kPairLanes>;
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
#endif

/// Writes Q^T in pairs along the head dim: out[(d / 2) * 2 * rows_pad + 2 r + d % 2] = the bits
/// of q_r[d] as bf16 (row r at row(r), elements dim_stride apart), zero for rows in [rows, rows_pad).
/// Each pair is one 32-bit element of a transpose: contiguous bf16 rows go 16 x 16 pairs at a
/// time through register transposes (bit moves only), the rest element by element.
template <class RowAt>
void pack_query_pairs(Index rows, Index dk, const RowAt& row, Index dim_stride, Index rows_pad,
                      Bf16Bits* out) {
  std::fill(out, out + dk * rows_pad, Bf16Bits{0});
  Index full = 0;
#if HEADROOM_HAS_BF16_DOT
  using QT = std::remove_cv_t<std::remove_pointer_t<decltype(row(0))>>;
  if constexpr (std::is_same_v<QT, Eigen::bfloat16>) {
    if (dim_stride == 1 && dk % (2 * kPairLanes) == 0) full = rows / kPairLanes * kPairLanes;
    using namespace Eigen::internal;
    using Block = PacketBlock16;
    for (Index r0 = 0; r0 < full; r0 += kPairLanes) {
      for (Index d0 = 0; d0 < dk; d0 += 2 * kPairLanes) {
        Block block;
        for (int i = 0; i < kPairLanes; ++i) {
          block.packet[i] = _mm512_castsi512_ps(_mm512_loadu_si512(row(r0 + i) + d0));
        }
        ptranspose(block);
        for (int e = 0; e < kPairLanes; ++e) {
          _mm512_storeu_si512(out + (d0 / 2 + e) * 2 * rows_pad + 2 * r0,
                              _mm512_castps_si512(block.packet[e]));
        }
      }
    }
  }
#endif
  for (Index r = full; r < rows; ++r) {
    const auto* q_r = row(r);  // bf16 (exact), or f32 rounded to bf16
    for (Index d = 0; d < dk; ++d) {
      const Eigen::bfloat16 x(static_cast<float>(q_r[d * dim_stride]));
      out[d / 2 * 2 * rows_pad + 2 * r + d % 2] = Eigen::numext::bit_cast<Bf16Bits>(x);
    }
  }
}

#if HEADROOM_HAS_BF16_DOT

/// Indices that interleave the halves of a 32 x 16-bit vector: [x0..x15 | y0..y15] becomes
/// [x0, y0, x1, y1, ..., x15, y15].
inline __m512i interleave_halves_index() {
  return _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22,
                          6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
}

/// C[i][r] for kRows rows i and kPackets packets of r from `col` (see the header):
///   A(i, e): the 32 bits at a[i] + e * a_stride (two bf16, in Bf16Bits units)
///   B(e, r): the 32 bits at b + e * b_stride + 2 r
///   kAccumulate false: C = out_scale * sum; true: C = rescale[r] * C + sum.
/// `prefetch` requests its lines as the depth goes.
template <int kRows, int kPackets, bool kAccumulate>
EIGEN_ALWAYS_INLINE void bf16_pair_kernel(const Bf16Bits* const* a, Index a_stride,
                                          const Bf16Bits* b, Index b_stride, Index col,
                                          Index pairs, float* c, Index c_stride,
                                          const float* rescale, float out_scale,
                                          const LinePrefetcher::Slice& prefetch) {
  __m512 acc[kRows][kPackets];
  HEADROOM_UNROLL
  for (int i = 0; i < kRows; ++i) {
    HEADROOM_UNROLL
    for (int p = 0; p < kPackets; ++p) acc[i][p] = _mm512_setzero_ps();
  }
  const Bf16Bits* a_row[kRows];
  HEADROOM_UNROLL
  for (int i = 0; i < kRows; ++i) a_row[i] = a[i];
  const Bf16Bits* b_at = b + 2 * col;
  for (Index e = 0; e < pairs; ++e) {
    prefetch.step(e);
    __m512bh b_pairs[kPackets];
    HEADROOM_UNROLL
    for (int p = 0; p < kPackets; ++p) {
      b_pairs[p] = (__m512bh)_mm512_loadu_si512(b_at + 2 * kPairLanes * p);
    }
    HEADROOM_UNROLL
    for (int i = 0; i < kRows; ++i) {
      std::uint32_t bits;
      std::memcpy(&bits, a_row[i] + e * a_stride, sizeof(bits));
      const __m512bh a_pair = (__m512bh)_mm512_set1_epi32(static_cast<int>(bits));
      HEADROOM_UNROLL
      for (int p = 0; p < kPackets; ++p) acc[i][p] = _mm512_dpbf16_ps(acc[i][p], a_pair, b_pairs[p]);
    }
    b_at += b_stride;
  }
  const __m512 scale = _mm512_set1_ps(out_scale);
  HEADROOM_UNROLL
  for (int i = 0; i < kRows; ++i) {
    HEADROOM_UNROLL
    for (int p = 0; p < kPackets; ++p) {
      float* out = c + i * c_stride + col + kPairLanes * p;
      if constexpr (kAccumulate) {
        const __m512 factor = _mm512_loadu_ps(rescale + col + kPairLanes * p);
        _mm512_storeu_ps(out, _mm512_fmadd_ps(_mm512_loadu_ps(out), factor, acc[i][p]));
      } else {
        _mm512_storeu_ps(out, _mm512_mul_ps(acc[i][p], scale));
      }
    }
  }
}

/// Runs bf16_pair_kernel over rows [0, rows) (A row i at a_row(i)) and the packets
/// [packet_first, packet_end) of r: 6 rows x 4 packets register tiles, narrower at the edges.
/// With a prefetcher, the first panel requests its lines (as key_major_scores does).
template <bool kAccumulate, class RowAt>
void bf16_pair_product(Index rows, const RowAt& a_row, Index a_stride, const Bf16Bits* b,
                       Index b_stride, Index packet_first, Index packet_end, Index pairs,
                       float* c, Index c_stride, const float* rescale, float out_scale,
                       LinePrefetcher* prefetcher) {
  constexpr int kTileA = 6;
  if (prefetcher != nullptr) prefetcher->spread_over((rows + kTileA - 1) / kTileA * pairs);
  const auto block = [&](Index i0, Index p, auto rows_tag, auto packets_tag) {
    constexpr int kRows = decltype(rows_tag)::value, kPackets = decltype(packets_tag)::value;
    const Bf16Bits* a[kRows];
    for (int i = 0; i < kRows; ++i) a[i] = a_row(i0 + i);
    const LinePrefetcher::Slice slice =
        prefetcher != nullptr && p == packet_first ? prefetcher->take(pairs) : LinePrefetcher::Slice{};
    bf16_pair_kernel<kRows, kPackets, kAccumulate>(a, a_stride, b, b_stride, p * kPairLanes, pairs,
                                                   c + i0 * c_stride, c_stride, rescale, out_scale,
                                                   slice);
  };
  const auto panel = [&](Index p, auto packets_tag) {
    Index i0 = 0;
    for (; i0 + kTileA <= rows; i0 += kTileA) {
      block(i0, p, std::integral_constant<int, kTileA>{}, packets_tag);
    }
    if (i0 < rows) {
      dispatch_up_to<kTileA - 1>(rows - i0, [&](auto n) { block(i0, p, n, packets_tag); });
    }
  };
  Index p = packet_first;
  for (; p + 4 <= packet_end; p += 4) panel(p, std::integral_constant<int, 4>{});
  for (; p + 2 <= packet_end; p += 2) panel(p, std::integral_constant<int, 2>{});
  for (; p < packet_end; ++p) panel(p, std::integral_constant<int, 1>{});
}

/// Writes P^T in key pairs for the row packets [packet_first, packet_end): out[(c / 2) * 2 *
/// rows_pad + 2 r + c % 2] = bf16(p[c * rows_pad + r]) for keys c < count, 0 for the odd key past it.
inline void pack_probability_pairs(const float* p, Index count, Index rows_pad,
                                   Index packet_first, Index packet_end, Bf16Bits* out) {
  const __m512i interleave = interleave_halves_index();
  const __m512 zero = _mm512_setzero_ps();
  for (Index c = 0; c < count; c += 2) {
    const float* first = p + c * rows_pad;
    const float* second = c + 1 < count ? first + rows_pad : nullptr;
    Bf16Bits* pairs = out + c * rows_pad;  // (c / 2) * 2 * rows_pad
    for (Index q = packet_first; q < packet_end; ++q) {
      const Index r = q * kPairLanes;
      const __m512 x = _mm512_loadu_ps(first + r);
      const __m512 y = second != nullptr ? _mm512_loadu_ps(second + r) : zero;
      const __m512i halves = (__m512i)_mm512_cvtne2ps_pbh(y, x);
      _mm512_storeu_si512(pairs + 2 * r, _mm512_permutexvar_epi16(interleave, halves));
    }
  }
}

/// Writes the V tile in key pairs: out[(c / 2) * 2 * dv + 2 d + c % 2] = v_c[d] for keys c <
/// count (rows at v[c], contiguous), 0 for the odd key past it; dv % 16 == 0.
inline void pack_value_pairs(const Eigen::bfloat16* const* v, Index count, Index dv,
                             Bf16Bits* out) {
  const __m512i interleave = interleave_halves_index();
  for (Index c = 0; c < count; c += 2) {
    Bf16Bits* pairs = out + c * dv;
    const Eigen::bfloat16* first = v[c];
    const Eigen::bfloat16* second = c + 1 < count ? v[c + 1] : nullptr;
    for (Index d = 0; d < dv; d += kPairLanes) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(first + d));
      const __m256i y = second != nullptr
                            ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(second + d))
                            : _mm256_setzero_si256();
      const __m512i halves = _mm512_inserti64x4(_mm512_castsi256_si512(x), y, 1);
      _mm512_storeu_si512(pairs + 2 * d, _mm512_permutexvar_epi16(interleave, halves));
    }
  }
}

#else

// Declared for the kernel's branches that only builds with AVX512_BF16 instantiate.
template <bool kAccumulate, class RowAt>
void bf16_pair_product(Index rows, const RowAt& a_row, Index a_stride, const Bf16Bits* b,
                       Index b_stride, Index packet_first, Index packet_end, Index pairs,
                       float* c, Index c_stride, const float* rescale, float out_scale,
                       LinePrefetcher* prefetcher);
void pack_probability_pairs(const float* p, Index count, Index rows_pad, Index packet_first,
                            Index packet_end, Bf16Bits* out);
void pack_value_pairs(const Eigen::bfloat16* const* v, Index count, Index dv, Bf16Bits* out);

#endif  // HEADROOM_HAS_BF16_DOT

}  // namespace headroom::detail
