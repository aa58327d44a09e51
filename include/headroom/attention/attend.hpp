// SPDX-License-Identifier: MIT
// headroom::attend: one FlashAttention-style tiled kernel for MHA, GQA and MQA with any Dk, Dv.
//
// Read top to bottom: the key interval a mask allows each query, the call's shape and per-thread
// scratch, the walk of one work item over its key tiles (packed tiles for many rows, K and V
// streamed straight from the source for the few rows of a decode step), the parallel driver with
// its split-KV merge, and the public entry points that validate and dispatch head dims. The steps
// of a tile live in detail/: its rows (tile_rows.hpp), the online softmax (online_softmax.hpp),
// the products (key_major_scores.hpp, micro_kernel.hpp for many rows, stream_kernel.hpp for few;
// bf16_pair_kernel.hpp and amx_*.hpp where the processor has them) and ReRoPE's rotations
// (rerope_tile.hpp).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "headroom/attention/kv_source.hpp"
#include "headroom/attention/merge.hpp"
#include "headroom/attention/options.hpp"
#include "headroom/core/element.hpp"
#include "headroom/core/error.hpp"
#include "headroom/core/parallel.hpp"
#include "headroom/core/tensor_view.hpp"
#include "headroom/detail/amx_split_kernel.hpp"
#include "headroom/detail/amx_tile_kernel.hpp"
#include "headroom/detail/bf16_pair_kernel.hpp"
#include "headroom/detail/key_major_scores.hpp"
#include "headroom/detail/micro_kernel.hpp"
#include "headroom/detail/online_softmax.hpp"
#include "headroom/detail/rerope_tile.hpp"
#include "headroom/detail/stream_kernel.hpp"
#include "headroom/detail/tile_rows.hpp"
#include "headroom/position/rerope.hpp"

namespace headroom {
namespace detail {

/// Query rows per work item (query positions x heads of the group): enough rows to amortise
/// packing each K/V tile once per group, few enough that the rows' Q and O stay in L2 at head
/// dim 128 (not at MLA's absorbed 576 / 512, which no prefill uses). Measured
/// here: the AMX split products of f32 prefill ran 7% faster with 512 rows than with 256 (their
/// K and V parts cost three packings a tile), the FMA products the same.
inline constexpr Index kTargetRows = 512;
/// Splitting the keys of a work item across threads (flash-decoding) pays when there are fewer
/// items than this; the split count depends on the shapes only, never on the thread count, so
/// results stay bit-identical for any number of threads. Measured here (MQA decode, 16k keys, 2
/// threads, when each split still started on a tile nobody had requested and each call allocated
/// its scratch), 8 splits ran 8% faster than 16.
inline constexpr Index kSplitBelowItems = 8;
/// No split covers fewer keys than this: each split loads its query rows again, a run of splits
/// starts on a tile nobody has requested, and the parts are merged, which below it costs more
/// than it parallelises... Measured on a Xeon (f32 decode from DRAM, 2 threads, medians of 4
/// alternated runs) against 512: MQA at 4096 keys (4 splits, not 8) 10% faster (1 thread 6%),
/// at 2560 keys (2, not 4) 4%, absorbed MLA (DeepSeek-V2-Lite) at 4096 keys 11%.
inline constexpr Index kMinKeysPerSplit = 1024;
/// ...except that a lone work item (decode of one sequence over a single kv head: MQA, MLA, or
/// GQA's group of a one-kv-head model) is split in two from twice this many keys, so that a second
/// core shares them. Measured on a Xeon (2 threads, 512 keys in L2, medians of 2000 calls): with
/// 1, 4 and 32 query heads, two splits of 256 keys took 30-35% less time than one; one thread
/// 2-5% more. At 1024 and 2048 keys, splits of 256 rather than 512 keys ran 0-7% slower with two
/// threads, so smaller splits serve this case only.
inline constexpr Index kMinKeysPerSecondSplit = 256;

/// Returns the number of key ranges per work item for `groups` items (kv heads x query tiles x
/// sequences) over at most `kv_len` keys, when the caller leaves it to the kernel: a power of two,
/// so that the items divide evenly among 2, 4 or 8 threads. Never a function of the thread count:
/// results stay bit-identical for any number of threads. Measured on a Xeon (2 threads, one kv
/// head, 1 and 32 query heads): 3 splits of 1536 keys took 20-35% longer than 2, 5 splits of 2560
/// keys 8-40% longer than 4.
inline Index default_num_splits(Index groups, Index kv_len) {
  if (groups >= kSplitBelowItems) return 1;
  Index splits = std::clamp<Index>(kv_len / kMinKeysPerSplit, 1,
                                   (kSplitBelowItems + groups - 1) / groups);
  if (groups == 1 && kv_len >= 2 * kMinKeysPerSecondSplit) splits = std::max<Index>(splits, 2);
  Index power = 1;
  while (2 * power <= splits) power *= 2;
  return power;
}

/// The keys a query may see, as one interval [first, end) of key indices. Every mask is such an
/// interval whose ends never decrease with the query's position, which is all the kernel needs:
/// a block of rows sees the union of its first and last rows' intervals, and a tile is unmasked for
/// the block when it lies inside the intersection.
struct KeyInterval {
  MaskKind kind;
  Index window;
  Index kv_len;  // valid keys of this sequence

  Index first(Index pos) const {
    // pos - window + 1 written so that no window, however large, overflows.
    return kind == MaskKind::kSlidingWindow && pos >= window ? pos - window + 1 : 0;
  }
  Index end(Index pos) const {
    return kind == MaskKind::kNone ? kv_len : std::clamp<Index>(pos + 1, 0, kv_len);
  }
};

/// Sizes of one call after validation; dims padded for aligned packet access.
struct TileShape {
  Index batch, q_len, kv_len, num_heads, num_kv_heads, group_size;
  Index head_dim_k, head_dim_v, head_dim_v_padded;
  Index positions_per_item;  // query positions per work item
  Index rows_per_item;       // positions_per_item * group_size
  Index rows_padded;         // rows_per_item rounded up to whole packets (key-major layouts)
  Index tiles_per_sequence;  // work items along q_len
  Index num_splits;          // key ranges per work item, merged by LSE (1: no split)
  /// Few rows per item (decode): K and V are read straight from the source into registers
  /// (stream_kernel.hpp), and the scores of a tile are row-major. Otherwise the tile is computed
  /// key-major (see key_major_scores), V read in place or packed (see in_place_v_rows).
  bool streamed;
  /// ReRoPE is applied in the kernel (AttentionOptions::rerope): q and the keys are raw.
  bool rerope;
  /// Key-major tiles of bf16 queries, keys and values multiply bf16 pairs (bf16_pair_kernel.hpp):
  /// Q^T, P^T and V are kept in pairs along their depth, and the output transposed, O^T.
  bool bf16_pairs;
  /// Key-major tiles multiply AMX tiles: Q as bf16 rows, K^T and V in pairs along their depth,
  /// scores, P and O row-major. bf16 queries, keys and values as they are (amx_tile_kernel.hpp);
  /// f32 ones as three bf16 parts each (amx_split_kernel.hpp).
  bool amx_tiles;
  /// The bf16 parts of each AMX operand: 1 (bf16 operands) or kSplitParts (f32); 0 without AMX.
  Index amx_parts;
};

/// A quiet NaN of a scratch element: an f32, or the bits of a bf16.
template <class T>
constexpr T poison() {
  if constexpr (std::is_same_v<T, Bf16Bits>) {
    return Bf16Bits{0x7FC0};
  } else {
    return std::numeric_limits<T>::quiet_NaN();
  }
}

/// Per-thread scratch, sized once per call; every pointer is aligned for packet loads. Streamed
/// items keep rows row-major; key-major items keep Q transposed and scores key-major.
struct TileScratch {
  using Buffer = std::vector<float, Eigen::aligned_allocator<float>>;
  Buffer q;          // streamed and AMX split [rows, head_dim_k], else [head_dim_k, rows_padded];
                     // times the scale
  Buffer k;          // [kKeyTile, head_dim_k] K rows converted to f32, when not read in place
  Buffer v;          // [kKeyTile, padded_rows(head_dim_v)], zero past the last key and head_dim_v
  Buffer o;          // [rows_padded, head_dim_v_padded], unnormalised output accumulator
  Buffer scores;     // streamed [rows, kKeyTile], else [kKeyTile, rows_padded]: logits, then p
  Buffer row_max;    // [rows_padded], running max m of each row's logits
  Buffer row_sum;    // [rows_padded], running sum l of exp(logit - m)
  Buffer rescale;    // [rows_padded], exp(m_old - m_new) for the current tile
  // ReRoPE only (see rerope_queries and rerope_keys): each side of the window has its own Q and
  // K rotations, and a tile that straddles the window has logits from both.
  Buffer q_outside;       // laid out as q: Q rotated for the keys beyond the window
  Buffer q_rows;          // [rows_padded, head_dim_k] rotated query rows, before packing
  Buffer k_outside;       // [kKeyTile, head_dim_k] K rows rotated for beyond the window
  Buffer scores_outside;  // laid out as scores: the logits beyond the window
  // bf16 pair products only (TileShape::bf16_pairs); o then holds O^T [head_dim_v_padded, rows].
  using PairBuffer = std::vector<Bf16Bits, Eigen::aligned_allocator<Bf16Bits>>;
  PairBuffer q_pairs;  // [head_dim_k / 2, rows_padded, 2]: Q^T (unscaled) in pairs along dk
  PairBuffer p_pairs;  // [kKeyTile / 2, rows_padded, 2]: P^T in pairs of keys
  PairBuffer v_pairs;  // [kKeyTile / 2, head_dim_v, 2]: V in pairs of keys
  // AMX tiles only (TileShape::amx_tiles), each buffer once per part (amx_parts): q_pairs holds Q
  // as bf16 rows [rows_padded, head_dim_k] (bf16: unscaled; the parts of f32: of the scaled q),
  // p_pairs P as bf16 rows [rows_padded, kKeyTile]; v_pairs as above.
  PairBuffer k_pairs;  // [head_dim_k / 2, kKeyTile, 2]: K^T in pairs along dk
  LinePrefetcher prefetcher;  // the next tile's rows, requested while this one is computed

  /// Sizes every buffer for `shape` and empties the prefetcher's list. The buffers keep their
  /// capacity and contents from call to call (see thread_scratch), so a call whose shape fits them
  /// takes no new memory and writes nothing here: every packer writes the padding its product
  /// reads (zero past the last key and the last dim), and the softmax state and O are started by
  /// each item (load_queries). Zeroing them all per call (106 KiB per thread for MQA decode)
  /// took 4.5-6% of the samples of a decode step over 512 keys; measured on a Xeon (MQA, the
  /// cache in L2, medians of 20000 steps, 5 alternated rounds), leaving them cut the step by 6%
  /// with 2 threads, 3% with 1, and 2.5% at 1536 keys. Without NDEBUG (the sanitizer tests) the
  /// buffers are filled with NaN instead, so that any read of scratch the call did not write
  /// shows in its results.
  void prepare(const TileShape& shape) {
    const auto sized = [](auto& buffer, Index size) {
      buffer.resize(static_cast<size_t>(size));
#ifndef NDEBUG
      std::fill(buffer.begin(), buffer.end(),
                poison<typename std::decay_t<decltype(buffer)>::value_type>());
#endif
    };
    sized(q, shape.rows_padded *
                 std::max(shape.head_dim_k, shape.bf16_pairs ? shape.head_dim_v_padded : Index{0}));
    sized(k, shape.streamed && !shape.rerope ? 0 : kKeyTile * shape.head_dim_k);
    sized(v, shape.streamed || shape.bf16_pairs || shape.amx_tiles
                 ? 0
                 : kKeyTile * padded_rows(shape.head_dim_v));
    sized(o, shape.rows_padded * shape.head_dim_v_padded);
    sized(scores, shape.rows_padded * kKeyTile);
    sized(row_max, shape.rows_padded);
    sized(row_sum, shape.rows_padded);
    sized(rescale, shape.rows_padded);
    sized(q_outside, shape.rerope ? shape.rows_padded * shape.head_dim_k : 0);
    sized(q_rows, shape.rerope ? shape.rows_padded * shape.head_dim_k : 0);
    sized(k_outside, shape.rerope ? kKeyTile * shape.head_dim_k : 0);
    sized(scores_outside, shape.rerope ? shape.rows_padded * kKeyTile : 0);
    sized(q_pairs, pair_parts(shape) * shape.rows_padded * shape.head_dim_k);
    sized(p_pairs, pair_parts(shape) * shape.rows_padded * kKeyTile);
    sized(v_pairs, pair_parts(shape) * kKeyTile * shape.head_dim_v);
    sized(k_pairs, shape.amx_parts * kKeyTile * shape.head_dim_k);
    prefetcher.clear();
  }

  /// The copies of the pair buffers a call needs: one per AMX part, one for the pair products.
  static Index pair_parts(const TileShape& shape) {
    return shape.amx_tiles ? shape.amx_parts : shape.bf16_pairs ? 1 : 0;
  }
};

/// The scratch of the calling thread, kept for its next call. Allocating it per call cost decode
/// more than the allocation itself: glibc returns a freed heap top (or a large block's mapping) to
/// the system, so each call faulted its pages in again and each unmapping interrupted the other
/// core. Measured here (MQA decode, 16k keys, 2 threads): 17-160 us of a 1.5 ms step, growing
/// with the split count. The buffers grow to the largest shape the thread has run (at most a few
/// MiB: O(tile) per thread) and are freed when the thread ends.
inline TileScratch& thread_scratch() {
  thread_local TileScratch scratch;
  return scratch;
}

/// The partial results of split keys (see attend_tiled), kept per calling thread as above up to
/// kKeptSplitBytes: more comes from many splits asked for by the caller (kv_splits) or from
/// groups of thousands of heads, and is freed after the call.
struct SplitResults {
  std::vector<float> out;  // [items, rows_per_item, head_dim_v] normalised
  std::vector<float> lse;  // [items, rows_per_item]
};
inline constexpr size_t kKeptSplitBytes = size_t{16} << 20;
inline SplitResults& thread_split_results() {
  thread_local SplitResults results;
  return results;
}

/// Where a work item leaves its rows: the output and LSE views, or, when the keys are split, the
/// item's slot of the partial results that the merge pass combines.
struct RowSink {
  float* partial_out = nullptr;  // [rows_per_item, head_dim_v] normalised, or null: write `out`
  float* partial_lse = nullptr;  // [rows_per_item]
};

/// One work item: the rows of query positions [i0, i1) of sequence b for every query head of kv
/// head `kv_head`'s group, against all keys their masks allow, tile by tile. Row r is position
/// i0 + r / group_size, head kv_head * group_size + r % group_size (positions outermost, so a
/// block of rows spans few positions and shares most of its mask). The running softmax state and
/// the output accumulator live in the thread's scratch.
/// \tparam kDk, kDv head dims fixed at compile time, or kDynamicDim.
template <int kDk, int kDv, class QT, class Source>
struct WorkItem {
  using Element = typename Source::Element;
  // bf16 queries, keys and values on a build with AVX512_BF16 (see shape.bf16_pairs).
  static constexpr bool kPairProducts = kHasBf16Dot && std::is_same_v<QT, Eigen::bfloat16> &&
                                        std::is_same_v<Element, Eigen::bfloat16>;
  // bf16 queries, keys and values on a build with AMX (see shape.amx_tiles).
  static constexpr bool kAmxProducts = kHasAmx && kPairProducts;
  // f32 queries, keys and values on a build with AMX, as three bf16 parts (shape.amx_tiles).
  static constexpr bool kSplitProducts =
      kHasAmx && std::is_same_v<QT, float> && std::is_same_v<Element, float>;
  static constexpr bool kTileProducts = kAmxProducts || kSplitProducts;

  /// The keys [k0, k1) of the tile being computed; `visible` when every row of the item sees
  /// every one of them.
  struct TileKeys {
    Index k0, k1;
    bool visible;
    /// Whether no logit of the tile's kKeyTile slots is masked: every row sees a full tile.
    bool unmasked() const { return visible && k1 - k0 == kKeyTile; }
  };
  /// The rows of a key-major tile that see any of its keys, and the requests for the next tile.
  struct KeyMajorRows {
    Index row_first, row_end;        // one interval: mask ends never decrease with the position
    Index packet_first, packet_end;  // the packets of rows computed
    LinePrefetcher* prefetcher;      // the next tile's lines (see LinePrefetcher), or null
    Index pv_depth;                  // the depth of the FMA P.V products in all
  };

  const TensorView<const QT>& q;
  const Source& source;
  const AttentionOptions& options;
  const float scale;
  const TileShape& shape;
  const Index b, kv_head, i0, i1;
  TileScratch& scratch;
  const Index dk = kDk != kDynamicDim ? kDk : shape.head_dim_k;
  const Index dv = kDv != kDynamicDim ? kDv : shape.head_dim_v;
  const Index dv_pad = shape.head_dim_v_padded;
  const Index group = shape.group_size;
  const Index rows = (i1 - i0) * group;
  const Index rows_pad = padded_rows(rows);
  const Index kv_len = source.kv_len(b);
  const Index pos_offset = kv_len - shape.q_len;  // queries are the last q_len positions
  const KeyInterval keys{options.mask.kind, options.mask.window, kv_len};
  const ReRope* const rerope = options.rerope;
  const Index window = rerope != nullptr ? rerope->config().window : 0;
  // How far ahead of its use the decode products request a row (see kPrefetchBytes).
  const Index prefetch_distance = std::clamp<Index>(
      kPrefetchBytes / (std::max(dk, dv) * static_cast<Index>(sizeof(Element))), 1,
      TileRows<Element>::kMaxDistance);
  // Whether the decode products also request rows a phase ahead: always for a group of rows,
  // whose products are long enough for the streams to idle between phases, and for one row
  // where the core gains from it (see FarRows and kOneRowFarRequests).
  const bool far_requests = rows > 1 || kOneRowFarRequests;

  /// Computes the item's rows against the keys of range `split` (see visible_keys) and writes
  /// them to `out`, or to `sink`'s partial results when the keys are split. With
  /// `next_split_here`, this thread computes range split + 1 next, and the last tile requests its
  /// first tile as any tile requests the next: a split would otherwise start on keys nobody has
  /// requested and wait for DRAM.
  void run(Index split, const TensorView<float>& out, const RowSink& sink, bool next_split_here) {
    load_queries();
    const auto [item_first, item_end] = visible_keys(split);
    // The next split's keys start where this one's end (visible_keys cuts them back to back).
    const Index fetch_end = next_split_here ? visible_keys(split + 1).second : item_end;
    if constexpr (kTileProducts) {
      if (shape.amx_tiles) configure_amx_tiles();
    }
    TileRows<Element> tile;  // this tile's rows and the next one's, for prefetching
    if (item_first < item_end) {
      tile.count = std::min(kKeyTile, item_end - item_first);
      gather_tile_rows(source, b, kv_head, item_first, tile.count, 0, tile);
    }
    for (Index k0 = item_first; k0 < item_end; k0 += kKeyTile, tile.advance()) {
      const Index k1 = std::min(k0 + kKeyTile, item_end);
      if (k1 < fetch_end) {
        tile.next_count = std::min(kKeyTile, (k1 < item_end ? item_end : fetch_end) - k1);
        gather_tile_rows(source, b, kv_head, k1, tile.next_count, tile.count, tile);
      }
      const TileKeys span{
          k0, k1, k0 >= keys.first(position(rows - 1)) && k1 <= keys.end(position(0))};
      if (shape.streamed) {
        streamed_tile(tile, span);
      } else {
        key_major_tile(tile, span);
      }
    }
    if constexpr (kTileProducts) {
      if (shape.amx_tiles) release_amx_tiles();
    }
    write_rows(out, sink);
  }

  Index position(Index row) const { return i0 + row / group + pos_offset; }
  const QT* q_row(Index r) const { return q.row(b, i0 + r / group, kv_head * group + r % group); }

  /// Writes the Q rows times the scale as f32 rows [rows, dk] at rows_out.
  void scale_query_rows(float* rows_out) const {
    for (Index r = 0; r < rows; ++r) {
      for (Index d = 0; d < dk; ++d) {
        rows_out[r * dk + d] = static_cast<float>(q_row(r)[d * q.dim_stride]) * scale;
      }
    }
  }

  /// Lays out the item's Q rows as its products read them (times the scale: [rows, dk] for the
  /// streamed path, else transposed [dk, rows_pad]) and starts the softmax state and O empty.
  void load_queries() {
    const auto row_of = [this](Index r) { return q_row(r); };
    const auto position_of = [this](Index row) { return position(row); };
    if (shape.amx_tiles) {
      if constexpr (kSplitProducts) {
        // Scaled before the split, as the FMA path scales Q: the scores come out scaled.
        scale_query_rows(scratch.q.data());
        std::fill(scratch.q.begin() + rows * dk, scratch.q.begin() + rows_pad * dk, 0.0f);
        pack_split_rows(scratch.q.data(), dk, 0, rows_pad, dk, scratch.q_pairs.data(), dk,
                        rows_pad * dk);
      } else {
        pack_query_rows(rows, dk, row_of, q.dim_stride, rows_pad, scratch.q_pairs.data());
      }
    } else if (shape.bf16_pairs) {
      pack_query_pairs(rows, dk, row_of, q.dim_stride, rows_pad, scratch.q_pairs.data());
    } else if (rerope != nullptr) {
      rerope_queries(*rerope, rows, dk, row_of, q.dim_stride, position_of, scale, shape.streamed,
                     rows_pad, scratch.q_rows.data(), scratch.q.data(), scratch.q_outside.data());
    } else if (shape.streamed) {
      scale_query_rows(scratch.q.data());
    } else {
      pack_transposed(rows, dk, row_of, q.dim_stride, scale, rows_pad, scratch.q.data());
    }
    std::fill(scratch.o.begin(), scratch.o.begin() + rows_pad * dv_pad, 0.0f);
    std::fill(scratch.row_max.begin(), scratch.row_max.begin() + rows_pad, kNegInf);
    std::fill(scratch.row_sum.begin(), scratch.row_sum.begin() + rows_pad, 0.0f);
  }

  /// Returns the keys [first, end) the item visits: those its rows' masks allow, or with split
  /// keys (num_splits > 1) range `split` of them, cut into num_splits ranges of whole tiles:
  /// splits follow the visible keys (a sliding window, a short sequence of the batch), not the
  /// whole cache.
  std::pair<Index, Index> visible_keys(Index split) const {
    Index item_first = keys.first(position(0));
    Index item_end = keys.end(position(rows - 1));
    if (shape.num_splits > 1) {
      const Index visible = std::max<Index>(0, item_end - item_first);
      const Index per_split = (visible + shape.num_splits - 1) / shape.num_splits;
      const Index chunk = std::max<Index>(1, (per_split + kKeyTile - 1) / kKeyTile) * kKeyTile;
      item_first = std::min(item_end, item_first + split * chunk);
      item_end = std::min(item_end, item_first + chunk);
    }
    return {item_first, item_end};
  }

  /// Returns the keys of the tile that rows [r0, r0 + block_rows) may see, empty when all are
  /// masked.
  std::pair<Index, Index> block_keys(const TileKeys& span, Index r0, Index block_rows) const {
    return {std::max(span.k0, keys.first(position(r0))),
            std::min(span.k1, keys.end(position(r0 + block_rows - 1)))};
  }

  /// Sets to -inf the logits of row r (at scores[r * row_step + c * key_step]) in key slots
  /// c < slots that it does not see: the softmax of key-major tiles reads the tile's keys alone
  /// (slots = k1 - k0), the row-major ones all kKeyTile slots, also past a partial tile's keys.
  void mask_row(const TileKeys& span, Index r, float* scores, Index row_step, Index key_step,
                Index slots) const {
    const Index pos = position(r);
    const Index count = span.k1 - span.k0;
    const Index lo = std::clamp(keys.first(pos) - span.k0, Index{0}, count);
    const Index hi = std::clamp(keys.end(pos) - span.k0, lo, count);
    float* row = scores + r * row_step;
    for (Index c = 0; c < lo; ++c) row[c * key_step] = kNegInf;
    for (Index c = hi; c < slots; ++c) row[c * key_step] = kNegInf;
  }

  /// Soft-caps `count` logits (Gemma 2: logit = cap * tanh(logit / cap)), before the mask so
  /// masked keys stay -inf.
  void apply_softcap(float* scores, Index count) const {
    auto s = Eigen::Map<Eigen::ArrayXf>(scores, count);
    s = options.softcap * (s * (1.0f / options.softcap)).tanh();
  }

  // ReRoPE: rows at positions p <= k1 + w - 2 see keys of a tile inside the window (j > p - w),
  // rows at p >= k0 + w keys beyond it.
  /// Returns the first row at position `pos` or later (rows if none).
  Index first_row_at(Index pos) const {
    return std::clamp((pos - i0 - pos_offset) * group, Index{0}, rows);
  }
  /// Takes the logits of keys j <= p - w (at scores[r * row_step + c * key_step]) of rows
  /// [r_first, r_end) from `beyond`: rows that see keys of the tile on both sides of the window.
  void take_beyond_window(const TileKeys& span, Index r_first, Index r_end, const float* beyond,
                          float* scores, Index row_step, Index key_step) const {
    for (Index r = r_first; r < r_end; ++r) {
      const Index count = std::clamp(position(r) - window + 1 - span.k0, Index{0},
                                     span.k1 - span.k0);
      for (Index c = 0; c < count; ++c) {
        scores[r * row_step + c * key_step] = beyond[r * row_step + c * key_step];
      }
    }
  }

  /// Computes a tile of a decode step: the few rows (at most kTileRows) read K and V straight
  /// from the source, scores row-major.
  void streamed_tile(const TileRows<Element>& tile, const TileKeys& span) {
    const Index k0 = span.k0;
    const Index k1 = span.k1;
    const bool unmasked = span.unmasked();
    const Element* const* k_ahead = tile.k + prefetch_distance;
    const Index block_rows = rows;
    const auto [block_first, block_end] = block_keys(span, 0, block_rows);
    if (block_first >= block_end) return;
    float* scores = scratch.scores.data();
    const Index k_bytes = dk * static_cast<Index>(sizeof(Element));
    const Index v_bytes = dv * static_cast<Index>(sizeof(Element));
    // `ahead`: the source rows to request meanwhile; with `far` (and far_requests), the scores
    // also request the tile's V rows and the next tile's K rows (see FarRows), unless an earlier
    // product of the tile has.
    const auto scores_against = [&](const float* q_rows, const auto* k_rows, const float* k_scale,
                                    const Element* const* ahead, bool far, float* out_scores) {
      const FarRows<Element> far_rows =
          far && far_requests ? FarRows<Element>{tile.v, v_bytes, tile.k + tile.count, k_bytes}
              : FarRows<Element>{};
      dispatch_rows(block_rows, [&](auto rows_tag) {
        dot_scores<decltype(rows_tag)::value>(q_rows, dk, k_rows, k_scale, tile.count, ahead,
                                              out_scores, kKeyTile, far_rows);
      });
    };
    if (rerope == nullptr) {
      scores_against(scratch.q.data(), tile.k, tile.k_scale, k_ahead, true, scores);
    } else {
      const bool inside = first_row_at(k1 + window - 1) > 0;
      const Index beyond_first = first_row_at(k0 + window);
      const bool beyond = beyond_first < block_rows;
      const float* rotated[kKeyTile];
      if (inside) {
        rerope_keys(*rerope, KeyRotation::kPosition, tile, k0, dk, source.k_dim_stride(),
                    k_ahead, scratch.k.data());
        for (Index c = 0; c < tile.count; ++c) rotated[c] = scratch.k.data() + c * dk;
        scores_against(scratch.q.data(), rotated, unit_scales(), nullptr, true, scores);
      }
      if (beyond) {
        float* beyond_scores = inside ? scratch.scores_outside.data() : scores;
        if (rerope->config().is_leaky()) {
          // The few rows take the angle the tile's keys share (a tile within one block of
          // the leaky table), and each key only its own part, read from the table: no angles
          // are composed per key. Measured here (GQA 32/8, 32k keys, 2 threads, three paired
          // rounds): roof 0.51 -> 0.56.
          const Index block = k0 / LeakyAngles::kFineRows;
          const bool one_block = (k1 - 1) / LeakyAngles::kFineRows == block;
          const float* q_beyond = scratch.q_outside.data();
          if (one_block) {
            unrotate_queries_by_block(*rerope, block, block_rows, dk, q_beyond,
                                      scratch.q_rows.data());
            q_beyond = scratch.q_rows.data();
          }
          rerope_keys(*rerope, one_block ? KeyRotation::kLeakyInBlock : KeyRotation::kLeaky,
                      tile, k0, dk, source.k_dim_stride(), inside ? nullptr : k_ahead,
                      scratch.k_outside.data());
          for (Index c = 0; c < tile.count; ++c) rotated[c] = scratch.k_outside.data() + c * dk;
          scores_against(q_beyond, rotated, unit_scales(), nullptr, !inside, beyond_scores);
        } else {
          scores_against(scratch.q_outside.data(), tile.k, tile.k_scale,
                         inside ? nullptr : k_ahead, !inside, beyond_scores);
        }
        if (inside) {
          take_beyond_window(span, beyond_first, block_rows, beyond_scores, scores, kKeyTile, 1);
        }
      }
    }
    if (options.softcap > 0.0f) apply_softcap(scores, block_rows * kKeyTile);
    for (Index r = 0; r < block_rows && !unmasked; ++r) {
      mask_row(span, r, scores, kKeyTile, 1, kKeyTile);
    }
    online_softmax_update(block_rows, scores, scratch.row_max.data(), scratch.row_sum.data(),
                          scratch.rescale.data());
    // Probabilities past block_end are zero: the P.V depth stops there.
    const Index depth = block_end - k0;
    if constexpr (kHasScale<Element>) {
      // P.diag(v_scale).V_int8: each probability takes its key's V scale once here, the same
      // product the P.V formed once per row and panel of columns (bit-identical results).
      // Measured here with in_register (Zen 5, int8 GQA 32/8 decode, 16k keys in DRAM, 2
      // threads, medians of 6 alternated runs): 13% less time per step.
      const auto v_scale = Eigen::Map<const Eigen::ArrayXf>(tile.v_scale, depth);
      for (Index r = 0; r < block_rows; ++r) {
        Eigen::Map<Eigen::ArrayXf>(scores + r * kKeyTile, depth) *= v_scale;
      }
    }
    // The P.V requests the next tile's V rows as it goes (see FarRows).
    const SourceRows<Element> v_rows{tile.v, tile.v + prefetch_distance, v_bytes,
                                     far_requests ? FarRows<Element>{tile.v + tile.count, v_bytes}
                                                  : FarRows<Element>{}};
    gemm_rows<Accumulate::kRescaleAndAdd>(block_rows, Lhs{scores, kKeyTile, 1}, v_rows, depth,
                                          scratch.o.data(), dv_pad, dv, scratch.rescale.data());
  }

  /// Computes a key-major tile (prefill; decode of wide groups): S^T, P^T and Q^T with the rows
  /// along the lanes, by the processor's best products.
  void key_major_tile(const TileRows<Element>& tile, const TileKeys& span) {
    const Index k0 = span.k0;
    const Index k1 = span.k1;
    // The rows that see any key of the tile are one interval (mask ends never decrease with the
    // position); only their packets are computed.
    Index row_first = 0, row_end = rows;
    while (row_first < rows && keys.end(position(row_first)) <= k0) ++row_first;
    while (row_end > row_first && keys.first(position(row_end - 1)) >= k1) --row_end;
    if (row_first == row_end) return;
    const Index packet_first = row_first / kPacketSize;
    const Index packet_end = (row_end + kPacketSize - 1) / kPacketSize;

    // The next tile's rows are requested while this one is computed (see LinePrefetcher); rows
    // with a dim stride are scattered, and no line list describes them. The AMX products of bf16
    // operands take no requests; a burst of a tile's requests at its end held 8% of their
    // samples and gained nothing, as packing the next tile streams its rows in order anyway.
    // Those of f32 operands take them block by block: their packing waited on the rows.
    LinePrefetcher* prefetcher = nullptr;
    if (tile.next_count > 0 && source.k_dim_stride() == 1 && source.v_dim_stride() == 1 &&
        (!shape.amx_tiles || kSplitProducts)) {
      scratch.prefetcher.clear();
      scratch.prefetcher.add_rows(tile.k + tile.count, tile.v + tile.count, tile.next_count,
                                  dk * Index{sizeof(Element)}, dv * Index{sizeof(Element)});
      prefetcher = &scratch.prefetcher;
    }
    // The depth of the P.V products in all (see below): blocks of kTileRows rows, panels of
    // kTilePackets packets of columns and single packets, at most a tile of keys deep.
    const Index pv_panels = dv_pad / (kTilePackets * kPacketSize) +
                            dv_pad % (kTilePackets * kPacketSize) / kPacketSize;
    const Index pv_depth =
        (row_end - row_first + kTileRows - 1) / kTileRows * pv_panels * tile.count;
    const KeyMajorRows at{row_first, row_end, packet_first, packet_end, prefetcher, pv_depth};
    if constexpr (kPairProducts) {
      if (shape.bf16_pairs) return pair_tile(tile, span, at);
    }
    if constexpr (kTileProducts) {
      if (shape.amx_tiles) return amx_tile(tile, span, at);
    }
    fma_tile(tile, span, at);
  }

  /// Soft-caps and masks the tile's key-major logits and folds them into the running softmax.
  void softmax_key_major(const TileRows<Element>& tile, const TileKeys& span,
                         const KeyMajorRows& at, float* logits) {
    if (options.softcap > 0.0f) apply_softcap(logits, tile.count * rows_pad);
    // Only the tile's keys are read: decode, whose rows see every key, masks nothing even in
    // its last, partial tile. (Measured on a Xeon, MQA: masking its 64 slots took 1.3 us a step.)
    const Index mask_end = std::min(rows, at.packet_end * kPacketSize);
    for (Index r = at.packet_first * kPacketSize; r < mask_end && !span.visible; ++r) {
      mask_row(span, r, logits, 1, rows_pad, tile.count);
    }
    online_softmax_columns(tile.count, rows_pad, at.packet_first, at.packet_end, logits,
                           scratch.row_max.data(), scratch.row_sum.data(),
                           scratch.rescale.data());
  }

  /// The key-major tile by bf16 pair products (TileShape::bf16_pairs).
  void pair_tile(const TileRows<Element>& tile, const TileKeys& span, const KeyMajorRows& at) {
    const Index k0 = span.k0;
    const Index k1 = span.k1;
    const Index row_end = at.row_end;
    const Index packet_first = at.packet_first;
    const Index packet_end = at.packet_end;
    LinePrefetcher* const prefetcher = at.prefetcher;
    float* scores = scratch.scores.data();
    // S^T = scale K.Q^T, K rows read in place; P.V into O^T. The probabilities past the last
    // key any row sees are zero: the P.V depth stops there.
    const auto k_bits = [&](Index c) { return reinterpret_cast<const Bf16Bits*>(tile.k[c]); };
    bf16_pair_product<false>(tile.count, k_bits, 2, scratch.q_pairs.data(), 2 * rows_pad,
                             packet_first, packet_end, dk / 2, scores, rows_pad, nullptr,
                             scale, prefetcher);
    softmax_key_major(tile, span, at, scores);
    const Index depth = std::min(k1, keys.end(position(row_end - 1))) - k0;
    pack_probability_pairs(scores, depth, rows_pad, packet_first, packet_end,
                           scratch.p_pairs.data());
    pack_value_pairs(tile.v, depth, dv, scratch.v_pairs.data());
    const Bf16Bits* v_pairs = scratch.v_pairs.data();
    bf16_pair_product<true>(dv, [&](Index d) { return v_pairs + 2 * d; }, 2 * dv,
                            scratch.p_pairs.data(), 2 * rows_pad, packet_first, packet_end,
                            (depth + 1) / 2, scratch.o.data(), rows_pad,
                            scratch.rescale.data(), 1.0f, nullptr);
    if (prefetcher != nullptr) prefetcher->finish();
  }

  /// The key-major tile on AMX tiles (TileShape::amx_tiles).
  void amx_tile(const TileRows<Element>& tile, const TileKeys& span, const KeyMajorRows& at) {
    const Index k0 = span.k0;
    const Index k1 = span.k1;
    const bool unmasked = span.unmasked();
    const Index row_end = at.row_end;
    const Index packet_first = at.packet_first;
    const Index packet_end = at.packet_end;
    LinePrefetcher* const prefetcher = at.prefetcher;
    float* scores = scratch.scores.data();
    // Row packets are the AMX row blocks (16 rows; see amx_tile_kernel.hpp).
    // S = Q.K^T in row-major f32, scaled; the row-major online softmax per 16 rows; P as bf16
    // rows; O = diag(rescale) O + P.V. Keys past the tile's last are zero in K^T and V (and
    // masked in S). f32 operands go in three bf16 parts each (amx_split_kernel.hpp).
    const Index first = packet_first * kPacketSize, end = packet_end * kPacketSize;
    Bf16Bits* const k_pairs = scratch.k_pairs.data();
    Bf16Bits* const p_pairs = scratch.p_pairs.data();
    Bf16Bits* const v_pairs = scratch.v_pairs.data();
    const Bf16Bits* const q_pairs = scratch.q_pairs.data();
    if constexpr (kSplitProducts) {
      if (prefetcher != nullptr) {
        prefetcher->spread_over(
            LinePrefetcher::kDepthPerStep *
            (amx_split_steps(packet_first, packet_end, kKeyTile, dk) +
             amx_split_steps(packet_first, packet_end, dv, kKeyTile)));
      }
      pack_split_key_pairs<kKeyTile>(tile.k, tile.count, dk, k_pairs, kKeyTile * dk);
      amx_split_product(q_pairs, rows_pad * dk, dk, k_pairs, kKeyTile * dk, 2 * kKeyTile, dk,
                        kKeyTile, packet_first, packet_end, scores, kKeyTile, false,
                        prefetcher);
    } else {
      const auto k_bits = [&](Index c) { return tile.k[c]; };
      pack_query_pairs(tile.count, dk, k_bits, 1, kKeyTile, k_pairs);
      amx_scores<kKeyTile>(q_pairs, dk, k_pairs, packet_first, packet_end, scores);
      Eigen::Map<Eigen::ArrayXf>(scores + first * kKeyTile, (end - first) * kKeyTile) *= scale;
    }
    if (options.softcap > 0.0f) {
      apply_softcap(scores + first * kKeyTile, (end - first) * kKeyTile);
    }
    for (Index r = first; r < std::min(rows, end) && !unmasked; ++r) {
      mask_row(span, r, scores, kKeyTile, 1, kKeyTile);
    }
    for (Index r0 = first; r0 < end; r0 += kPacketSize) {
      online_softmax_update(kPacketSize, scores + r0 * kKeyTile, scratch.row_max.data() + r0,
                            scratch.row_sum.data() + r0, scratch.rescale.data() + r0);
    }
    // The keys past the last one any row sees have zero probabilities: the P.V depth stops
    // there, in whole depth steps of the tiles.
    const Index depth = std::min(k1, keys.end(position(row_end - 1))) - k0;
    if constexpr (kSplitProducts) {
      const Index steps = (depth + kAmxDepth - 1) / kAmxDepth * kAmxDepth;
      pack_split_rows(scores, kKeyTile, first, end, steps, p_pairs, kKeyTile,
                      rows_pad * kKeyTile);
      pack_split_value_pairs(tile.v, std::min(depth, tile.count), steps, dv, v_pairs,
                             kKeyTile * dv);
      rescale_rows(scratch.rescale.data(), first, end, dv, scratch.o.data(), dv_pad);
      amx_split_product(p_pairs, rows_pad * kKeyTile, kKeyTile, v_pairs, kKeyTile * dv,
                        2 * dv, steps, dv, packet_first, packet_end, scratch.o.data(), dv_pad,
                        true, prefetcher);
      if (prefetcher != nullptr) prefetcher->finish();
    } else {
      pack_probability_rows<kKeyTile>(scores, first, end, p_pairs);
      pack_value_pairs(tile.v, depth, dv, v_pairs);
      std::fill(v_pairs + (depth + 1) / 2 * 2 * dv, v_pairs + kKeyTile * dv, Bf16Bits{0});
      amx_output<kKeyTile>(p_pairs, v_pairs, dv, packet_first, packet_end,
                           scratch.rescale.data(), scratch.o.data(), dv_pad);
    }
  }

  /// The key-major tile by the FMA micro-kernel: S^T = K.Q^T (both sides of ReRoPE's window where
  /// the tile straddles it), the softmax, then O = diag(rescale) O + P.V.
  void fma_tile(const TileRows<Element>& tile, const TileKeys& span, const KeyMajorRows& at) {
    const Index k0 = span.k0;
    const Index k1 = span.k1;
    const Index row_first = at.row_first;
    const Index row_end = at.row_end;
    const Index packet_first = at.packet_first;
    const Index packet_end = at.packet_end;
    LinePrefetcher* const prefetcher = at.prefetcher;
    const Index pv_depth = at.pv_depth;
    float* scores = scratch.scores.data();
    const float* k_rows = nullptr;  // the K rows as f32, when unrotated
    if (rerope == nullptr) {
      k_rows = packed_k_rows(tile, dk, source.k_row_stride(), source.k_dim_stride(),
                             scratch.k.data());
      key_major_scores<kDk>(k_rows, tile.count, scratch.q.data(), rows_pad, dk, packet_first,
                            packet_end, scores, prefetcher, pv_depth);
    } else {
      // Only the row packets that see keys on a side of the window compute its logits.
      const Index inside_end = std::min(row_end, first_row_at(k1 + window - 1));
      const Index beyond_first = std::max(row_first, first_row_at(k0 + window));
      const bool inside = row_first < inside_end, beyond = beyond_first < row_end;
      if (inside) {
        rerope_keys<Element>(*rerope, KeyRotation::kPosition, tile, k0, dk,
                             source.k_dim_stride(), nullptr, scratch.k.data());
        key_major_scores<kDk>(scratch.k.data(), tile.count, scratch.q.data(), rows_pad, dk,
                              packet_first, (inside_end + kPacketSize - 1) / kPacketSize, scores,
                              prefetcher, pv_depth);
      }
      if (beyond) {
        const float* k_beyond = scratch.k_outside.data();
        if (rerope->config().is_leaky()) {
          rerope_keys<Element>(*rerope, KeyRotation::kLeaky, tile, k0, dk,
                               source.k_dim_stride(), nullptr, scratch.k_outside.data());
        } else {
          k_beyond = packed_k_rows(tile, dk, source.k_row_stride(), source.k_dim_stride(),
                                   scratch.k_outside.data());
        }
        float* beyond_scores = inside ? scratch.scores_outside.data() : scores;
        key_major_scores<kDk>(k_beyond, tile.count, scratch.q_outside.data(), rows_pad, dk,
                              beyond_first / kPacketSize, packet_end, beyond_scores,
                              inside ? nullptr : prefetcher, pv_depth);
        // Rows past inside_end take every key from beyond the window, also those whose packets
        // the inside product did not compute.
        if (inside) {
          take_beyond_window(span, beyond_first, std::min(rows_pad, packet_end * kPacketSize),
                             beyond_scores, scores, 1, rows_pad);
        }
      }
    }
    softmax_key_major(tile, span, at, scores);

    // O = diag(rescale) O + P.V, panels of V columns outermost so each stays in L1 while every
    // block of rows uses it; P is read key-major.
    // Values stored inside the key rows (MLA's latent cache: V is the first dv elements of each
    // key) are read from the K rows above, converted or in place, instead of being converted or
    // copied a second time. (The product loads whole aligned packets: dk and dv must be packet
    // multiples, the rows aligned.) Measured here (f32 latent cache, 16 heads, the cache in L2,
    // 1 thread): copying the V rows of f32 caches took 18% of the time.
    const bool values_in_k_rows =
        k_rows != nullptr && dk % kPacketSize == 0 && dv % kPacketSize == 0 &&
        packet_aligned(k_rows) && values_are_keys(tile);
    const float* v_in_place =
        values_in_k_rows ? nullptr : in_place_v_rows(tile, dv, source.v_dim_stride());
    const Index v_stride = padded_rows(dv);
    if (!values_in_k_rows && v_in_place == nullptr) {
      pack_v_tile(tile, dv, v_stride, source.v_dim_stride(), scratch.v.data());
    }
    const PackedRows v_rows = values_in_k_rows ? PackedRows{k_rows, dk, prefetcher}
                              : v_in_place != nullptr
                                  ? PackedRows{v_in_place, dv, prefetcher}
                                  : PackedRows{scratch.v.data(), v_stride, prefetcher};
    const Index columns = values_in_k_rows || v_in_place != nullptr ? dv : dv_pad;
    const auto panel = [&](Index col, auto packets_tag) {
      constexpr int kPackets = decltype(packets_tag)::value;
      for_each_row_block(row_first, row_end, [&](Index r0, Index block_rows) {
        // Not a structured binding: C++17 lets no lambda capture one (clang refuses it).
        const std::pair<Index, Index> block = block_keys(span, r0, block_rows);
        const Index block_end = block.second;
        if (block.first >= block_end) return;  // the whole block is masked in this tile
        dispatch_rows(block_rows, [&](auto rows_tag) {
          micro_kernel<decltype(rows_tag)::value, kPackets, Accumulate::kRescaleAndAdd>(
              Lhs{scores + r0, 1, rows_pad}, v_rows, col, block_end - k0,
              scratch.o.data() + r0 * dv_pad + col, dv_pad, scratch.rescale.data() + r0, true);
        });
      });
    };
    Index col = 0;
    for (; col + kTilePackets * kPacketSize <= columns; col += kTilePackets * kPacketSize) {
      panel(col, std::integral_constant<int, kTilePackets>{});
    }
    for (; col < columns; col += kPacketSize) panel(col, std::integral_constant<int, 1>{});
    if (prefetcher != nullptr) prefetcher->finish();
  }

  /// Writes O / l and LSE = m + log l of every row to `out` (or to `sink`'s partial results); a
  /// row without visible keys (l = 0) gives zeros and -inf.
  void write_rows(const TensorView<float>& out, const RowSink& sink) const {
    // The bf16 pair products leave O^T, transposed back into the (then unused) Q scratch first.
    const float* o = scratch.o.data();
    if (shape.bf16_pairs) {
      pack_transposed(dv_pad, rows_pad, [&](Index d) { return o + d * rows_pad; }, 1, 1.0f, dv_pad,
                      scratch.q.data());
      o = scratch.q.data();
    }
    for (Index r = 0; r < rows; ++r) {
      const Index i = i0 + r / group, head = kv_head * group + r % group;
      const float l = scratch.row_sum[r];
      const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;
      const float lse = l > 0.0f ? scratch.row_max[r] + std::log(l) : kNegInf;
      const float* o_row = o + r * dv_pad;
      if (sink.partial_out != nullptr) {
        float* partial = sink.partial_out + r * dv;
        for (Index d = 0; d < dv; ++d) partial[d] = o_row[d] * inv_l;
        sink.partial_lse[r] = lse;
        continue;
      }
      float* out_row = out.row(b, i, head);
      for (Index d = 0; d < dv; ++d) out_row[d * out.dim_stride] = o_row[d] * inv_l;
      if (!options.lse.empty()) options.lse(b, head, i) = lse;
    }
  }
};

/// Splits the call into work items (block of query positions, sequence, kv head, key split) and
/// runs them in parallel, the items with the most keys first so the causal triangle balances
/// across threads. With split keys, a second pass merges each row's partial results by their LSE
/// in split order, so the result does not depend on which thread ran which split.
template <int kDk, int kDv, class QT, class Source>
void attend_tiled(const TensorView<const QT>& q, const Source& source,
                  const TensorView<float>& out, const AttentionOptions& options, float scale,
                  const TileShape& shape) {
  const Index heads_and_batch = shape.batch * shape.num_kv_heads;
  const Index num_groups = heads_and_batch * shape.tiles_per_sequence;  // items before splitting
  const Index num_items = num_groups * shape.num_splits;
  const Index dv = shape.head_dim_v, rows = shape.rows_per_item;
  const int num_threads = resolve_num_threads(options.num_threads, num_items);
  // Each thread prepares its own scratch on its first item, so its buffers are in its own cache.
  std::vector<TileScratch*> scratch(static_cast<size_t>(num_threads), nullptr);
  // Every partial row is written (write_rows) before the merge reads it: no zeroing needed.
  SplitResults& partial = thread_split_results();
  if (shape.num_splits > 1) {
    partial.out.resize(static_cast<size_t>(num_items * rows * dv));
    partial.lse.resize(static_cast<size_t>(num_items * rows));
  }
  float* const partial_out = partial.out.data();
  float* const partial_lse = partial.lse.data();
  // Group g = (tile, b, kv_head), tiles in decreasing order; item = g * num_splits + split.
  const auto decode_group = [&](Index g, Index& b, Index& kv_head, Index& i0, Index& i1) {
    const Index tile = shape.tiles_per_sequence - 1 - g / heads_and_batch;
    b = (g % heads_and_batch) / shape.num_kv_heads;
    kv_head = g % shape.num_kv_heads;
    i0 = tile * shape.positions_per_item;
    i1 = std::min(i0 + shape.positions_per_item, shape.q_len);
  };
  // Split keys go out in runs of two consecutive splits, so that the first of each pair requests
  // its successor's first tile (WorkItem::run). Measured here with runs of four (one per thread:
  // MQA decode, 16k keys in DRAM, 8 splits, 2 threads, medians of 18 alternated runs), 0.70 ->
  // 0.72 of the FMA peak; pairs keep most of that and leave the other thread work to take over
  // when the host stalls one core.
  const Index run_length = std::min<Index>(2, (shape.num_splits + num_threads - 1) / num_threads);
  parallel_for(num_items, num_threads, [&](int thread, Index item) {
    Index b, kv_head, i0, i1;
    decode_group(item / shape.num_splits, b, kv_head, i0, i1);
    const Index split = item % shape.num_splits;
    const bool next_split_here = split + 1 < shape.num_splits &&
                                 (num_threads == 1 || (item + 1) % run_length != 0);
    RowSink sink;
    if (shape.num_splits > 1) {
      sink.partial_out = partial_out + item * rows * dv;
      sink.partial_lse = partial_lse + item * rows;
    }
    TileScratch*& mine = scratch[static_cast<size_t>(thread)];
    if (mine == nullptr) {
      mine = &thread_scratch();
      mine->prepare(shape);
    }
    WorkItem<kDk, kDv, QT, Source>{q, source, options, scale, shape, b, kv_head, i0, i1, *mine}
        .run(split, out, sink, next_split_here);
  }, run_length);
  if (shape.num_splits == 1) return;

  parallel_for(num_groups, resolve_num_threads(options.num_threads, num_groups),
               [&](int, Index g) {
    Index b, kv_head, i0, i1;
    decode_group(g, b, kv_head, i0, i1);
    for (Index r = 0; r < (i1 - i0) * shape.group_size; ++r) {
      const Index i = i0 + r / shape.group_size;
      const Index head = kv_head * shape.group_size + r % shape.group_size;
      float* out_row = out.row(b, i, head);
      const Index first = g * shape.num_splits;
      float lse = partial_lse[first * rows + r];
      for (Index d = 0; d < dv; ++d) {
        out_row[d * out.dim_stride] = partial_out[(first * rows + r) * dv + d];
      }
      for (Index split = 1; split < shape.num_splits; ++split) {
        const Index item = first + split;
        const MergeWeights w = merge_weights(lse, partial_lse[item * rows + r]);
        const float* part = partial_out + (item * rows + r) * dv;
        for (Index d = 0; d < dv; ++d) {
          float& o = out_row[d * out.dim_stride];
          o = w.weight_a * o + w.weight_b * part[d];
        }
        lse = w.lse;
      }
      if (!options.lse.empty()) options.lse(b, head, i) = lse;
    }
  });
  if (partial.out.capacity() * sizeof(float) > kKeptSplitBytes) partial = SplitResults{};
}

/// Checks that the mask of the first of q_len queries over kv_len keys reaches no key before
/// `first_readable`: a ring buffer has dropped its oldest keys. `holding` words what the cache
/// holds in the message.
inline void check_mask_reach(const char* where, Index sequence, const Mask& mask, Index kv_len,
                             Index q_len, Index first_readable, const char* holding) {
  const KeyInterval keys{mask.kind, mask.window, kv_len};
  const Index first_query_pos = kv_len - q_len;
  const Index needed = std::min(keys.first(first_query_pos), keys.end(first_query_pos));
  HEADROOM_CHECK(needed >= first_readable, where, "sequence ", sequence, ": the mask reaches key ",
                 needed, " but ", holding, " keys from ", first_readable,
                 " on; use a sliding-window mask no wider than the cache's window");
}

/// Checks every argument of attend and returns the call's shape; throws headroom::Error naming the
/// first bad one.
template <class QT, class Source>
TileShape validate_attend(const TensorView<const QT>& q, const Source& kv,
                          const TensorView<float>& out, const AttentionOptions& options,
                          bool dense) {
  constexpr const char* kWhere = "attend";
  check_view(q, kWhere, "q", false);
  check_view(out, kWhere, "out", true);
  kv.validate(kWhere);
  HEADROOM_CHECK(kv.batch() == q.batch, kWhere, "k.batch (", kv.batch(),
                 ") differs from q.batch (", q.batch, ")");
  HEADROOM_CHECK(out.batch == q.batch, kWhere, "out.batch (", out.batch,
                 ") differs from q.batch (", q.batch, ")");
  HEADROOM_CHECK(out.seq == q.seq, kWhere, "out.seq (", out.seq, ") differs from q.seq (", q.seq,
                 ")");
  HEADROOM_CHECK(q.heads % kv.num_kv_heads() == 0, kWhere, "q.heads (", q.heads,
                 ") is not a multiple of k.heads (", kv.num_kv_heads(), ")");
  HEADROOM_CHECK(out.heads == q.heads, kWhere, "out.heads (", out.heads,
                 ") differs from q.heads (", q.heads, ")");
  HEADROOM_CHECK(kv.head_dim_k() == q.dim, kWhere, "k.dim (", kv.head_dim_k(),
                 ") differs from q.dim (", q.dim, "): keys and queries share head_dim_k");
  HEADROOM_CHECK(out.dim == kv.head_dim_v(), kWhere, "out.dim (", out.dim, ") differs from v.dim (",
                 kv.head_dim_v(), "): the output has head_dim_v");
  HEADROOM_CHECK(dense || options.kv_lens.empty(), kWhere, "kv_lens has ", options.kv_lens.size(),
                 " entries, but it is for dense k and v only: a cache knows its lengths");
  if (options.mask.kind == MaskKind::kSlidingWindow) {
    HEADROOM_CHECK(options.mask.window >= 1, kWhere, "mask.window (", options.mask.window,
                   ") must be at least 1 for a sliding-window mask");
  }
  if (options.scale) {
    HEADROOM_CHECK(std::isfinite(*options.scale), kWhere, "scale (", *options.scale,
                   ") must be finite");
  }
  HEADROOM_CHECK(std::isfinite(options.softcap) && options.softcap >= 0.0f, kWhere, "softcap (",
                 options.softcap, ") must be finite and >= 0 (0 disables it)");
  HEADROOM_CHECK(options.num_threads >= 0, kWhere, "num_threads (", options.num_threads,
                 ") must be >= 0 (0 means the default)");
  HEADROOM_CHECK(options.kv_splits >= 0, kWhere, "kv_splits (", options.kv_splits,
                 ") must be >= 0 (0 means automatic)");
  check_lse_output(options.lse, kWhere, "lse", q.batch, q.heads, q.seq);
  if (options.rerope != nullptr) {
    const RopeTable& table = options.rerope->table();
    HEADROOM_CHECK(options.mask.kind != MaskKind::kNone, kWhere,
                   "rerope needs a causal or sliding-window mask, but mask.kind is none: ReRoPE's "
                   "relative positions are defined for keys at or before the query");
    HEADROOM_CHECK(q.dim == table.head_dim(), kWhere, "q.dim (", q.dim,
                   ") differs from the ReRoPE table's head_dim (", table.head_dim(), ")");
    for (Index b = 0; b < q.batch; ++b) {
      HEADROOM_CHECK(kv.kv_len(b) <= table.max_positions(), kWhere, "sequence ", b, " has kv_len ",
                     kv.kv_len(b), ", beyond the ReRoPE table's max_positions (",
                     table.max_positions(), ")");
    }
  }
  for (Index b = 0; b < q.batch && q.seq > 0; ++b) {
    check_mask_reach(kWhere, b, options.mask, kv.kv_len(b), q.seq, kv.first_readable(b),
                     "the cache only holds");
  }

  TileShape shape{};
  shape.batch = q.batch;
  shape.q_len = q.seq;
  shape.kv_len = kv.max_kv_len();
  shape.num_heads = q.heads;
  shape.num_kv_heads = kv.num_kv_heads();
  shape.group_size = q.heads / shape.num_kv_heads;
  shape.head_dim_k = q.dim;
  shape.head_dim_v = kv.head_dim_v();
  shape.rerope = options.rerope != nullptr;
  shape.head_dim_v_padded = (shape.head_dim_v + kPacketSize - 1) / kPacketSize * kPacketSize;
  shape.positions_per_item =
      std::min<Index>(std::max<Index>(1, kTargetRows / shape.group_size), std::max<Index>(1, q.seq));
  shape.rows_per_item = shape.positions_per_item * shape.group_size;
  shape.rows_padded = padded_rows(shape.rows_per_item);
  shape.tiles_per_sequence = (q.seq + shape.positions_per_item - 1) / shape.positions_per_item;
  const Index groups =
      std::max<Index>(1, shape.batch * shape.num_kv_heads * shape.tiles_per_sequence);
  const Index max_splits =
      std::max<Index>(1, shape.kv_len / kKeyTile + (shape.kv_len % kKeyTile != 0 ? 1 : 0));
  if (options.kv_splits > 0) {
    shape.num_splits = std::min(options.kv_splits, max_splits);  // more would all be empty
  } else {
    shape.num_splits = default_num_splits(groups, shape.kv_len);
  }
  shape.streamed = shape.rows_per_item <= kTileRows && shape.head_dim_k % kPacketSize == 0 &&
                   shape.head_dim_v % kPacketSize == 0 && kv.k_dim_stride() == 1 &&
                   kv.v_dim_stride() == 1;
  // The AMX products need bf16 or f32 rows read in place and dims of whole tiles (32 bf16 of
  // depth, two 16-column accumulators of dv).
  constexpr bool kBf16Operands = std::is_same_v<QT, Eigen::bfloat16> &&
                                 std::is_same_v<typename Source::Element, Eigen::bfloat16>;
  constexpr bool kF32Operands =
      std::is_same_v<QT, float> && std::is_same_v<typename Source::Element, float>;
  const bool amx_products = kBf16Operands ? use_amx_tiles()
                            : kF32Operands ? use_amx_split_products(shape.rows_per_item)
                                           : false;
  shape.amx_tiles = amx_products && !shape.streamed && !shape.rerope &&
                    shape.head_dim_k % kAmxDepth == 0 && shape.head_dim_v % (2 * kAmxRows) == 0 &&
                    kv.k_dim_stride() == 1 && kv.v_dim_stride() == 1;
  shape.amx_parts = !shape.amx_tiles ? 0 : kF32Operands ? kSplitParts : 1;
  // The pair products need bf16 rows read in place and dims of whole pair vectors.
  shape.bf16_pairs = !shape.amx_tiles && use_bf16_pair_products() &&
                     std::is_same_v<QT, Eigen::bfloat16> &&
                     std::is_same_v<typename Source::Element, Eigen::bfloat16> && !shape.streamed &&
                     !shape.rerope && shape.head_dim_k % (2 * kPairLanes) == 0 &&
                     shape.head_dim_v % (2 * kPairLanes) == 0 && kv.k_dim_stride() == 1 &&
                     kv.v_dim_stride() == 1;
  return shape;
}

/// Detects a KV source (see kv_source.hpp) so the generic attend overload only takes those.
template <class T, class = void>
struct IsKvSource : std::false_type {};
template <class T>
struct IsKvSource<T, std::void_t<typename T::Element,
                                 decltype(std::declval<const T&>().k_row(0, 0, 0))>>
    : std::true_type {};

/// Runs the kernel with the head dims fixed at compile time where a fast path exists.
template <class QT, class Source>
void dispatch_head_dims(const TensorView<const QT>& q, const Source& kv,
                        const TensorView<float>& out, const AttentionOptions& options,
                        const TileShape& shape) {
  const float scale = options.scale.value_or(
      static_cast<float>(1.0 / std::sqrt(static_cast<double>(shape.head_dim_k))));
  const auto run = [&](auto dk_tag, auto dv_tag) {
    attend_tiled<decltype(dk_tag)::value, decltype(dv_tag)::value>(q, kv, out, options, scale,
                                                                   shape);
  };
  using std::integral_constant;
  const Index dk = shape.head_dim_k, dv = shape.head_dim_v;
  if (dk == 64 && dv == 64) {
    run(integral_constant<int, 64>{}, integral_constant<int, 64>{});
  } else if (dk == 128 && dv == 128) {
    run(integral_constant<int, 128>{}, integral_constant<int, 128>{});
  } else if (dk == 192 && dv == 128) {  // MLA expanded: qk_nope + qk_rope, v_head_dim
    run(integral_constant<int, 192>{}, integral_constant<int, 128>{});
  } else if (dk == 576 && dv == 512) {  // MLA absorbed: kv_lora_rank + qk_rope, kv_lora_rank
    run(integral_constant<int, 576>{}, integral_constant<int, 512>{});
  } else {
    run(integral_constant<int, kDynamicDim>{}, integral_constant<int, kDynamicDim>{});
  }
}

/// Runs attend over dense keys and values of element type T.
template <class QT, class T>
void attend_dense(const TensorView<const QT>& q, const TensorView<const T>& k,
                  const TensorView<const T>& v, const TensorView<float>& out,
                  const AttentionOptions& options) {
  const DenseKv<T> kv{k, v, options.kv_lens};
  const TileShape shape = validate_attend(q, kv, out, options, true);
  if (shape.batch == 0 || shape.q_len == 0) return;
  dispatch_head_dims(q, kv, out, options, shape);
}

}  // namespace detail

/// Computes out = softmax(scale * q.k^T [masked]) . v for every sequence and query head, with the
/// keys and values of kv head h / (num_heads / num_kv_heads) read from a KV source (a cache view
/// or DenseKv): MHA, GQA and MQA in one kernel. Never forms the q_len x kv_len score matrix: keys
/// are consumed in tiles with an online softmax (FlashAttention, Dao et al. 2022, Algorithm 1),
/// converted to f32 once per tile and shared by the whole group, accumulating in f32. With few
/// work items (decode), the keys are also split into ranges run in parallel and merged by their
/// LSE (flash-decoding).
///
///   q:   [batch, q_len, num_heads, head_dim_k]   queries at the last q_len positions of each
///                                                sequence's kv_len keys
///   kv:  batch sequences of kv_len(b) keys, num_kv_heads heads; num_heads % num_kv_heads == 0
///   out: [batch, q_len, num_heads, head_dim_v]   must not overlap the inputs
///
/// q_len == 0 does nothing; a row that sees no key gets zeros and LSE = -inf. Results are
/// bit-identical for every thread count.
///
/// On processors with AMX (Intel Xeons since Sapphire Rapids), key-major tiles of work items of
/// at least 128 rows (prefill; decode of wide groups, as absorbed MLA) multiply f32 keys and
/// values on AMX tiles: each value is split into three bf16 parts and six part products stand
/// for one f32 product, within a few f32 roundings (detail/amx_split_kernel.hpp). GQA prefill at
/// S = 2048 ran 1.3 times as fast as on the FMA micro-kernels there.
/// \tparam Source a KV source: DenseKv, or a view of a KvCache or PagedKvCache.
template <class Source, std::enable_if_t<detail::IsKvSource<Source>::value, int> = 0>
void attend(TensorView<const float> q, const Source& kv, TensorView<float> out,
            const AttentionOptions& options = {}) {
  const detail::TileShape shape = detail::validate_attend(q, kv, out, options, false);
  if (shape.batch == 0 || shape.q_len == 0) return;
  detail::dispatch_head_dims(q, kv, out, options, shape);
}

/// The overload above for bf16 queries, as a bf16 model's projections produce them. With bf16
/// keys and values too (a bf16 cache or DenseKv<Eigen::bfloat16>), prefill tiles multiply AMX
/// tiles where the build, processor and OS allow them (Intel Xeons since Sapphire Rapids: about
/// three times the f32 rate), else bf16 pairs with AVX512_BF16 on AMD processors (about twice),
/// and convert to f32 otherwise. The AMX and pair products round the probabilities to bf16 for
/// P.V; every path accumulates in f32.
template <class Source, std::enable_if_t<detail::IsKvSource<Source>::value, int> = 0>
void attend(TensorView<const Eigen::bfloat16> q, const Source& kv, TensorView<float> out,
            const AttentionOptions& options = {}) {
  const detail::TileShape shape = detail::validate_attend(q, kv, out, options, false);
  if (shape.batch == 0 || shape.q_len == 0) return;
  detail::dispatch_head_dims(q, kv, out, options, shape);
}

/// Computes attention over dense f32 keys and values in the caller's buffers (see the overload
/// above); options.kv_lens gives each sequence's valid key count.
///
///   k:   [batch, kv_len, num_kv_heads, head_dim_k]   any strides (see TensorView)
///   v:   [batch, kv_len, num_kv_heads, head_dim_v]
inline void attend(TensorView<const float> q, TensorView<const float> k, TensorView<const float> v,
                   TensorView<float> out, const AttentionOptions& options = {}) {
  detail::attend_dense(q, k, v, out, options);
}

/// Computes attention over dense bf16 queries, keys and values (see the bf16 overload above).
inline void attend(TensorView<const Eigen::bfloat16> q, TensorView<const Eigen::bfloat16> k,
                   TensorView<const Eigen::bfloat16> v, TensorView<float> out,
                   const AttentionOptions& options = {}) {
  detail::attend_dense(q, k, v, out, options);
}

}  // namespace headroom
