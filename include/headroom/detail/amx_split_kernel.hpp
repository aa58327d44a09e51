// SPDX-License-Identifier: MIT
// The products of a key-major tile for f32 queries, keys and values on AMX tiles, within a small
// factor of f32 FMAs' rounding. Each f32 value is split into three bf16 parts, x = hi + mid + lo
// exactly (for |x| >= 2^-110, where every part is a normal number):
//   hi  = x with its lower 16 bits cleared (the top 8 significant bits, truncated, so no value of
//         the f32 range rounds past it),
//   mid = x - hi rounded to bf16 (the next 8 bits),
//   lo  = x - hi - mid, which has at most 8 significant bits left and is a bf16 value.
// A product a.b then sums the six part products whose weights reach 2^-16 of |a.b|:
//   hi.hi + hi.mid + hi.lo + mid.hi + mid.mid + lo.hi
// ("bf16x6": Henry, Tang and Heinecke, "Leveraging the bfloat16 Artificial Intelligence Datatype
// For Higher-Precision Computations", ARITH 2019, Section III). Each product of two bf16 parts is
// exact in f32, and tdpbf16ps accumulates in f32. The three dropped products, mid.lo + lo.mid +
// lo.lo, weigh below 2^-7 * 2^-16 * 2 + 2^-32, about 2^-22, of |a_i b_i| per term, and each term
// enters the f32 accumulator six times: a few f32 roundings, where f32 FMAs round each term once,
// to 2^-24. (A round-to-nearest hi would leave 2^-24 per term, but could round the largest finite
// values to inf.) AMX and the conversions flush parts below 2^-126 to zero: a flushed part p of
// a_i moves the term by |p b_i| < 2^-126 |b_i|.
//
// The six products run at 1024 bf16 FLOPs a cycle, six times over: about 2.6 times the f32 FMA
// rate of the same core. The layouts are those of amx_tile_kernel.hpp, one copy per part:
//   A operands row-major bf16 [rows_pad, depth] (Q, P), B operands in pairs along their depth
//   [depth / 2, cols, 2] (K^T, V), parts `part_stride` elements apart.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <cstdint>

#include "headroom/core/tensor_view.hpp"
#include "headroom/detail/amx_tile_kernel.hpp"
#include "headroom/detail/micro_kernel.hpp"

namespace headroom::detail {

/// Parts of each f32 operand of the split products.
inline constexpr Index kSplitParts = 3;

/// How key-major tiles of f32 queries, keys and values are multiplied.
enum class F32TileProducts {
  kWhereFaster,  ///< the default: AMX split products where available and the tile has the rows
                 ///< to fill them (see kMinSplitRows), else FMAs
  kAmxSplit,     ///< AMX split products wherever available (tests)
  kFma,          ///< f32 FMAs (the micro-kernels of micro_kernel.hpp)
};

/// The choice for this process.
inline std::atomic<F32TileProducts>& f32_tile_products() {
  static std::atomic<F32TileProducts> choice{F32TileProducts::kWhereFaster};
  return choice;
}

/// Rows of a work item from which the split products outrun the FMAs by default: the K and V
/// parts are formed once per tile and shared by the item's rows, so few rows do not repay them.
/// Measured here: MQA decode (32 rows) ran 1.6 times slower on them, absorbed MLA decode (128
/// rows) and prefill (512) faster.
inline constexpr Index kMinSplitRows = 128;

/// Whether key-major f32 tiles of work items of `rows` rows use the AMX split products here.
inline bool use_amx_split_products(Index rows) {
  if (!kHasAmx) return false;
  const F32TileProducts choice = f32_tile_products().load(std::memory_order_relaxed);
  if (choice == F32TileProducts::kFma) return false;
  return (choice == F32TileProducts::kAmxSplit || rows >= kMinSplitRows) && amx_available();
}

/// The depth steps of kAmxDepth in a product `depth` deep.
inline Index amx_depth_steps(Index depth) { return (depth + kAmxDepth - 1) / kAmxDepth; }

#if HEADROOM_HAS_AMX

/// The three parts of 16 f32 values, each a bf16 value held as an f32 (lower 16 bits 0): the pair
/// units of join_pairs rely on it.
struct SplitPacket {
  __m512 hi, mid, lo;
};

/// Splits x into hi + mid + lo (see the header).
EIGEN_ALWAYS_INLINE SplitPacket split_bf16x3(__m512 x) {
  const __m512i upper = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __m512 hi = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), upper));
  const __m512 rest = _mm512_sub_ps(x, hi);
  const __m256i mid_bits = (__m256i)_mm512_cvtneps_pbh(rest);
  const __m512 mid = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(mid_bits), 16));
  // Below 2^-110 the rest can be subnormal, which the conversion takes as zero: lo is then the
  // whole rest, with bits in its lower half that are not bf16's. They go (flushed, as AMX would).
  const __m512i lo = _mm512_and_si512(_mm512_castps_si512(_mm512_sub_ps(rest, mid)), upper);
  return {hi, mid, _mm512_castsi512_ps(lo)};
}

/// Joins two bf16 values held as f32 into pair units: `even` in the lower half of each 32 bits,
/// `odd` in the upper, as the B operands of tdpbf16ps hold consecutive depth elements.
EIGEN_ALWAYS_INLINE __m512i join_pairs(__m512 even, __m512 odd) {
  return _mm512_or_si512(_mm512_castps_si512(odd),
                         _mm512_srli_epi32(_mm512_castps_si512(even), 16));
}

/// Writes rows [row_first, row_end) of the f32 rows at src (row r at src + r * src_stride) as the
/// three bf16 parts of A operands: part p of element d of row r at out[p * part_stride + r *
/// out_stride + d], for d < depth; depth % 32 == 0.
inline void pack_split_rows(const float* src, Index src_stride, Index row_first, Index row_end,
                            Index depth, Bf16Bits* out, Index out_stride, Index part_stride) {
  for (Index r = row_first; r < row_end; ++r) {
    const float* row = src + r * src_stride;
    Bf16Bits* dst = out + r * out_stride;
    for (Index d = 0; d < depth; d += 2 * kPairLanes) {
      const SplitPacket x = split_bf16x3(_mm512_loadu_ps(row + d));
      const SplitPacket y = split_bf16x3(_mm512_loadu_ps(row + d + kPairLanes));
      // cvtne2ps2bf16(b, a) puts a's 16 values first; on bf16 values it rounds nothing.
      _mm512_storeu_si512(dst + d, (__m512i)_mm512_cvtne2ps_pbh(y.hi, x.hi));
      _mm512_storeu_si512(dst + part_stride + d, (__m512i)_mm512_cvtne2ps_pbh(y.mid, x.mid));
      _mm512_storeu_si512(dst + 2 * part_stride + d, (__m512i)_mm512_cvtne2ps_pbh(y.lo, x.lo));
    }
  }
}

/// Writes the three parts of 16 pair units, from the f32 values of the pairs' even and odd
/// elements, at dst + p * part_stride.
EIGEN_ALWAYS_INLINE void store_split_pairs(__m512 even, __m512 odd, Bf16Bits* dst,
                                           Index part_stride) {
  const SplitPacket e = split_bf16x3(even), o = split_bf16x3(odd);
  _mm512_storeu_si512(dst, join_pairs(e.hi, o.hi));
  _mm512_storeu_si512(dst + part_stride, join_pairs(e.mid, o.mid));
  _mm512_storeu_si512(dst + 2 * part_stride, join_pairs(e.lo, o.lo));
}

/// Writes K^T of a tile of kKeys keys in pairs along dk, three parts: part p of the pair (d, d +
/// 1) of key c at out[p * part_stride + (d / 2) * 2 * kKeys + 2 c + d % 2], zero for keys c in
/// [count, kKeys); rows k[c] contiguous, dk % 16 == 0. Blocks of 16 keys by 16 dims go through a
/// register transpose, which puts each dim's 16 keys in one vector.
template <Index kKeys>
void pack_split_key_pairs(const float* const* k, Index count, Index dk, Bf16Bits* out,
                          Index part_stride) {
  static_assert(kKeys % kPairLanes == 0, "keys come in blocks of 16");
  using namespace Eigen::internal;  // ptranspose
  using Block = PacketBlock16;
  for (Index c0 = 0; c0 < kKeys; c0 += kPairLanes) {
    const Index keys = std::clamp<Index>(count - c0, 0, kPairLanes);
    for (Index d0 = 0; d0 < dk; d0 += kPairLanes) {
      Block block;
      for (Index i = 0; i < kPairLanes; ++i) {
        block.packet[i] = i < keys ? _mm512_loadu_ps(k[c0 + i] + d0) : _mm512_setzero_ps();
      }
      if (keys > 0) ptranspose(block);  // zeros stay zeros
      for (Index e = 0; e < kPairLanes / 2; ++e) {
        store_split_pairs(block.packet[2 * e], block.packet[2 * e + 1],
                          out + (d0 / 2 + e) * 2 * kKeys + 2 * c0, part_stride);
      }
    }
  }
}

/// Writes the first `depth` keys of a V tile in key pairs, three parts: part p of the pair (c, c
/// + 1) at column d at out[p * part_stride + (c / 2) * 2 * dv + 2 d + c % 2], zero for keys in
/// [count, depth); rows v[c] contiguous; depth % 2 == 0, dv % 16 == 0.
inline void pack_split_value_pairs(const float* const* v, Index count, Index depth, Index dv,
                                   Bf16Bits* out, Index part_stride) {
  const __m512 zero = _mm512_setzero_ps();
  for (Index c = 0; c < depth; c += 2) {
    const float* even = c < count ? v[c] : nullptr;
    const float* odd = c + 1 < count ? v[c + 1] : nullptr;
    Bf16Bits* pairs = out + c * dv;  // (c / 2) * 2 * dv
    for (Index d = 0; d < dv; d += kPairLanes) {
      store_split_pairs(even != nullptr ? _mm512_loadu_ps(even + d) : zero,
                        odd != nullptr ? _mm512_loadu_ps(odd + d) : zero, pairs + 2 * d,
                        part_stride);
    }
  }
}

/// Adds to the accumulator tiles 0-3 (row blocks of a and a + 16 rows, column blocks of b and b +
/// 16 columns) the six part products of one depth step of 32 (see the header); with kPairOfRows
/// false only the first row block (tiles 0 and 1). Each A part is loaded once for the B parts it
/// meets.
template <bool kPairOfRows>
EIGEN_ALWAYS_INLINE void split_depth_step(const Bf16Bits* a, Index a_part, Index a_bytes,
                                          Index a_block, const Bf16Bits* b, Index b_part,
                                          Index b_bytes) {
  const auto with_b = [&](const Bf16Bits* b_tile) {
    _tile_loadd(6, b_tile, b_bytes);
    _tile_loadd(7, b_tile + 2 * kAmxRows, b_bytes);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    if constexpr (kPairOfRows) {
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  };
  const auto with_a = [&](const Bf16Bits* a_tile) {
    _tile_loadd(4, a_tile, a_bytes);
    if constexpr (kPairOfRows) _tile_loadd(5, a_tile + a_block, a_bytes);
  };
  with_a(a);  // hi . (hi, mid, lo)
  with_b(b);
  with_b(b + b_part);
  with_b(b + 2 * b_part);
  with_a(a + a_part);  // mid . (hi, mid)
  with_b(b);
  with_b(b + b_part);
  with_a(a + 2 * a_part);  // lo . hi
  with_b(b);
}

/// C (+)= A.B through the six part products, for the row blocks [block_first, block_end) of 16
/// rows and `cols` columns (cols % 32 == 0):
///   a: A parts, row r at a + r * a_stride, parts a_part apart; depth % 32 == 0
///   b: B parts in pairs along the depth, pair row e at b + e * b_stride, parts b_part apart
///   c: f32, row r at c + r * c_stride; accumulate false: C = A.B, true: C += A.B.
/// Two row blocks by two column blocks of accumulators at a time (tiles 0-3), their A (4, 5) and
/// B (6, 7) operands each serving two products; 24 products deep per depth step, so the
/// accumulators' latency hides behind one another (12 for a last row block alone). Columns
/// outermost: the B parts of 32 columns (a tile's K or V parts are 48 KiB at head dim 128, all of
/// L1) stay in L1 while every row block uses them.
/// Each depth step of each block of accumulators takes one step of `prefetcher`'s requests (if
/// given; see amx_split_steps): a block's requests issued at once (a tile's 1024 lines over the
/// six blocks of MQA decode, 21 per block in prefill) overflowed the core's fill buffers, and the
/// core stalled on them (6% of the samples of f32 GQA prefill on a Xeon with AMX).
inline void amx_split_product(const Bf16Bits* a, Index a_part, Index a_stride, const Bf16Bits* b,
                              Index b_part, Index b_stride, Index depth, Index cols,
                              Index block_first, Index block_end, float* c, Index c_stride,
                              bool accumulate, LinePrefetcher* prefetcher) {
  const Index a_bytes = a_stride * Index{sizeof(Bf16Bits)};
  const Index b_bytes = b_stride * Index{sizeof(Bf16Bits)};
  const Index c_bytes = c_stride * Index{sizeof(float)};
  const Index a_block = kAmxRows * a_stride;
  const Index c_block = kAmxRows * c_stride;
  for (Index n0 = 0; n0 < cols; n0 += 2 * kAmxRows) {
    for (Index blk = block_first; blk < block_end; blk += 2) {
      const bool pair = blk + 1 < block_end;
      const Bf16Bits* a_rows = a + blk * a_block;
      float* c0 = c + blk * c_block + n0;
      const LinePrefetcher::Slice requests =
          prefetcher != nullptr
              ? prefetcher->take(LinePrefetcher::kDepthPerStep * amx_depth_steps(depth))
              : LinePrefetcher::Slice{};
      if (accumulate) {
        _tile_loadd(0, c0, c_bytes);
        _tile_loadd(1, c0 + kAmxRows, c_bytes);
        if (pair) {
          _tile_loadd(2, c0 + c_block, c_bytes);
          _tile_loadd(3, c0 + c_block + kAmxRows, c_bytes);
        }
      } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      }
      for (Index d0 = 0; d0 < depth; d0 += kAmxDepth) {
        requests.step(LinePrefetcher::kDepthPerStep * (d0 / kAmxDepth));
        const Bf16Bits* b_cols = b + (d0 / 2) * b_stride + 2 * n0;
        if (pair) {
          split_depth_step<true>(a_rows + d0, a_part, a_bytes, a_block, b_cols, b_part, b_bytes);
        } else {
          split_depth_step<false>(a_rows + d0, a_part, a_bytes, a_block, b_cols, b_part, b_bytes);
        }
      }
      _tile_stored(0, c0, c_bytes);
      _tile_stored(1, c0 + kAmxRows, c_bytes);
      if (pair) {
        _tile_stored(2, c0 + c_block, c_bytes);
        _tile_stored(3, c0 + c_block + kAmxRows, c_bytes);
      }
    }
  }
}

#endif  // HEADROOM_HAS_AMX

/// The depth steps of all blocks of accumulators amx_split_product visits for row blocks
/// [block_first, block_end), `cols` columns and `depth`: the steps over which a tile's requests
/// can be spread.
inline Index amx_split_steps(Index block_first, Index block_end, Index cols, Index depth) {
  return (block_end - block_first + 1) / 2 * (cols / (2 * kAmxRows)) * amx_depth_steps(depth);
}

#if !HEADROOM_HAS_AMX

// Declared for the kernel's branches that only builds with AMX instantiate.
void pack_split_rows(const float* src, Index src_stride, Index row_first, Index row_end,
                     Index depth, Bf16Bits* out, Index out_stride, Index part_stride);
template <Index kKeys>
void pack_split_key_pairs(const float* const* k, Index count, Index dk, Bf16Bits* out,
                          Index part_stride);
void pack_split_value_pairs(const float* const* v, Index count, Index depth, Index dv,
                            Bf16Bits* out, Index part_stride);
void amx_split_product(const Bf16Bits* a, Index a_part, Index a_stride, const Bf16Bits* b,
                       Index b_part, Index b_stride, Index depth, Index cols, Index block_first,
                       Index block_end, float* c, Index c_stride, bool accumulate,
                       LinePrefetcher* prefetcher);

#endif  // HEADROOM_HAS_AMX

}  // namespace headroom::detail
