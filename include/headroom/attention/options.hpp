// SPDX-License-Identifier: MIT
// What a call to headroom::attend may ask for beyond its tensors: mask, scale, soft-cap, lengths, LSE.
#pragma once

#include <optional>
#include <vector>

#include "headroom/core/tensor_view.hpp"

namespace headroom {

class ReRope;

/// Which keys a query may see. Under every mask but kNone, the q_len queries of a sequence are its
/// last q_len positions: query i sits at position kv_len - q_len + i, where kv_len is that sequence's
/// valid key count. So a prefill (q_len == kv_len) and a decode step (q_len == 1) use the same rule.
enum class MaskKind {
  kNone,           ///< every valid key
  kCausal,         ///< keys at positions <= the query's
  kSlidingWindow,  ///< causal, and at most `window` keys: positions in (pos - window, pos]
};

/// A mask kind and, for kSlidingWindow, its window (the query itself counts as one of the `window`
/// keys, as in Mistral's sliding_window).
struct Mask {
  MaskKind kind = MaskKind::kNone;
  Index window = 0;

  static Mask none() { return {MaskKind::kNone, 0}; }
  static Mask causal() { return {MaskKind::kCausal, 0}; }
  static Mask sliding_window(Index window) { return {MaskKind::kSlidingWindow, window}; }
};

/// Everything but the tensors: all fields have the defaults of plain scaled-dot-product attention.
struct AttentionOptions {
  Mask mask = Mask::none();
  /// Softmax scale applied to q.k; unset means 1 / sqrt(head_dim_k).
  std::optional<float> scale;
  /// Logit soft-capping, cap * tanh(logit / cap) (Gemma 2's attn_logit_softcapping); 0 disables it.
  float softcap = 0.0f;
  /// Valid key count per sequence for variable-length batches over dense k and v, [batch]; empty
  /// means every sequence has k.seq keys. Keys at or beyond a sequence's length are never read.
  /// (A cache knows its sequences' lengths; this must stay empty with one.)
  std::vector<Index> kv_lens;
  /// Optional output of each row's log-sum-exp of scaled logits, [batch, num_heads, q_len], so that
  /// partial results over disjoint keys can be merged (see merge_attention). -inf for empty rows.
  LseView lse;
  /// Threads to use; 0 means default_num_threads(). Results do not depend on it.
  int num_threads = 0;
  /// Key ranges each (sequence, kv head, query block) is split into and merged by LSE
  /// (flash-decoding); 0 chooses from the shapes alone: only when there are too few work items
  /// to keep the threads busy, as in decode. Capped at one split per 64-key tile.
  Index kv_splits = 0;
  /// ReRoPE / Leaky ReRoPE applied inside the kernel (position/rerope.hpp), or null. With it, q and
  /// the keys are raw (never rotated by apply_rope): the kernel rotates them per tile, key j at
  /// position j and query i at kv_len - q_len + i. Needs a causal or sliding-window mask, head_dim_k
  /// equal to the table's head_dim and every kv_len within its max_positions. Not owned; must
  /// outlive the call.
  const ReRope* rerope = nullptr;
};

}  // namespace headroom
