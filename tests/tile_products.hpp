// SPDX-License-Identifier: MIT
// Sets how key-major f32 tiles are multiplied (AMX split products or FMAs) for one scope.
#pragma once

#include "headroom/detail/amx_split_kernel.hpp"

namespace headroom::testing {

/// Chooses `choice` for the f32 tiles until destroyed, then restores the default.
class ScopedF32TileProducts {
 public:
  explicit ScopedF32TileProducts(detail::F32TileProducts choice) {
    detail::f32_tile_products() = choice;
  }
  ~ScopedF32TileProducts() { detail::f32_tile_products() = detail::F32TileProducts::kWhereFaster; }
  ScopedF32TileProducts(const ScopedF32TileProducts&) = delete;
  ScopedF32TileProducts& operator=(const ScopedF32TileProducts&) = delete;
};

}  // namespace headroom::testing
