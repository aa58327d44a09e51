// SPDX-License-Identifier: MIT
// headroom::attend: one FlashAttention-style tiled kernel for MHA, GQA and MQA with any Dk, Dv.
//
// Read top to bottom: the key interval a mask allows each query, the per-thread scratch, the
// online-softmax update of one block of rows, the walk of one work item over its key tiles, the
// parallel driver, and the public entry point that validates and dispatches head dims.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "headroom/attention/options.hpp"
#include "headroom/core/error.hpp"
#include "headroom/core/parallel.hpp"
#include "headroom/core/tensor_view.hpp"
#include "headroom/detail/micro_kernel.hpp"

namespace headroom {
namespace detail {

/// Keys per tile: one K tile, packed transposed, is 64 x Dk floats (32 KiB at Dk = 128), so it and
/// the V tile stay in L2 while every row of the work item streams past them.
inline constexpr Index kKeyTile = 64;
/// Query rows per work item (query positions x heads of the group): enough rows to amortise
/// packing each K/V tile once per group, few enough that the rows' Q and O stay in L2.
inline constexpr Index kTargetRows = 256;
/// Marks a head dim that is only known at run time.
inline constexpr int kDynamicDim = -1;

inline constexpr float kNegInf = -std::numeric_limits<float>::infinity();

/// The keys a query may see, as one interval [first, end) of key indices. Every mask is such an
/// interval whose ends never decrease with the query's position, which is all the kernel needs:
/// a block of rows sees the union of its first and last rows' intervals, and a tile is unmasked for
/// the block when it lies inside the intersection.
struct KeyInterval {
  MaskKind kind;
  Index window;
  Index kv_len;  // valid keys of this sequence

  Index first(Index pos) const {
    return kind == MaskKind::kSlidingWindow ? std::max<Index>(0, pos - window + 1) : 0;
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
  Index tiles_per_sequence;  // work items along q_len
};

/// Per-thread scratch, sized once per call; every pointer is aligned for packet loads.
struct TileScratch {
  using Buffer = std::vector<float, Eigen::aligned_allocator<float>>;
  Buffer q;          // [rows_per_item, head_dim_k], pre-multiplied by the softmax scale
  Buffer k_t;        // [head_dim_k, kKeyTile], the K tile transposed, zero past the last key
  Buffer v;          // [kKeyTile, head_dim_v_padded], zero past the last key and past head_dim_v
  Buffer o;          // [rows_per_item, head_dim_v_padded], unnormalised output accumulator
  Buffer scores;     // [kTileRows, kKeyTile], logits and then probabilities of one row block
  Buffer row_max;    // [rows_per_item], running max m of each row's logits
  Buffer row_sum;    // [rows_per_item], running sum l of exp(logit - m)
  Buffer rescale;    // [kTileRows], exp(m_old - m_new) of the current row block

  explicit TileScratch(const TileShape& shape)
      : q(shape.rows_per_item * shape.head_dim_k),
        k_t(shape.head_dim_k * kKeyTile),
        v(kKeyTile * shape.head_dim_v_padded),
        o(shape.rows_per_item * shape.head_dim_v_padded),
        scores(kTileRows * kKeyTile),
        row_max(shape.rows_per_item),
        row_sum(shape.rows_per_item),
        rescale(kTileRows) {}
};

/// Folds one block of logits into the running softmax state of its rows (DESIGN.md, "Online
/// softmax"): m' = max(m, max s), p = exp(s - m'), l = l * exp(m - m') + sum p. Leaves p in
/// `scores` and exp(m - m') in `rescale` for the caller's O = diag(rescale) O + p V.
inline void online_softmax_update(Index rows, float* scores, float* row_max, float* row_sum,
                                  float* rescale) {
  using Row = Eigen::Map<Eigen::Array<float, 1, kKeyTile>, Eigen::Aligned64>;
  for (Index r = 0; r < rows; ++r) {
    Row s(scores + r * kKeyTile);
    const float new_max = std::max(row_max[r], s.maxCoeff());
    // A row that has seen no visible key keeps m = -inf; subtracting 0 instead keeps
    // exp(-inf - -inf) from turning its zero state into NaN.
    const float reference = new_max == kNegInf ? 0.0f : new_max;
    rescale[r] = std::exp(row_max[r] - reference);
    s = (s - reference).exp();
    row_sum[r] = row_sum[r] * rescale[r] + s.sum();
    row_max[r] = new_max;
  }
}

/// Copies the K tile [k0, k0 + count) of kv head `kv_head` transposed into k_t and the V tile into
/// v, converting strides; the rest of the tile is zero so padded lanes contribute nothing.
inline void pack_kv_tile(const TensorView<const float>& k, const TensorView<const float>& v,
                         Index b, Index kv_head, Index k0, Index count, const TileShape& shape,
                         TileScratch& scratch) {
  const Index dk = shape.head_dim_k, dv = shape.head_dim_v, dv_pad = shape.head_dim_v_padded;
  if (count < kKeyTile) {
    std::fill(scratch.k_t.begin(), scratch.k_t.end(), 0.0f);
    std::fill(scratch.v.begin() + count * dv_pad, scratch.v.end(), 0.0f);
  }
  for (Index c = 0; c < count; ++c) {
    const float* k_row = k.row(b, k0 + c, kv_head);
    for (Index d = 0; d < dk; ++d) scratch.k_t[d * kKeyTile + c] = k_row[d * k.dim_stride];
    const float* v_row = v.row(b, k0 + c, kv_head);
    float* packed = scratch.v.data() + c * dv_pad;
    for (Index d = 0; d < dv; ++d) packed[d] = v_row[d * v.dim_stride];
    std::fill(packed + dv, packed + dv_pad, 0.0f);
  }
}

/// Computes one work item: the rows of query positions [i0, i1) of sequence b for every query
/// head of kv head `kv_head`'s group, against all keys their masks allow, tile by tile. Row r is
/// position i0 + r / group_size, head kv_head * group_size + r % group_size (positions outermost,
/// so a block of rows spans few positions and shares most of its mask).
/// \tparam kDk, kDv head dims fixed at compile time, or kDynamicDim.
template <int kDk, int kDv>
void attend_work_item(const TensorView<const float>& q, const TensorView<const float>& k,
                      const TensorView<const float>& v, const TensorView<float>& out,
                      const AttentionOptions& options, float scale, const TileShape& shape,
                      Index b, Index kv_head, Index i0, Index i1, TileScratch& scratch) {
  const Index dk = kDk != kDynamicDim ? kDk : shape.head_dim_k;
  const Index dv = kDv != kDynamicDim ? kDv : shape.head_dim_v;
  const Index dv_pad = shape.head_dim_v_padded;
  const Index group = shape.group_size;
  const Index rows = (i1 - i0) * group;
  const Index kv_len = options.kv_lens.empty() ? shape.kv_len : options.kv_lens[b];
  const Index pos_offset = kv_len - shape.q_len;  // queries are the last q_len positions
  const KeyInterval keys{options.mask.kind, options.mask.window, kv_len};
  const auto position = [&](Index row) { return i0 + row / group + pos_offset; };

  // Q rows, pre-scaled, [rows, dk].
  for (Index r = 0; r < rows; ++r) {
    const float* q_row = q.row(b, i0 + r / group, kv_head * group + r % group);
    float* packed = scratch.q.data() + r * dk;
    for (Index d = 0; d < dk; ++d) packed[d] = q_row[d * q.dim_stride] * scale;
  }
  std::fill(scratch.o.begin(), scratch.o.begin() + rows * dv_pad, 0.0f);
  std::fill(scratch.row_max.begin(), scratch.row_max.begin() + rows, kNegInf);
  std::fill(scratch.row_sum.begin(), scratch.row_sum.begin() + rows, 0.0f);

  const Index item_first = keys.first(position(0));
  const Index item_end = keys.end(position(rows - 1));
  for (Index k0 = item_first; k0 < item_end; k0 += kKeyTile) {
    const Index k1 = std::min(k0 + kKeyTile, item_end);
    pack_kv_tile(k, v, b, kv_head, k0, k1 - k0, shape, scratch);

    for (Index r0 = 0; r0 < rows; r0 += kTileRows) {
      const Index block_rows = std::min<Index>(kTileRows, rows - r0);
      const Index pos_lo = position(r0), pos_hi = position(r0 + block_rows - 1);
      const Index block_first = std::max(k0, keys.first(pos_lo));
      const Index block_end = std::min(k1, keys.end(pos_hi));
      if (block_first >= block_end) continue;  // the whole block is masked in this tile

      float* scores = scratch.scores.data();
      gemm_rows<Accumulate::kOverwrite>(block_rows, scratch.q.data() + r0 * dk, dk,
                                        scratch.k_t.data(), kKeyTile, dk, scores, kKeyTile,
                                        kKeyTile, nullptr);
      if (options.softcap > 0.0f) {
        // Gemma 2: logit = cap * tanh(logit / cap), before the mask so masked keys stay -inf.
        auto s = Eigen::Map<Eigen::ArrayXf>(scores, block_rows * kKeyTile);
        s = options.softcap * (s * (1.0f / options.softcap)).tanh();
      }
      const bool block_unmasked = k0 >= keys.first(pos_hi) && k1 <= keys.end(pos_lo) &&
                                  k1 - k0 == kKeyTile;
      if (!block_unmasked) {
        for (Index r = 0; r < block_rows; ++r) {
          const Index pos = position(r0 + r);
          const Index lo = std::clamp(keys.first(pos) - k0, Index{0}, kKeyTile);
          const Index hi = std::clamp(keys.end(pos) - k0, lo, std::min(k1 - k0, kKeyTile));
          float* s = scores + r * kKeyTile;
          std::fill(s, s + lo, kNegInf);
          std::fill(s + hi, s + kKeyTile, kNegInf);
        }
      }
      online_softmax_update(block_rows, scores, scratch.row_max.data() + r0,
                            scratch.row_sum.data() + r0, scratch.rescale.data());
      // Probabilities past block_end are zero: the P.V depth stops there.
      gemm_rows<Accumulate::kRescaleAndAdd>(block_rows, scores, kKeyTile, scratch.v.data(),
                                            dv_pad, block_end - k0, scratch.o.data() + r0 * dv_pad,
                                            dv_pad, dv_pad, scratch.rescale.data());
    }
  }

  // O / l and LSE = m + log l; a row without visible keys (l = 0) gives zeros and -inf.
  for (Index r = 0; r < rows; ++r) {
    const Index i = i0 + r / group, head = kv_head * group + r % group;
    const float l = scratch.row_sum[r];
    const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;
    const float* o_row = scratch.o.data() + r * dv_pad;
    float* out_row = out.row(b, i, head);
    for (Index d = 0; d < dv; ++d) out_row[d * out.dim_stride] = o_row[d] * inv_l;
    if (!options.lse.empty()) {
      options.lse(b, head, i) = l > 0.0f ? scratch.row_max[r] + std::log(l) : kNegInf;
    }
  }
}

/// Splits the call into work items (sequence, kv head, block of query positions) and runs them in
/// parallel, the items with the most keys first so the causal triangle balances across threads.
template <int kDk, int kDv>
void attend_tiled(const TensorView<const float>& q, const TensorView<const float>& k,
                  const TensorView<const float>& v, const TensorView<float>& out,
                  const AttentionOptions& options, float scale, const TileShape& shape) {
  const Index items_per_tile_index = shape.batch * shape.num_kv_heads;
  const Index num_items = items_per_tile_index * shape.tiles_per_sequence;
  const int num_threads = resolve_num_threads(options.num_threads, num_items);
  std::vector<TileScratch> scratch(static_cast<size_t>(num_threads), TileScratch(shape));
  parallel_for(num_items, num_threads, [&](int thread, Index item) {
    const Index tile = shape.tiles_per_sequence - 1 - item / items_per_tile_index;
    const Index b = (item % items_per_tile_index) / shape.num_kv_heads;
    const Index kv_head = item % shape.num_kv_heads;
    const Index i0 = tile * shape.positions_per_item;
    const Index i1 = std::min(i0 + shape.positions_per_item, shape.q_len);
    attend_work_item<kDk, kDv>(q, k, v, out, options, scale, shape, b, kv_head, i0, i1,
                               scratch[static_cast<size_t>(thread)]);
  });
}

/// Checks every argument of attend and returns the call's shape; throws headroom::Error naming the
/// first bad one.
inline TileShape validate_attend(const TensorView<const float>& q,
                                 const TensorView<const float>& k,
                                 const TensorView<const float>& v, const TensorView<float>& out,
                                 const AttentionOptions& options) {
  constexpr const char* kWhere = "attend";
  check_view(q, kWhere, "q", false);
  check_view(k, kWhere, "k", false);
  check_view(v, kWhere, "v", false);
  check_view(out, kWhere, "out", true);
  HEADROOM_CHECK(k.batch == q.batch, kWhere, "k.batch (", k.batch, ") differs from q.batch (",
                 q.batch, ")");
  HEADROOM_CHECK(v.batch == q.batch, kWhere, "v.batch (", v.batch, ") differs from q.batch (",
                 q.batch, ")");
  HEADROOM_CHECK(out.batch == q.batch, kWhere, "out.batch (", out.batch,
                 ") differs from q.batch (", q.batch, ")");
  HEADROOM_CHECK(v.seq == k.seq, kWhere, "v.seq (", v.seq, ") differs from k.seq (", k.seq, ")");
  HEADROOM_CHECK(out.seq == q.seq, kWhere, "out.seq (", out.seq, ") differs from q.seq (", q.seq,
                 ")");
  HEADROOM_CHECK(v.heads == k.heads, kWhere, "v.heads (", v.heads, ") differs from k.heads (",
                 k.heads, ")");
  HEADROOM_CHECK(q.heads % k.heads == 0, kWhere, "q.heads (", q.heads,
                 ") is not a multiple of k.heads (", k.heads, ")");
  HEADROOM_CHECK(out.heads == q.heads, kWhere, "out.heads (", out.heads,
                 ") differs from q.heads (", q.heads, ")");
  HEADROOM_CHECK(k.dim == q.dim, kWhere, "k.dim (", k.dim, ") differs from q.dim (", q.dim,
                 "): keys and queries share head_dim_k");
  HEADROOM_CHECK(out.dim == v.dim, kWhere, "out.dim (", out.dim, ") differs from v.dim (", v.dim,
                 "): the output has head_dim_v");
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
  if (!options.kv_lens.empty()) {
    HEADROOM_CHECK(static_cast<Index>(options.kv_lens.size()) == q.batch, kWhere,
                   "kv_lens.size() (", options.kv_lens.size(), ") differs from q.batch (", q.batch,
                   ")");
    for (size_t b = 0; b < options.kv_lens.size(); ++b) {
      HEADROOM_CHECK(options.kv_lens[b] >= 0 && options.kv_lens[b] <= k.seq, kWhere, "kv_lens[",
                     b, "] (", options.kv_lens[b], ") is outside [0, k.seq = ", k.seq, "]");
    }
  }
  if (!options.lse.empty()) {
    const LseView& lse = options.lse;
    HEADROOM_CHECK(lse.batch == q.batch && lse.heads == q.heads && lse.seq == q.seq, kWhere,
                   "lse is [", lse.batch, ", ", lse.heads, ", ", lse.seq, "] but must be [batch ",
                   q.batch, ", heads ", q.heads, ", q_len ", q.seq, "]");
    HEADROOM_CHECK((lse.batch <= 1 || lse.batch_stride != 0) &&
                       (lse.heads <= 1 || lse.head_stride != 0) &&
                       (lse.seq <= 1 || lse.seq_stride != 0),
                   kWhere, "lse has a zero stride on an axis longer than one; outputs must not alias");
  }

  TileShape shape{};
  shape.batch = q.batch;
  shape.q_len = q.seq;
  shape.kv_len = k.seq;
  shape.num_heads = q.heads;
  shape.num_kv_heads = k.heads;
  shape.group_size = q.heads / k.heads;
  shape.head_dim_k = q.dim;
  shape.head_dim_v = v.dim;
  shape.head_dim_v_padded = (v.dim + kPacketSize - 1) / kPacketSize * kPacketSize;
  shape.positions_per_item =
      std::min<Index>(std::max<Index>(1, kTargetRows / shape.group_size), std::max<Index>(1, q.seq));
  shape.rows_per_item = shape.positions_per_item * shape.group_size;
  shape.tiles_per_sequence = (q.seq + shape.positions_per_item - 1) / shape.positions_per_item;
  return shape;
}

}  // namespace detail

/// Computes out = softmax(scale * q.k^T [masked]) . v for every sequence and query head, with the
/// keys and values of kv head h / (num_heads / num_kv_heads): MHA, GQA and MQA in one kernel.
/// Never forms the q_len x kv_len score matrix: keys are consumed in tiles with an online softmax
/// (FlashAttention, Dao et al. 2022, Algorithm 1), accumulating in f32.
///
///   q:   [batch, q_len,  num_heads,    head_dim_k]
///   k:   [batch, kv_len, num_kv_heads, head_dim_k]   num_heads % num_kv_heads == 0
///   v:   [batch, kv_len, num_kv_heads, head_dim_v]
///   out: [batch, q_len,  num_heads,    head_dim_v]   must not overlap the inputs
///
/// Any strides work (see TensorView). q_len == 0 does nothing; a row that sees no key gets zeros
/// and LSE = -inf. Results are bit-identical for every thread count.
inline void attend(TensorView<const float> q, TensorView<const float> k, TensorView<const float> v,
                   TensorView<float> out, const AttentionOptions& options = {}) {
  const detail::TileShape shape = detail::validate_attend(q, k, v, out, options);
  if (shape.batch == 0 || shape.q_len == 0) return;
  const float scale = options.scale.value_or(
      static_cast<float>(1.0 / std::sqrt(static_cast<double>(shape.head_dim_k))));
  const auto run = [&](auto dk_tag, auto dv_tag) {
    detail::attend_tiled<decltype(dk_tag)::value, decltype(dv_tag)::value>(q, k, v, out, options,
                                                                           scale, shape);
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
    run(integral_constant<int, detail::kDynamicDim>{},
        integral_constant<int, detail::kDynamicDim>{});
  }
}

}  // namespace headroom
