// SPDX-License-Identifier: MIT
// The problem the prefill benchmarks time: one sequence of random q, k and v, its output, and the
// tiled kernel's call on it.
#pragma once

#include <random>
#include <vector>

#include "headroom/attention/attend.hpp"
#include "headroom/attention/cost.hpp"

namespace headroom::bench {

/// One sequence (B = 1) of seq_len tokens, elements uniform in [-1, 1].
struct PrefillProblem {
  Index num_heads, num_kv_heads, head_dim, seq_len;
  std::vector<float> q;    // [1, seq_len, num_heads, head_dim]
  std::vector<float> k;    // [1, seq_len, num_kv_heads, head_dim]
  std::vector<float> v;    // [1, seq_len, num_kv_heads, head_dim]
  std::vector<float> out;  // [1, seq_len, num_heads, head_dim]

  PrefillProblem(Index heads, Index kv_heads, Index dim, Index len)
      : num_heads(heads), num_kv_heads(kv_heads), head_dim(dim), seq_len(len),
        q(len * heads * dim), k(len * kv_heads * dim), v(len * kv_heads * dim),
        out(len * heads * dim) {
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    for (auto* buffer : {&q, &k, &v}) {
      for (float& x : *buffer) x = dist(rng);
    }
  }
  TensorView<const float> q_view() const {
    return TensorView<const float>::bshd(q.data(), 1, seq_len, num_heads, head_dim);
  }
  TensorView<const float> kv_view(const std::vector<float>& x) const {
    return TensorView<const float>::bshd(x.data(), 1, seq_len, num_kv_heads, head_dim);
  }
  TensorView<float> out_view() {
    return TensorView<float>::bshd(out.data(), 1, seq_len, num_heads, head_dim);
  }

  /// Runs the tiled kernel on the problem (q and k as they are: pre-rotated or raw for ReRoPE
  /// alike, since the data is random).
  void attend(const AttentionOptions& options) {
    headroom::attend(q_view(), kv_view(k), kv_view(v), out_view(), options);
  }
  /// Returns the FLOPs of plain attention on the problem under `mask` (cost.hpp): the useful work,
  /// whatever extra a position policy spends on it.
  double flops(const Mask& mask) const {
    return attention_flops(1, num_heads, seq_len, seq_len, head_dim, head_dim, mask);
  }
};

}  // namespace headroom::bench
