// SPDX-License-Identifier: MIT
// ReRoPE inside the tiled kernel: the rotations of a work item's query rows and of a tile's keys
// for both sides of the window (position/rerope.hpp).
#pragma once

#include <algorithm>

#include "headroom/core/tensor_view.hpp"
#include "headroom/detail/stream_kernel.hpp"
#include "headroom/detail/tile_rows.hpp"
#include "headroom/position/rerope.hpp"
#include "headroom/position/rope.hpp"

namespace headroom::detail {

/// Writes the query rows of a work item rotated for both sides of ReRoPE's window (see
/// position/rerope.hpp), times `scale` and the log-n factor: for the keys inside the window at the
/// query's position (to `inside`), for those beyond it at w, or at the leaky query position (to
/// `outside`). Plain ReRoPE leaves the keys beyond the window raw, and leaky rotates them without
/// the table's attention factor: the factor both sides of RoPE carry is folded into q instead.
/// Layout as the item's q: row-major [rows, dk] when streamed, else transposed [dk, rows_pad].
/// `rotated` is scratch of [rows, dk].
template <class RowAt, class PositionAt>
void rerope_queries(const ReRope& rerope, Index rows, Index dk, const RowAt& q_row,
                    Index dim_stride, const PositionAt& position, float scale, bool streamed,
                    Index rows_pad, float* rotated, float* inside, float* outside) {
  const RopeTable& table = rerope.table();
  const ReRopeConfig& config = rerope.config();
  const Index half = table.rotary_dim() / 2;
  const auto factor = static_cast<float>(table.attention_factor());
  alignas(64) float cos_row[LeakyAngles::kMaxHalf], sin_row[LeakyAngles::kMaxHalf];
  for (float* out : {inside, outside}) {
    for (Index r = 0; r < rows; ++r) {
      float* x = rotated + r * dk;
      const auto* source = q_row(r);
      for (Index d = 0; d < dk; ++d) x[d] = static_cast<float>(source[d * dim_stride]);
      // A query before the first key (a sequence shorter than q_len) sees nothing: any rotation.
      const Index pos = std::max<Index>(0, position(r));
      // The attention factor goes on the rotated dims only; dims past rotary_dim pass through.
      float rotated_scale = 1.0f;
      if (out == inside) {
        rotate_row(table.layout(), x, table.cos(pos), table.sin(pos), half);
      } else if (!config.is_leaky()) {
        rotate_row(table.layout(), x, table.cos(config.window), table.sin(config.window), half);
        rotated_scale = factor;
      } else {
        rerope.leaky_angles().query(pos, cos_row, sin_row);
        rotate_row(table.layout(), x, cos_row, sin_row, half);
        rotated_scale = factor * factor;
      }
      const auto log_n = static_cast<float>(config.query_scale(pos));
      if (rotated_scale != 1.0f || log_n != 1.0f) {
        for (Index d = 0; d < dk; ++d) x[d] *= d < 2 * half ? rotated_scale * log_n : log_n;
      }
    }
    if (streamed) {
      for (Index i = 0; i < rows * dk; ++i) out[i] = rotated[i] * scale;
    } else {
      pack_transposed(rows, dk, [&](Index r) { return rotated + r * dk; }, 1, scale, rows_pad,
                      out);
    }
  }
}

/// The angle ReRoPE rotates a tile's keys by: the key's position (inside the window), position / k
/// (Leaky ReRoPE, beyond it), or only the part of position / k within its block of the leaky
/// table, the queries having taken the block's part (LeakyAngles::block).
enum class KeyRotation { kPosition, kLeaky, kLeakyInBlock };

/// Writes the tile's K rows as f32 [count, dk] (int8 scale folded in), rotated by `rotation`.
/// Each rotation is formed once per tile and shared by every row of the group. Rows `ahead[c]`
/// (if given) are requested from memory meanwhile, as the streamed products would have.
template <class T>
void rerope_keys(const ReRope& rerope, KeyRotation rotation, const TileRows<T>& rows, Index k0,
                 Index dk, Index k_dim_stride, const T* const* ahead, float* out) {
  const RopeTable& table = rerope.table();
  const Index half = table.rotary_dim() / 2;
  alignas(64) float cos_row[LeakyAngles::kMaxHalf], sin_row[LeakyAngles::kMaxHalf];
  for (Index c = 0; c < rows.count; ++c) {
    if (ahead != nullptr) prefetch_row(ahead[c], dk * Index{sizeof(T)});
    float* x = out + c * dk;
    row_to_f32(rows.k[c], dk, k_dim_stride, rows.k_scale[c], x);
    if (rotation == KeyRotation::kPosition) {
      rotate_row(table.layout(), x, table.cos(k0 + c), table.sin(k0 + c), half);
    } else if (rotation == KeyRotation::kLeaky) {
      rerope.leaky_angles().key(k0 + c, cos_row, sin_row);
      rotate_row(table.layout(), x, cos_row, sin_row, half);
    } else {
      const float* angles = rerope.leaky_angles().in_block((k0 + c) % LeakyAngles::kFineRows);
      rotate_row(table.layout(), x, angles, angles + half, half);
    }
  }
}

/// Writes `rows` query rows [rows, dk] rotated back by the angles of leaky key block `block`
/// (LeakyAngles::block): q' = R(-a) q, so that q'.R(b) k = q.R(a + b) k for keys of the block.
inline void unrotate_queries_by_block(const ReRope& rerope, Index block, Index rows, Index dk,
                                      const float* q, float* out) {
  const RopeTable& table = rerope.table();
  const Index half = table.rotary_dim() / 2;
  const float* angles = rerope.leaky_angles().block(block);
  alignas(64) float minus_sin[LeakyAngles::kMaxHalf];
  for (Index i = 0; i < half; ++i) minus_sin[i] = -angles[half + i];
  std::copy(q, q + rows * dk, out);
  for (Index r = 0; r < rows; ++r) {
    rotate_row(table.layout(), out + r * dk, angles, minus_sin, half);
  }
}

}  // namespace headroom::detail
