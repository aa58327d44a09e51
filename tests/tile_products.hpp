// SPDX-License-Identifier: MIT
// Sets how key-major f32 tiles are multiplied (AMX split products or FMAs) for one scope.
#pragma once

#include "headroom/detail/amx_split_kernel.hpp"

namespace headroom::testing {

/// Chooses `choice` for the f32 tiles until destroyed, then restores the choice before it.
class ScopedF32TileProducts {
 public:
  explicit ScopedF32TileProducts(detail::F32TileProducts choice)
      : previous_(detail::f32_tile_products().exchange(choice)) {}
  ~ScopedF32TileProducts() { detail::f32_tile_products() = previous_; }
  ScopedF32TileProducts(const ScopedF32TileProducts&) = delete;
  ScopedF32TileProducts& operator=(const ScopedF32TileProducts&) = delete;

 private:
  detail::F32TileProducts previous_;
};

}  // namespace headroom::testing
