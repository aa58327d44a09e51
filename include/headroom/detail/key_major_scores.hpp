// SPDX-License-Identifier: MIT
// The scores of a key-major tile (prefill; decode of wide groups, as absorbed MLA): K rows
// broadcast against packed Q^T panels.
#pragma once

#include <type_traits>

#include "headroom/core/tensor_view.hpp"
#include "headroom/detail/micro_kernel.hpp"

namespace headroom::detail {

/// Scores of one tile, key-major: scores[c * rows_padded + r] = k_c . q_r for keys c < count and
/// the rows of packets [packet_first, packet_end). The K rows are the broadcast operand, read as
/// they are stored, and Q^T [dk, rows_padded] (packed once per work item) the vector one: no tile
/// is ever transposed, and the softmax that follows runs along the lanes. Panels of Q^T are the
/// outer loop, so each stays in L1 while the keys stream past it. The panels request the next
/// tile's lines, spread evenly over all their products and the `later_depth` rows of depth of the
/// products that follow (the P.V), which request the rest: memory then streams the whole time.
/// Measured here: requesting all lines within the first of four panels (GQA prefill) slowed its
/// products by a tenth, as the misses of the current tile queued behind them, and prefill ran
/// 4-7% slower; requesting them during the scores alone left DRAM idle during the P.V of MQA
/// decode, whose scores and P.V each take about as long as reading the tile.
/// \tparam kDk the head dim (and K row stride) when fixed at compile time, or kDynamicDim.
template <int kDk>
void key_major_scores(const float* k, Index count, const float* q_t, Index rows_padded, Index dk,
                      Index packet_first, Index packet_end, float* scores,
                      LinePrefetcher* prefetcher, Index later_depth) {
  // A full register tile is kTileRows keys by kTilePackets packets of rows; narrower panels (the
  // last rows, or a small group) take more keys so that enough accumulators hide the FMA latency.
  // AVX-512: 8 keys x 2 packets and 16 x 1 measured best for 32 and 16 heads over one kv head
  // (16 keys also cut a 64-key tile without remainder: absorbed MLA decode gains 6% over 12).
  constexpr int kNarrowKeys = kTileRows * kTilePackets / 2 > 8 ? 8 : kTileRows * kTilePackets / 2;
  constexpr int kSinglePacketKeys = kPacketSize == 16 ? 16 : kTileRows * kTilePackets / 2;
  // Calls fn(packets, keys, first packet) for the panels left to right, their packets of rows and
  // keys per product as integral constants.
  const auto for_each_panel = [&](auto&& fn) {
    Index at = packet_first;
    const auto next = [&](auto packets_tag, auto keys_tag) {
      fn(packets_tag, keys_tag, at);
      at += decltype(packets_tag)::value;
    };
    while (at + kTilePackets <= packet_end) {
      next(std::integral_constant<int, kTilePackets>{}, std::integral_constant<int, kTileRows>{});
    }
    if constexpr (kTilePackets > 2) {
      if (at + 2 <= packet_end) {
        next(std::integral_constant<int, 2>{}, std::integral_constant<int, kNarrowKeys>{});
      }
    }
    while (at < packet_end) {
      next(std::integral_constant<int, 1>{}, std::integral_constant<int, kSinglePacketKeys>{});
    }
  };
  if (prefetcher != nullptr) {
    Index depth = 0;  // of all the panels' products
    for_each_panel([&](auto, auto keys_tag, Index) {
      constexpr int kKeys = decltype(keys_tag)::value;
      depth += (count + kKeys - 1) / kKeys * dk;
    });
    prefetcher->spread_over(depth + later_depth);
  }
  for_each_panel([&](auto packets_tag, auto keys_tag, Index p) {
    constexpr int kPackets = decltype(packets_tag)::value, kKeys = decltype(keys_tag)::value;
    const PackedRows q_panel{q_t, rows_padded, prefetcher};
    const Index col = p * kPacketSize;
    const auto block = [&](Index c, auto rows_tag) {
      constexpr int kRows = decltype(rows_tag)::value;
      float* block_scores = scores + c * rows_padded + col;
      if constexpr (kDk != kDynamicDim) {
        micro_kernel<kRows, kPackets, Accumulate::kOverwrite>(
            FixedStrideLhs<kDk>{k + c * kDk}, q_panel, col, kDk, block_scores, rows_padded,
            nullptr, true);
      } else {
        micro_kernel<kRows, kPackets, Accumulate::kOverwrite>(Lhs{k + c * dk, dk, 1}, q_panel,
                                                              col, dk, block_scores, rows_padded,
                                                              nullptr, true);
      }
    };
    Index c = 0;
    for (; c + kKeys <= count; c += kKeys) block(c, std::integral_constant<int, kKeys>{});
    if (c < count) dispatch_up_to<kKeys - 1>(count - c, [&](auto n) { block(c, n); });
  });
}

}  // namespace headroom::detail
