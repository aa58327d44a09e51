// SPDX-License-Identifier: MIT
// Storage element types for keys and values (f32, bf16, f16, int8 with a scale) and their
// conversions to and from f32: vector instructions where the compiler enables them, portable code
// otherwise.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "headroom/core/tensor_view.hpp"

#if defined(__AVX512F__) || defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace headroom {

/// True for the element types a KV cache and the kernel can store keys and values in: float,
/// Eigen::bfloat16, Eigen::half, and std::int8_t (symmetric, one f32 scale per token and kv head).
template <class T>
inline constexpr bool kIsKvElement =
    std::is_same_v<T, float> || std::is_same_v<T, Eigen::bfloat16> ||
    std::is_same_v<T, Eigen::half> || std::is_same_v<T, std::int8_t>;

/// True when T carries a per-row scale (int8).
template <class T>
inline constexpr bool kHasScale = std::is_same_v<T, std::int8_t>;

/// Returns a short name of an element type for messages and benchmark names.
template <class T>
constexpr const char* element_name() {
  static_assert(kIsKvElement<T>, "element_name: not a KV element type.");
  if constexpr (std::is_same_v<T, float>) return "f32";
  if constexpr (std::is_same_v<T, Eigen::bfloat16>) return "bf16";
  if constexpr (std::is_same_v<T, Eigen::half>) return "f16";
  if constexpr (std::is_same_v<T, std::int8_t>) return "int8";
}

namespace detail {

/// Loads kPacketSize consecutive elements of type T as one f32 packet, converting in registers:
/// the widening instructions of AVX-512 (bf16 by a shift, f16 by vcvtph2ps, int8 by vpmovsxbd) or
/// AVX2/F16C where available, a scalar conversion otherwise. The int8 scale is applied by callers.
template <class T>
EIGEN_ALWAYS_INLINE Eigen::internal::packet_traits<float>::type load_packet(const T* src) {
  using FloatPacket = Eigen::internal::packet_traits<float>::type;
  constexpr int kSize = Eigen::internal::packet_traits<float>::size;
  if constexpr (std::is_same_v<T, float>) {
    return Eigen::internal::ploadu<FloatPacket>(src);
  }
#if defined(__AVX512F__)
  if constexpr (kSize == 16 && std::is_same_v<T, Eigen::bfloat16>) {
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
  }
  if constexpr (kSize == 16 && std::is_same_v<T, Eigen::half>) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
  }
  if constexpr (kSize == 16 && std::is_same_v<T, std::int8_t>) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
  }
#elif defined(__AVX2__)
  // Without AVX-512, Eigen's float packet is the 8-lane AVX one.
  if constexpr (kSize == 8 && std::is_same_v<T, Eigen::bfloat16>) {
    const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
  }
  if constexpr (kSize == 8 && std::is_same_v<T, std::int8_t>) {
    return _mm256_cvtepi32_ps(
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src))));
  }
#if defined(__F16C__)
  if constexpr (kSize == 8 && std::is_same_v<T, Eigen::half>) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  }
#endif
#endif
  if constexpr (!std::is_same_v<T, float>) {
    alignas(64) float converted[kSize];
    for (int i = 0; i < kSize; ++i) converted[i] = static_cast<float>(src[i]);
    return Eigen::internal::pload<FloatPacket>(converted);
  }
}

/// Returns the symmetric int8 scale of a row: max |x| / 127, so the largest element maps to +-127.
inline float int8_scale(const float* src, Index count) {
  float max_abs = 0.0f;
  for (Index i = 0; i < count; ++i) max_abs = std::max(max_abs, std::abs(src[i]));
  return max_abs / 127.0f;
}

/// Writes src converted to T into dst (round to nearest even for bf16 and f16; for int8,
/// round(x / scale) with the scale from int8_scale, which the caller stores next to the row).
template <class T>
inline void from_float(const float* src, Index count, float scale, T* dst) {
  static_assert(kIsKvElement<T>, "from_float: not a KV element type.");
  if constexpr (std::is_same_v<T, std::int8_t>) {
    // Divide rather than multiply by 1 / scale: for rows near the smallest floats the reciprocal
    // overflows to inf. A zero scale (an all-zero or underflowing row) stores zeros.
    for (Index i = 0; i < count; ++i) {
      const float q = scale > 0.0f ? std::nearbyint(src[i] / scale) : 0.0f;
      dst[i] = static_cast<std::int8_t>(std::clamp(q, -127.0f, 127.0f));
    }
  } else {
    static_cast<void>(scale);
    for (Index i = 0; i < count; ++i) dst[i] = static_cast<T>(src[i]);
  }
}

/// Writes `count` elements of src as f32 into dst, times `scale` (an int8 row's scale, else 1):
/// the inverse of from_float, a packet at a time and the tail one by one. Both give the same
/// value for an element (one exact widening, one rounding of the product).
template <class T>
inline void to_float(const T* src, Index count, float scale, float* dst) {
  namespace ei = Eigen::internal;
  using FloatPacket = ei::packet_traits<float>::type;
  constexpr Index kSize = ei::packet_traits<float>::size;
  const FloatPacket factor = ei::pset1<FloatPacket>(scale);
  Index i = 0;
  for (; i + kSize <= count; i += kSize) {
    ei::pstoreu(dst + i, ei::pmul(load_packet(src + i), factor));
  }
  for (; i < count; ++i) dst[i] = scale * static_cast<float>(src[i]);
}

}  // namespace detail
}  // namespace headroom
