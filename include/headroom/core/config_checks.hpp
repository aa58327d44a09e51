// SPDX-License-Identifier: MIT
// The checks model configs share (MlaConfig, DecoderConfig): sizes within bounds that keep every
// weight addressable, and finite settings above a floor.
#pragma once

#include <cmath>
#include <initializer_list>

#include "headroom/core/error.hpp"
#include "headroom/core/tensor_view.hpp"

namespace headroom::detail {

/// The largest a config's dim may be: 2^24 per dim (and per head-stacked dim) keeps the largest
/// weight matrix, 2^48 elements at most, far from overflowing Index.
inline constexpr Index kMaxConfigDim = Index{1} << 24;

/// A config field's name and size.
struct NamedSize {
  const char* name;
  Index value;
};

/// Throws headroom::Error from `where` naming the first of `sizes` outside [1, kMaxConfigDim].
inline void check_config_dims(const char* where, std::initializer_list<NamedSize> sizes) {
  for (const NamedSize& size : sizes) {
    HEADROOM_CHECK(size.value > 0 && size.value <= kMaxConfigDim, where, size.name, " (",
                   size.value, ") must be in [1, ", kMaxConfigDim, "]");
  }
}

/// Throws headroom::Error from `where` naming `name` unless `value` is finite and > `floor`.
inline void check_finite_above(const char* where, const char* name, double value, double floor) {
  HEADROOM_CHECK(value > floor && std::isfinite(value), where, name, " (", value,
                 ") must be a finite number > ", floor);
}

}  // namespace headroom::detail
