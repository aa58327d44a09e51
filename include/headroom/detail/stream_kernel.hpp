// SPDX-License-Identifier: MIT
// The decode-side products: a few query rows against K and V read straight from a cache, each
// element loaded once and converted to f32 in registers, never copied to scratch.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <type_traits>

#include "headroom/core/element.hpp"
#include "headroom/core/tensor_view.hpp"
#include "headroom/detail/micro_kernel.hpp"

namespace headroom::detail {

/// Scores of kRows query rows against `count` keys: scores[r * score_stride + c] =
/// key_scale[c] * (q[r] . k[c]). Vectorised along the head dim (dk a multiple of kPacketSize):
/// kRows x kKeys accumulators each gather one dot product, then fold horizontally. With one to a
/// few rows this reads K at memory speed, where a transposed copy would cost more than the math.
///   q: [kRows, dk], k: count rows of dk elements, k_row_stride apart; key_scale: [count] or null.
template <int kRows, class T>
void dot_scores(const float* q, Index dk, const T* k, Index k_row_stride, const float* key_scale,
                Index count, float* scores, Index score_stride) {
  using namespace Eigen::internal;
  // Enough independent accumulators to hide the FMA latency, few enough to stay in registers.
  constexpr int kKeys = std::max(1, (kPacketSize == 16 ? 16 : 8) / kRows);
  Index c = 0;
  const auto block = [&](auto keys_tag) {
    constexpr int kBlock = decltype(keys_tag)::value;
    Packet acc[kRows][kBlock];
    HEADROOM_UNROLL
    for (int r = 0; r < kRows; ++r) {
      HEADROOM_UNROLL
      for (int j = 0; j < kBlock; ++j) acc[r][j] = pset1<Packet>(0.0f);
    }
    for (Index d = 0; d < dk; d += kPacketSize) {
      Packet k_d[kBlock];
      HEADROOM_UNROLL
      for (int j = 0; j < kBlock; ++j) k_d[j] = load_packet(k + (c + j) * k_row_stride + d);
      HEADROOM_UNROLL
      for (int r = 0; r < kRows; ++r) {
        const Packet q_d = pload<Packet>(q + r * dk + d);
        HEADROOM_UNROLL
        for (int j = 0; j < kBlock; ++j) acc[r][j] = pmadd(q_d, k_d[j], acc[r][j]);
      }
    }
    HEADROOM_UNROLL
    for (int r = 0; r < kRows; ++r) {
      HEADROOM_UNROLL
      for (int j = 0; j < kBlock; ++j) {
        const float key_scale_j = key_scale != nullptr ? key_scale[c + j] : 1.0f;
        scores[r * score_stride + c + j] = key_scale_j * predux(acc[r][j]);
      }
    }
  };
  for (; c + kKeys <= count; c += kKeys) block(std::integral_constant<int, kKeys>{});
  for (; c < count; ++c) block(std::integral_constant<int, 1>{});
}

/// Accumulates O = diag(rescale) O + P V for kRows rows with V read straight from the cache, one
/// packet load per element.
///   p: [kRows, count] (row stride p_stride); v: count rows of dv elements, v_row_stride apart;
///   value_scale: [count] or null (int8: folded into p); o: [kRows, dv] (row stride o_stride,
///   aligned), dv a multiple of kPacketSize.
template <int kRows, class T>
void direct_pv(const float* p, Index p_stride, const T* v, Index v_row_stride,
               const float* value_scale, Index count, Index dv, float* o, Index o_stride,
               const float* rescale) {
  using namespace Eigen::internal;
  const auto panel = [&](Index col, auto packets_tag) {
    constexpr int kPackets = decltype(packets_tag)::value;
    Packet acc[kRows][kPackets];
    HEADROOM_UNROLL
    for (int r = 0; r < kRows; ++r) {
      HEADROOM_UNROLL
      for (int j = 0; j < kPackets; ++j) {
        acc[r][j] = pmul(pload<Packet>(o + r * o_stride + col + j * kPacketSize),
                         pset1<Packet>(rescale[r]));
      }
    }
    for (Index c = 0; c < count; ++c) {
      Packet v_c[kPackets];
      HEADROOM_UNROLL
      for (int j = 0; j < kPackets; ++j) {
        v_c[j] = load_packet(v + c * v_row_stride + col + j * kPacketSize);
      }
      const float value_scale_c = value_scale != nullptr ? value_scale[c] : 1.0f;
      HEADROOM_UNROLL
      for (int r = 0; r < kRows; ++r) {
        const Packet p_rc = pset1<Packet>(p[r * p_stride + c] * value_scale_c);
        HEADROOM_UNROLL
        for (int j = 0; j < kPackets; ++j) acc[r][j] = pmadd(p_rc, v_c[j], acc[r][j]);
      }
    }
    HEADROOM_UNROLL
    for (int r = 0; r < kRows; ++r) {
      HEADROOM_UNROLL
      for (int j = 0; j < kPackets; ++j) {
        pstore(o + r * o_stride + col + j * kPacketSize, acc[r][j]);
      }
    }
  };
  constexpr Index kPanel = kTilePackets * kPacketSize;
  Index col = 0;
  for (; col + kPanel <= dv; col += kPanel) panel(col, std::integral_constant<int, kTilePackets>{});
  for (; col < dv; col += kPacketSize) panel(col, std::integral_constant<int, 1>{});
}

}  // namespace headroom::detail
