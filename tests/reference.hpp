// SPDX-License-Identifier: MIT
// The naive double-precision attention that every kernel is tested against: materialised scores,
// plain softmax, no tiling. Test-only; written for obviousness, not speed.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "headroom/attention/options.hpp"
#include "headroom/core/tensor_view.hpp"

namespace headroom::reference {

struct Result {
  std::vector<double> out;  // [batch, q_len, num_heads, head_dim_v]
  std::vector<double> lse;  // [batch, num_heads, q_len]
};

/// Whether the query at index i of a sequence with q_len queries and kv_len valid keys may see key
/// j, spelled out from the definitions in options.hpp rather than from the kernel's intervals.
inline bool visible(const Mask& mask, Index i, Index q_len, Index kv_len, Index j) {
  if (j >= kv_len) return false;
  if (mask.kind == MaskKind::kNone) return true;
  const Index pos = kv_len - q_len + i;
  if (j > pos) return false;
  return mask.kind == MaskKind::kCausal || pos - j < mask.window;
}

/// Computes attention for every (batch, query, head) in double from the logical views.
inline Result attend(const TensorView<const float>& q, const TensorView<const float>& k,
                     const TensorView<const float>& v, const AttentionOptions& options) {
  const Index batch = q.batch, q_len = q.seq, num_heads = q.heads, dk = q.dim, dv = v.dim;
  const Index group = num_heads / k.heads;
  const double scale = options.scale ? *options.scale : 1.0 / std::sqrt(static_cast<double>(dk));
  Result result{std::vector<double>(batch * q_len * num_heads * dv, 0.0),
                std::vector<double>(batch * num_heads * q_len,
                                    -std::numeric_limits<double>::infinity())};
  for (Index b = 0; b < batch; ++b) {
    const Index kv_len = options.kv_lens.empty() ? k.seq : options.kv_lens[b];
    for (Index i = 0; i < q_len; ++i) {
      for (Index h = 0; h < num_heads; ++h) {
        const Index kv_head = h / group;
        std::vector<double> scores(k.seq, -std::numeric_limits<double>::infinity());
        double max_score = -std::numeric_limits<double>::infinity();
        for (Index j = 0; j < k.seq; ++j) {
          if (!visible(options.mask, i, q_len, kv_len, j)) continue;
          double dot = 0.0;
          for (Index d = 0; d < dk; ++d) dot += double{q(b, i, h, d)} * double{k(b, j, kv_head, d)};
          double logit = scale * dot;
          if (options.softcap > 0.0f) logit = options.softcap * std::tanh(logit / options.softcap);
          scores[j] = logit;
          max_score = std::max(max_score, logit);
        }
        if (max_score == -std::numeric_limits<double>::infinity()) continue;
        double sum = 0.0;
        for (double& s : scores) {
          s = std::exp(s - max_score);
          sum += s;
        }
        double* out_row = &result.out[((b * q_len + i) * num_heads + h) * dv];
        for (Index j = 0; j < k.seq; ++j) {
          if (scores[j] == 0.0) continue;
          for (Index d = 0; d < dv; ++d) out_row[d] += scores[j] / sum * double{v(b, j, kv_head, d)};
        }
        result.lse[(b * num_heads + h) * q_len + i] = max_score + std::log(sum);
      }
    }
  }
  return result;
}

/// Fills a buffer with uniform values in [-amplitude, amplitude] from a seeded generator.
inline std::vector<float> random_vector(size_t size, std::mt19937& rng, float amplitude = 1.0f) {
  std::uniform_real_distribution<float> dist(-amplitude, amplitude);
  std::vector<float> values(size);
  for (float& value : values) value = dist(rng);
  return values;
}

}  // namespace headroom::reference
