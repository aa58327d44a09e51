// SPDX-License-Identifier: MIT
// The rows of one K/V tile: where they live in any KV source, and their conversion and packing
// into the layouts the tile products read.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <vector>

#include "headroom/core/element.hpp"
#include "headroom/core/tensor_view.hpp"
#include "headroom/detail/micro_kernel.hpp"

namespace headroom::detail {

/// Keys per tile: one K tile, packed transposed, is 64 x Dk floats (32 KiB at Dk = 128), which stays
/// in L1 while every row block of the work item computes its scores against it (and then the V
/// tile, while every row block accumulates P.V).
inline constexpr Index kKeyTile = 64;

/// The stride of a tile's buffers that the products walk down (Q^T, S^T and P^T of `rows` rows;
/// packed V of `rows` columns): `rows` floats rounded up to an odd number of cache lines. The
/// products read one panel of such a buffer, a few lines of each of its rows, while other data
/// streams past: at a stride of a power-of-two number of lines the panel would fall into a few
/// sets of L1 and evict itself (1 KiB rows of Q^T keep to 16 of 64 sets). Measured here: with Q^T
/// and S^T at 17 lines per 256 rows and V packed at 9 per row, GQA prefill ran 5-8% faster.
inline Index padded_rows(Index rows) {
  constexpr Index kLineFloats = 64 / sizeof(float);
  Index lines = (rows + kLineFloats - 1) / kLineFloats;
  if (lines % 2 == 0) ++lines;
  return lines * kLineFloats;
}

/// A scale of 1 for every key of a tile: for K rows already converted to f32 and scaled.
inline const float* unit_scales() {
  static const std::vector<float> ones(kKeyTile, 1.0f);
  return ones.data();
}

/// Where the rows of one K/V tile live, followed by those of the next tile: a pointer per key
/// (resolving block tables and ring buffers once per tile) and the int8 scales (1 for other types).
/// The rows `distance` keys ahead of the tile's keys, which the decode products request as they
/// go, are then k + distance and v + distance, null past the last key of the next tile.
template <class T>
struct TileRows {
  static constexpr Index kMaxDistance = kKeyTile;
  Index count = 0;       // keys of this tile, at [0, count)
  Index next_count = 0;  // keys of the next tile, at [count, count + next_count)
  const T* k[2 * kKeyTile + kMaxDistance];
  const T* v[2 * kKeyTile + kMaxDistance];
  float k_scale[2 * kKeyTile];
  float v_scale[2 * kKeyTile];

  /// Makes the next tile the current one.
  void advance() {
    std::copy(k + count, k + count + next_count, k);
    std::copy(v + count, v + count + next_count, v);
    std::copy(k_scale + count, k_scale + count + next_count, k_scale);
    std::copy(v_scale + count, v_scale + count + next_count, v_scale);
    count = next_count;
    next_count = 0;
    end_at(count);
  }
  /// Nulls the rows that keys before `end` look ahead to past it.
  void end_at(Index end) {
    std::fill(k + end, k + end + kMaxDistance, nullptr);
    std::fill(v + end, v + end + kMaxDistance, nullptr);
  }
};

/// Writes the keys [k0, k0 + count) of kv head `kv_head` to `rows` from key `at` on, one run at a
/// time, and nulls after them (up to the rows `distance` ahead of the last).
template <class Source>
void gather_tile_rows(const Source& source, Index b, Index kv_head, Index k0, Index count,
                      Index at, TileRows<typename Source::Element>& rows) {
  using Element = typename Source::Element;
  for (Index offset = 0; offset < count;) {
    const Index j = k0 + offset;
    const Index run = std::min(count - offset, source.run_length(b, j));
    const Element* k_row = source.k_row(b, j, kv_head);
    const Element* v_row = source.v_row(b, j, kv_head);
    const float* k_scales = source.k_scales(b, j, kv_head);
    const float* v_scales = source.v_scales(b, j, kv_head);
    const Index k_stride = source.k_row_stride(), v_stride = source.v_row_stride();
    const Element** k_out = rows.k + at + offset;
    const Element** v_out = rows.v + at + offset;
    for (Index i = 0; i < run; ++i) k_out[i] = k_row + i * k_stride;
    for (Index i = 0; i < run; ++i) v_out[i] = v_row + i * v_stride;
    float* k_scale_out = rows.k_scale + at + offset;
    float* v_scale_out = rows.v_scale + at + offset;
    if (k_scales != nullptr) {
      std::copy(k_scales, k_scales + run, k_scale_out);
    } else {
      std::fill(k_scale_out, k_scale_out + run, 1.0f);
    }
    if (v_scales != nullptr) {
      std::copy(v_scales, v_scales + run, v_scale_out);
    } else {
      std::fill(v_scale_out, v_scale_out + run, 1.0f);
    }
    offset += run;
  }
  rows.end_at(at + count);
}

/// Writes `dim` elements of a K or V row (dim_stride apart) to the f32 row `dst`, times `scale`
/// (the int8 scale, else 1): in packets when the row is contiguous.
template <class T>
void row_to_f32(const T* src, Index dim, Index dim_stride, float scale, float* dst) {
  if (dim_stride == 1) return to_float(src, dim, scale, dst);
  for (Index d = 0; d < dim; ++d) dst[d] = scale * static_cast<float>(src[d * dim_stride]);
}

/// Returns whether the `count` rows at row[c] lie one after the other, `stride` elements apart.
template <class T>
bool rows_follow_on(const T* const* row, Index count, Index stride) {
  for (Index c = 1; c < count; ++c) {
    if (row[c] != row[0] + c * stride) return false;
  }
  return true;
}

/// Returns the tile's K rows as f32, one after the other (row c at + c * dk), as the key-major
/// product reads them at a stride known at compile time (see FixedStrideLhs): in place when the
/// source stores them so (f32 cache rows of one block), else converted into `k` [kKeyTile, dk]
/// with the int8 scale folded in. Keys past the last are never read.
template <class T>
const float* packed_k_rows(const TileRows<T>& rows, Index dk, Index k_row_stride,
                           Index k_dim_stride, float* k) {
  if constexpr (std::is_same_v<T, float>) {
    if (k_dim_stride == 1 && k_row_stride == dk && rows_follow_on(rows.k, rows.count, dk)) {
      return rows.k[0];
    }
  }
  for (Index c = 0; c < rows.count; ++c) {
    row_to_f32(rows.k[c], dk, k_dim_stride, rows.k_scale[c], k + c * dk);
  }
  return k;
}

/// Returns whether `row` is aligned for the aligned packet loads of PackedRows.
inline bool packet_aligned(const float* row) {
  return reinterpret_cast<std::uintptr_t>(row) % (kPacketSize * sizeof(float)) == 0;
}

/// Returns the tile's V rows as the P.V product reads them in place, one after the other (row c at
/// + c * dv, aligned for packet loads), or null when the source does not store them so. f32 rows
/// of a cache block are (head-major, dv apart), as are those of one kv head in dense [B, S, 1, D]
/// tensors; any other V is packed (pack_v_tile): rows Hkv * dv floats apart, a power of two of
/// cache lines, would keep a panel of V in a few sets of L1 (see padded_rows).
template <class T>
const float* in_place_v_rows(const TileRows<T>& rows, Index dv, Index v_dim_stride) {
  if constexpr (std::is_same_v<T, float>) {
    const float* first = rows.v[0];
    if (v_dim_stride == 1 && dv % kPacketSize == 0 && packet_aligned(first) &&
        rows_follow_on(rows.v, rows.count, dv)) {
      return first;
    }
  }
  return nullptr;
}

/// Returns whether every value row of the tile is its key row (with the key's scale): a source
/// that stores V inside K (values_in_keys caches).
template <class T>
bool values_are_keys(const TileRows<T>& rows) {
  for (Index c = 0; c < rows.count; ++c) {
    if (rows.v[c] != rows.k[c] || rows.v_scale[c] != rows.k_scale[c]) return false;
  }
  return true;
}

/// Converts the V tile to f32 rows in `v` [kKeyTile, dv_pad] (int8 scale folded in), zero past
/// the last key and past dv: for sources whose rows the P.V product cannot read in place.
template <class T>
void pack_v_tile(const TileRows<T>& rows, Index dv, Index dv_pad, Index v_dim_stride, float* v) {
  const Index count = rows.count;
  std::fill(v + count * dv_pad, v + kKeyTile * dv_pad, 0.0f);
  for (Index c = 0; c < count; ++c) {
    float* v_packed = v + c * dv_pad;
    row_to_f32(rows.v[c], dv, v_dim_stride, rows.v_scale[c], v_packed);
    std::fill(v_packed + dv, v_packed + dv_pad, 0.0f);
  }
}

/// Stores `rows` rows of `dim` elements (row r at row(r), elements dim_stride apart) times
/// `scale`, transposed: out[d * out_stride + r], with zeros in columns [rows, out_stride).
/// Contiguous rows of packet-multiple dims are transposed in packet-square blocks in registers:
/// element by element, the column writes hop out_stride floats each and thrash L1.
template <class RowAt>
void pack_transposed(Index rows, Index dim, const RowAt& row, Index dim_stride, float scale,
                     Index out_stride, float* out) {
  using namespace Eigen::internal;
  const Index full = dim % kPacketSize == 0 && dim_stride == 1 ? rows / kPacketSize * kPacketSize : 0;
  if (full > 0) {
// PacketBlock<Packet16f> drops the vector type's alignment attribute, harmlessly: it is a local.
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif
    using Block = PacketBlock<Packet, kPacketSize>;
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
    const Packet factor = pset1<Packet>(scale);
    for (Index r0 = 0; r0 < full; r0 += kPacketSize) {
      decltype(row(0)) sources[kPacketSize];
      for (int i = 0; i < kPacketSize; ++i) sources[i] = row(r0 + i);
      for (Index d0 = 0; d0 < dim; d0 += kPacketSize) {
        Block block;
        for (int i = 0; i < kPacketSize; ++i) {
          block.packet[i] = pmul(load_packet(sources[i] + d0), factor);
        }
        ptranspose(block);
        for (int i = 0; i < kPacketSize; ++i) {
          pstore(out + (d0 + i) * out_stride + r0, block.packet[i]);
        }
      }
    }
  }
  for (Index d = 0; d < dim; ++d) {
    float* column = out + d * out_stride;
    for (Index r = full; r < rows; ++r) column[r] = static_cast<float>(row(r)[d * dim_stride]) * scale;
    std::fill(column + rows, column + out_stride, 0.0f);
  }
}

}  // namespace headroom::detail
