// SPDX-License-Identifier: MIT
// The online-softmax update of a tile of logits (DESIGN.md, "Online softmax"), for row-major
// (decode) and key-major (prefill) scores.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <limits>

#include "headroom/core/tensor_view.hpp"
#include "headroom/detail/micro_kernel.hpp"
#include "headroom/detail/tile_rows.hpp"
#include "headroom/detail/vector_exp.hpp"

namespace headroom::detail {

inline constexpr float kNegInf = -std::numeric_limits<float>::infinity();

/// Folds one block of logits into the running softmax state of its rows (DESIGN.md, "Online
/// softmax"): m' = max(m, max s), p = exp(s - m'), l = l * exp(m - m') + sum p. Leaves p in
/// `scores` and exp(m - m') in `rescale` for the caller's O = diag(rescale) O + p V. The rows'
/// rescale factors share one vector exp.
inline void online_softmax_update(Index rows, float* scores, float* row_max, float* row_sum,
                                  float* rescale) {
  using namespace Eigen::internal;
  constexpr int kPackets = kKeyTile / kPacketSize;
  static_assert(kTileRows <= kPacketSize, "the rescale factors of a row block fill one packet");
  alignas(64) float old_max[kPacketSize] = {}, reference[kPacketSize] = {}, sums[kPacketSize];
  for (Index r = 0; r < rows; ++r) {
    float* s = scores + r * kKeyTile;
    Packet block_max = pload<Packet>(s);
    for (int p = 1; p < kPackets; ++p) block_max = pmax(block_max, pload<Packet>(s + p * kPacketSize));
    const float new_max = std::max(row_max[r], predux_max(block_max));
    // A row that has seen no visible key keeps m = -inf; subtracting 0 instead keeps
    // exp(-inf - -inf) from turning its zero state into NaN.
    reference[r] = new_max == kNegInf ? 0.0f : new_max;
    old_max[r] = row_max[r];
    row_max[r] = new_max;
    // Masked logits (-inf) give exactly 0: packet_exp never returns a denormal.
    const Packet shift = pset1<Packet>(reference[r]);
    Packet sum = pset1<Packet>(0.0f);
    for (int p = 0; p < kPackets; ++p) {
      const Packet e = packet_exp(psub(pload<Packet>(s + p * kPacketSize), shift));
      pstore(s + p * kPacketSize, e);
      sum = padd(sum, e);
    }
    sums[r] = predux(sum);
  }
  alignas(64) float factors[kPacketSize];
  pstore(factors, packet_exp(psub(pload<Packet>(old_max), pload<Packet>(reference))));
  for (Index r = 0; r < rows; ++r) {
    rescale[r] = factors[r];  // 0 where nothing was accumulated yet (old_max = -inf)
    row_sum[r] = row_sum[r] * factors[r] + sums[r];
  }
}

/// The online-softmax update of online_softmax_update for key-major logits (scores[c * stride +
/// r], keys c < count) of the row packets [packet_first, packet_end): the rows lie along the
/// vector lanes, so the maxima and sums over keys are lane-wise and need no horizontal reduction.
/// Each packet keeps four maxima and four sums over the keys c = 0, 1, 2, 3 (mod 4), combined at
/// the end: one chain of 64 dependent max or add instructions would take four times as long as
/// the instructions themselves.
inline void online_softmax_columns(Index count, Index stride, Index packet_first,
                                   Index packet_end, float* scores, float* row_max,
                                   float* row_sum, float* rescale) {
  using namespace Eigen::internal;
  constexpr int kChains = 4;
  const Packet neg_inf = pset1<Packet>(kNegInf);
  const Index full = count / kChains * kChains;
  for (Index p = packet_first; p < packet_end; ++p) {
    const Index lanes = p * kPacketSize;
    float* s = scores + lanes;
    const Packet old_max = pload<Packet>(row_max + lanes);
    Packet maxima[kChains] = {old_max, old_max, old_max, old_max};
    for (Index c = 0; c < full; c += kChains) {
      HEADROOM_UNROLL
      for (int j = 0; j < kChains; ++j) maxima[j] = pmax(maxima[j], pload<Packet>(s + (c + j) * stride));
    }
    for (Index c = full; c < count; ++c) maxima[0] = pmax(maxima[0], pload<Packet>(s + c * stride));
    const Packet new_max = pmax(pmax(maxima[0], maxima[1]), pmax(maxima[2], maxima[3]));
    // Rows that have seen no visible key keep m = -inf and are shifted by 0 instead, so that
    // exp(-inf - -inf) does not turn their zero state into NaN. Masked logits (-inf), and the
    // factor of rows with nothing accumulated yet, come out as exactly 0: packet_exp never
    // returns a denormal.
    const Packet shift = pand(new_max, pcmp_lt(neg_inf, new_max));
    const auto probability = [&](Index c) {
      const Packet e = packet_exp(psub(pload<Packet>(s + c * stride), shift));
      pstore(s + c * stride, e);
      return e;
    };
    Packet sums[kChains] = {pset1<Packet>(0.0f), pset1<Packet>(0.0f), pset1<Packet>(0.0f),
                            pset1<Packet>(0.0f)};
    for (Index c = 0; c < full; c += kChains) {
      HEADROOM_UNROLL
      for (int j = 0; j < kChains; ++j) sums[j] = padd(sums[j], probability(c + j));
    }
    for (Index c = full; c < count; ++c) sums[0] = padd(sums[0], probability(c));
    const Packet sum = padd(padd(sums[0], sums[1]), padd(sums[2], sums[3]));
    const Packet factor = packet_exp(psub(old_max, shift));
    pstore(rescale + lanes, factor);
    pstore(row_sum + lanes, pmadd(pload<Packet>(row_sum + lanes), factor, sum));
    pstore(row_max + lanes, new_max);
  }
}

}  // namespace headroom::detail
