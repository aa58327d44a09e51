// SPDX-License-Identifier: MIT
// rerope_attention: the attention step of a decoder layer with ReRoPE, from projected q, k and v, so
// that a RoPE model switches to ReRoPE by configuration alone.
#pragma once

#include <algorithm>
#include <vector>

#include "headroom/attention/attend.hpp"
#include "headroom/attention/options.hpp"
#include "headroom/cache/kv_cache.hpp"
#include "headroom/cache/paged_kv_cache.hpp"
#include "headroom/core/error.hpp"
#include "headroom/core/tensor_view.hpp"
#include "headroom/position/rerope.hpp"
#include "headroom/position/rope.hpp"

namespace headroom {
namespace detail {

/// The first key a cache still holds for `sequence_id` once it holds `new_length` keys: a ring
/// buffer drops the oldest beyond its capacity.
template <class T>
Index first_readable_after(const KvCache<T>& cache, Index sequence_id, Index new_length) {
  if (!cache.config().ring_buffer) return 0;
  return std::max(cache.first_readable(sequence_id), new_length - cache.capacity());
}
template <class T>
Index first_readable_after(const PagedKvCache<T>&, Index, Index) {
  return 0;
}

}  // namespace detail

/// Runs the attention of one decoder step with ReRoPE: appends the raw (un-rotated) keys and
/// values of the new tokens to `cache`, then attends the raw queries to everything the sequences
/// hold, ReRoPE applied inside the kernel. It replaces a RoPE model's apply_rope(table, q, k,
/// positions), cache.append(ids, k, v) and attend(q, cache.view(ids), out, options).
///
///   q:         [batch, new_tokens, num_heads, head_dim_k]     raw, as projected
///   k, v:      [batch, new_tokens, num_kv_heads, head_dim_k / head_dim_v]
///   positions: [batch, new_tokens]; must be cache.length(sequence_ids[b]) + s: ReRoPE's
///              positions are the tokens' places in their sequence
///   out:       [batch, new_tokens, num_heads, head_dim_v]
/// A mask of kind none is taken as causal (a decoder's); options.rerope is set to &rerope.
/// Everything is checked before the cache changes: a call that throws leaves it as it was.
/// \tparam Cache KvCache<T> or PagedKvCache<T> holding raw keys.
template <class Cache>
void rerope_attention(const ReRope& rerope, TensorView<const float> q, TensorView<const float> k,
                      TensorView<const float> v, PositionView positions, Cache& cache,
                      const std::vector<Index>& sequence_ids, TensorView<float> out,
                      AttentionOptions options = {}) {
  constexpr const char* kWhere = "rerope_attention";
  if (options.mask.kind == MaskKind::kNone) options.mask = Mask::causal();
  options.rerope = &rerope;
  const auto before = cache.view(sequence_ids);
  // Every check attend makes that does not depend on the cache's lengths, against the cache as it
  // is now: shapes, heads, dims, options.
  detail::validate_attend(q, before, out, options, false);
  HEADROOM_CHECK(k.batch == q.batch && k.seq == q.seq, kWhere, "k is [", k.batch, ", ", k.seq,
                 ", ...] but q is [", q.batch, ", ", q.seq, ", ...]: one key per new token");
  HEADROOM_CHECK(positions.batch == q.batch && positions.seq == q.seq, kWhere, "positions is [",
                 positions.batch, ", ", positions.seq, "] but must be [batch ", q.batch,
                 ", new_tokens ", q.seq, "]");
  HEADROOM_CHECK(positions.data != nullptr || q.batch == 0 || q.seq == 0, kWhere,
                 "positions.data is null");
  const RopeTable& table = rerope.table();
  for (Index b = 0; b < q.batch; ++b) {
    const Index length = cache.length(sequence_ids[b]);
    for (Index s = 0; s < q.seq; ++s) {
      HEADROOM_CHECK(positions(b, s) == length + s, kWhere, "positions[", b, ", ", s, "] (",
                     positions(b, s), ") must be ", length + s, ": sequence ", sequence_ids[b],
                     " holds ", length, " tokens, and ReRoPE's positions are the tokens' places");
    }
    const Index new_length = length + q.seq;
    HEADROOM_CHECK(new_length <= table.max_positions(), kWhere, "sequence ", sequence_ids[b],
                   " would hold ", new_length, " tokens, beyond the ReRoPE table's max_positions (",
                   table.max_positions(), ")");
    // As attend checks it, but against the keys the append is about to drop.
    detail::check_mask_reach(kWhere, sequence_ids[b], options.mask, new_length, q.seq,
                             detail::first_readable_after(cache, sequence_ids[b], new_length),
                             "after appending the cache only holds");
  }
  cache.append(sequence_ids, k, v);
  attend(q, cache.view(sequence_ids), out, options);
}

}  // namespace headroom
