// SPDX-License-Identifier: MIT
// The naive Eigen baseline: per head, materialise the scores, softmax them, two GEMMs.
#pragma once

#include <Eigen/Core>
#include <limits>

#include "headroom/attention/options.hpp"
#include "headroom/core/parallel.hpp"
#include "headroom/core/tensor_view.hpp"

namespace headroom::bench {

/// Computes causal or full attention the way a straightforward Eigen program would: S = Q K^T as a
/// q_len x kv_len matrix per head, masked, softmaxed row by row, then O = P V. Heads run in
/// parallel; Eigen's own GEMM threading is left off so thread counts compare like for like.
inline void naive_attention(const TensorView<const float>& q, const TensorView<const float>& k,
                            const TensorView<const float>& v, const TensorView<float>& out,
                            bool causal, int num_threads) {
  using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Strided = Eigen::Map<const RowMajor, 0, Eigen::OuterStride<>>;
  using StridedOut = Eigen::Map<RowMajor, 0, Eigen::OuterStride<>>;
  const Index group = q.heads / k.heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(q.dim));
  detail::parallel_for(q.batch * q.heads, num_threads, [&](int, Index item) {
    const Index b = item / q.heads, h = item % q.heads;
    Strided q_h(q.row(b, 0, h), q.seq, q.dim, Eigen::OuterStride<>(q.seq_stride));
    Strided k_h(k.row(b, 0, h / group), k.seq, k.dim, Eigen::OuterStride<>(k.seq_stride));
    Strided v_h(v.row(b, 0, h / group), v.seq, v.dim, Eigen::OuterStride<>(v.seq_stride));
    StridedOut o_h(out.row(b, 0, h), out.seq, out.dim, Eigen::OuterStride<>(out.seq_stride));
    RowMajor scores = (q_h * k_h.transpose()) * scale;
    const Index offset = k.seq - q.seq;
    for (Index i = 0; i < q.seq; ++i) {
      auto row = scores.row(i).array();
      if (causal) {
        const Index visible = std::clamp<Index>(i + offset + 1, 0, k.seq);
        row.tail(k.seq - visible).setConstant(-std::numeric_limits<float>::infinity());
      }
      row = (row - row.maxCoeff()).exp();
      row /= row.sum();
    }
    o_h.noalias() = scores * v_h;
  });
}

}  // namespace headroom::bench
