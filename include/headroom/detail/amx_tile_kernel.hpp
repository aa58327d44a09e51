// SPDX-License-Identifier: MIT
// The products of a key-major tile for bf16 queries, keys and values on processors with AMX-BF16
// (Intel Xeon since Sapphire Rapids): one tdpbf16ps multiplies a 16 x 32 bf16 tile by a 32 x 16
// one into 16 x 16 f32 accumulators, 8192 multiply-adds, where an AVX-512 FMA does 16.
//
// Both products of a tile are C (+)= A.B over tiles of 16 rows:
//   scores  S[r][c]  = sum_d Q[r][d] K[c][d]      A = Q rows as stored, B = K^T in pairs along d
//   output  O[r][dv] = rescale[r] O[r][dv] + sum_c P[r][c] V[c][dv]
//                                                 A = P rounded to bf16, B = V in pairs of keys
// B holds pairs of consecutive depth elements of each column as one 32-bit unit ("VNNI layout":
// row e of a B tile is [B[2e][0], B[2e+1][0], B[2e][1], ...]), which the pair layouts of
// bf16_pair_kernel.hpp already are: K^T in pairs is pack_query_pairs of the K rows, V in key pairs
// is pack_value_pairs. Scores and O stay row-major f32, so the row-major online softmax of the
// streamed path serves them.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "headroom/core/tensor_view.hpp"
#include "headroom/detail/bf16_pair_kernel.hpp"

#if HEADROOM_HAS_BF16_DOT && defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#if defined(__GNUC__)
#include <cpuid.h>
#endif
#define HEADROOM_HAS_AMX 1
#else
#define HEADROOM_HAS_AMX 0
#endif

namespace headroom::detail {

/// Whether this build has the AMX tile products (compiled for AMX-TILE and AMX-BF16, on Linux).
inline constexpr bool kHasAmx = HEADROOM_HAS_AMX != 0;

/// Rows of an AMX tile, and the f32 columns of an accumulator tile (64 bytes a row).
inline constexpr Index kAmxRows = 16;
/// bf16 elements of one row of an A tile: the depth one tdpbf16ps consumes.
inline constexpr Index kAmxDepth = 32;

/// Whether this process may run AMX instructions: the processor has AMX-TILE and AMX-BF16 (cpuid
/// leaf 7, edx bits 24 and 22) and Linux grants the tile data state, which it only does on request
/// (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, Linux 5.16 and later). Asked once.
inline bool amx_available() {
#if HEADROOM_HAS_AMX && defined(__GNUC__)
  static const bool available = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) == 0) return false;
    if ((edx & (1u << 24)) == 0 || (edx & (1u << 22)) == 0) return false;
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return available;
#else
  return false;
#endif
}

/// Whether bf16 tiles use the AMX products in this process (see Bf16PairProducts): by default
/// wherever they are available, as they are many times faster than any vector product.
inline bool use_amx_tiles() {
  if (!kHasAmx) return false;
  const Bf16PairProducts choice = bf16_pair_products().load(std::memory_order_relaxed);
  return (choice == Bf16PairProducts::kWhereFaster || choice == Bf16PairProducts::kAmxTiles) &&
         amx_available();
}

/// Writes the query rows (row r at row(r), elements dim_stride apart) as bf16 rows [rows_pad, dk]
/// for the A tiles of the scores, unscaled (the scale multiplies the f32 scores), zero past the
/// last row.
template <class RowAt>
void pack_query_rows(Index rows, Index dk, const RowAt& row, Index dim_stride, Index rows_pad,
                     Bf16Bits* out) {
  using QT = std::remove_cv_t<std::remove_pointer_t<decltype(row(0))>>;
  for (Index r = 0; r < rows; ++r) {
    const auto* q_r = row(r);  // bf16 (exact), or f32 rounded to bf16
    if constexpr (std::is_same_v<QT, Eigen::bfloat16>) {
      if (dim_stride == 1) {
        std::memcpy(out + r * dk, q_r, static_cast<size_t>(dk) * sizeof(Bf16Bits));
        continue;
      }
    }
    for (Index d = 0; d < dk; ++d) {
      const Eigen::bfloat16 x(static_cast<float>(q_r[d * dim_stride]));
      out[r * dk + d] = Eigen::numext::bit_cast<Bf16Bits>(x);
    }
  }
  std::fill(out + rows * dk, out + rows_pad * dk, Bf16Bits{0});
}

#if HEADROOM_HAS_AMX

static_assert(kPacketSize == kAmxRows,
              "AMX builds have AVX-512, whose row packets are the 16-row blocks of the tiles");

/// Configures the eight tile registers of this thread as 16 rows of 64 bytes (palette 1). Tile
/// configuration is per thread, so every work item configures before its first tile product.
inline void configure_amx_tiles() {
  struct alignas(64) Config {
    std::uint8_t palette = 1;
    std::uint8_t start_row = 0;
    std::uint8_t reserved[14] = {};
    std::uint16_t bytes_per_row[16] = {};
    std::uint8_t rows[16] = {};
  } config;
  for (int t = 0; t < 8; ++t) {
    config.bytes_per_row[t] = 64;
    config.rows[t] = static_cast<std::uint8_t>(kAmxRows);
  }
  _tile_loadconfig(&config);
}

/// Releases this thread's tile state, so that context switches stop saving 8 KiB of it.
inline void release_amx_tiles() { _tile_release(); }

/// Writes unscaled scores S[r][c] = q_r . k_c (f32, row-major, row r at scores + r * kKeyTile) for
/// the row blocks [block_first, block_end) of 16 rows and all 64 keys of the tile.
///   q: [rows_pad, dk] bf16 rows; k_t: K^T in pairs, [dk / 2, kKeyTile, 2] (pack_query_pairs);
///   dk % 32 == 0. Two row blocks by two key blocks of accumulators at a time (tiles 0-3), with
///   their A (4, 5) and B (6, 7) operands: each operand tile serves two products.
template <Index kKeys>
void amx_scores(const Bf16Bits* q, Index dk, const Bf16Bits* k_t, Index block_first,
                Index block_end, float* scores) {
  static_assert(kKeys % (2 * kAmxRows) == 0, "the keys come in pairs of 16-key blocks");
  const Index q_stride = dk * Index{sizeof(Bf16Bits)};
  constexpr Index kKtStride = 2 * kKeys * Index{sizeof(Bf16Bits)};  // one pair row of K^T
  constexpr Index kScoreStride = kKeys * Index{sizeof(float)};
  for (Index c0 = 0; c0 < kKeys; c0 += 2 * kAmxRows) {
    Index b = block_first;
    for (; b + 2 <= block_end; b += 2) {
      const Bf16Bits* q0 = q + b * kAmxRows * dk;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (Index d0 = 0; d0 < dk; d0 += kAmxDepth) {
        _tile_loadd(4, q0 + d0, q_stride);
        _tile_loadd(5, q0 + kAmxRows * dk + d0, q_stride);
        const Bf16Bits* kt = k_t + (d0 / 2) * 2 * kKeys + 2 * c0;
        _tile_loadd(6, kt, kKtStride);
        _tile_loadd(7, kt + 2 * kAmxRows, kKtStride);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      float* s = scores + b * kAmxRows * kKeys + c0;
      _tile_stored(0, s, kScoreStride);
      _tile_stored(1, s + kAmxRows, kScoreStride);
      _tile_stored(2, s + kAmxRows * kKeys, kScoreStride);
      _tile_stored(3, s + kAmxRows * kKeys + kAmxRows, kScoreStride);
    }
    if (b < block_end) {
      const Bf16Bits* q0 = q + b * kAmxRows * dk;
      _tile_zero(0);
      _tile_zero(1);
      for (Index d0 = 0; d0 < dk; d0 += kAmxDepth) {
        _tile_loadd(4, q0 + d0, q_stride);
        const Bf16Bits* kt = k_t + (d0 / 2) * 2 * kKeys + 2 * c0;
        _tile_loadd(6, kt, kKtStride);
        _tile_loadd(7, kt + 2 * kAmxRows, kKtStride);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
      }
      float* s = scores + b * kAmxRows * kKeys + c0;
      _tile_stored(0, s, kScoreStride);
      _tile_stored(1, s + kAmxRows, kScoreStride);
    }
  }
}

/// Multiplies the first dv columns of rows [row_first, row_end) of O (row r at o + r * o_stride)
/// by rescale[r], skipping the rows whose factor is exactly 1 (most, once the running maxima
/// settle); dv % 16 == 0.
inline void rescale_rows(const float* rescale, Index row_first, Index row_end, Index dv, float* o,
                         Index o_stride) {
  for (Index r = row_first; r < row_end; ++r) {
    if (rescale[r] == 1.0f) continue;
    const __m512 factor = _mm512_set1_ps(rescale[r]);
    float* row = o + r * o_stride;
    for (Index d = 0; d < dv; d += kPairLanes) {
      _mm512_storeu_ps(row + d, _mm512_mul_ps(_mm512_loadu_ps(row + d), factor));
    }
  }
}

/// Computes O = diag(rescale) O + P.V for the row blocks [block_first, block_end) of 16 rows.
///   p: [rows_pad, kKeys] bf16 probabilities; v_pairs: V in key pairs, [kKeys / 2, dv, 2]
///   (pack_value_pairs, zero past the tile's keys); o: [rows_pad, o_stride] f32; dv % 32 == 0.
/// The rescale pass runs first, in vector registers, over the rows whose maximum moved (once the
/// running maxima settle, most factors are exactly 1); then 32 columns at a time, their V tiles
/// loaded once, every row block adds its P tiles' products to its two accumulator tiles.
template <Index kKeys>
void amx_output(const Bf16Bits* p, const Bf16Bits* v_pairs, Index dv, Index block_first,
                Index block_end, const float* rescale, float* o, Index o_stride) {
  static_assert(kKeys == 2 * kAmxDepth, "a tile's keys are two A tiles deep");
  rescale_rows(rescale, block_first * kAmxRows, block_end * kAmxRows, dv, o, o_stride);
  constexpr Index kPStride = kKeys * Index{sizeof(Bf16Bits)};
  const Index v_stride = 2 * dv * Index{sizeof(Bf16Bits)};  // one key pair row of V
  const Index o_bytes = o_stride * Index{sizeof(float)};
  const Bf16Bits* v_second = v_pairs + (kAmxDepth / 2) * 2 * dv;  // keys [32, 64)
  for (Index d0 = 0; d0 < dv; d0 += 2 * kAmxRows) {
    // The four B tiles of these 32 columns (2, 3: keys [0, 32); 6, 7: keys [32, 64)) stay while
    // every row block passes: a V tile is read once per call, not once per row block.
    _tile_loadd(2, v_pairs + 2 * d0, v_stride);
    _tile_loadd(3, v_pairs + 2 * (d0 + kAmxRows), v_stride);
    _tile_loadd(6, v_second + 2 * d0, v_stride);
    _tile_loadd(7, v_second + 2 * (d0 + kAmxRows), v_stride);
    for (Index b = block_first; b < block_end; ++b) {
      const Bf16Bits* p0 = p + b * kAmxRows * kKeys;
      float* c = o + b * kAmxRows * o_stride + d0;
      _tile_loadd(4, p0, kPStride);
      _tile_loadd(5, p0 + kAmxDepth, kPStride);
      _tile_loadd(0, c, o_bytes);
      _tile_loadd(1, c + kAmxRows, o_bytes);
      _tile_dpbf16ps(0, 4, 2);
      _tile_dpbf16ps(1, 4, 3);
      _tile_dpbf16ps(0, 5, 6);
      _tile_dpbf16ps(1, 5, 7);
      _tile_stored(0, c, o_bytes);
      _tile_stored(1, c + kAmxRows, o_bytes);
    }
  }
}

/// Writes the row-major f32 probabilities of rows [row_first, row_end) (p[r * kKeys + c]) as bf16
/// rows of kKeys elements, the A tiles of the output product.
template <Index kKeys>
void pack_probability_rows(const float* p, Index row_first, Index row_end, Bf16Bits* out) {
  static_assert(kKeys % (2 * kPairLanes) == 0, "rows convert 32 probabilities at a time");
  for (Index r = row_first; r < row_end; ++r) {
    const float* row = p + r * kKeys;
    for (Index c = 0; c < kKeys; c += 2 * kPairLanes) {
      // cvtne2ps2bf16(b, a) puts a's 16 values first, then b's.
      const __m512bh pair = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(row + c + kPairLanes),
                                                _mm512_loadu_ps(row + c));
      _mm512_storeu_si512(out + r * kKeys + c, (__m512i)pair);
    }
  }
}

#else

// Declared for the kernel's branches that only builds with AMX instantiate.
void configure_amx_tiles();
void release_amx_tiles();
template <Index kKeys>
void amx_scores(const Bf16Bits* q, Index dk, const Bf16Bits* k_t, Index block_first,
                Index block_end, float* scores);
template <Index kKeys>
void amx_output(const Bf16Bits* p, const Bf16Bits* v_pairs, Index dv, Index block_first,
                Index block_end, const float* rescale, float* o, Index o_stride);
template <Index kKeys>
void pack_probability_rows(const float* p, Index row_first, Index row_end, Bf16Bits* out);
void rescale_rows(const float* rescale, Index row_first, Index row_end, Index dv, float* o,
                  Index o_stride);

#endif  // HEADROOM_HAS_AMX

}  // namespace headroom::detail
