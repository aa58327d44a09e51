// SPDX-License-Identifier: MIT
// The KV caches the decode benchmarks read: random contents, built once per shape, and enough
// copies (one per layer, walked in turn as a model does) that every step reads from DRAM.
#pragma once

#include <algorithm>
#include <memory>
#include <random>
#include <tuple>
#include <vector>

#include "headroom/cache/kv_cache.hpp"
#include "roofline.hpp"

namespace headroom::bench {

/// Caches smaller than twice the last-level cache (and 256 MiB) are replicated, one per layer, and
/// the steps walk the layers in turn as a model does, so every step reads its cache from DRAM. A
/// cache read over and over that fits the cache, or nearly, is partly served from it: 128 MiB steps
/// of GQA at 16k keys read 37 GB/s on a host with a 480 MiB L3 and 29 GB/s of DRAM bandwidth.
inline Index min_bytes_per_step() {
  return std::max<Index>(Index{256} << 20, 2 * last_level_cache_bytes());
}

/// Returns a cache of `config` holding `length` random tokens (elements in [-1, 1], the range of
/// a normalised latent), appended 1024 tokens at a time; keys alone when config.values_in_keys.
template <class T>
std::unique_ptr<KvCache<T>> filled_cache(const KvCacheConfig& config, Index length,
                                         std::mt19937& rng) {
  auto cache = std::make_unique<KvCache<T>>(config);
  const Index chunk = std::min<Index>(1024, length);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> keys(chunk * config.num_kv_heads * config.head_dim_k);
  std::vector<float> values(
      config.values_in_keys ? 0 : chunk * config.num_kv_heads * config.head_dim_v);
  for (float& x : keys) x = dist(rng);
  for (float& x : values) x = dist(rng);
  for (Index done = 0; done < length; done += chunk) {
    // Distinct bytes in every page: the host may merge identical pages (KSM), and decode would
    // then read a cache instead of DRAM.
    for (float& x : keys) x += 1.0f / 1024.0f;
    for (float& x : values) x -= 1.0f / 1024.0f;
    const Index n = std::min(chunk, length - done);
    const auto k = TensorView<const float>::bshd(keys.data(), 1, n, config.num_kv_heads,
                                                 config.head_dim_k);
    if (config.values_in_keys) {
      cache->append(0, k);
    } else {
      cache->append(0, k, TensorView<const float>::bshd(values.data(), 1, n, config.num_kv_heads,
                                                        config.head_dim_v));
    }
  }
  return cache;
}

/// The layer caches of one shape, built once and kept for every run of the benchmarks that use
/// it (filling gigabytes takes seconds); one shape at a time, the largest take gigabytes.
template <class T>
std::vector<std::unique_ptr<KvCache<T>>>& layer_caches(const KvCacheConfig& config, Index length) {
  static std::vector<std::unique_ptr<KvCache<T>>> layers;
  static std::tuple<Index, Index, Index, bool, Index, Index> filled_for{};
  const auto shape = std::make_tuple(config.num_kv_heads, config.head_dim_k, config.head_dim_v,
                                     config.values_in_keys, config.capacity, length);
  if (layers.empty() || filled_for != shape) {
    layers.clear();
    std::mt19937 rng(1);
    layers.push_back(filled_cache<T>(config, length, rng));
    const Index bytes = layers[0]->bytes_per_token() * length;
    const Index num_layers = std::max<Index>(1, (min_bytes_per_step() + bytes - 1) / bytes);
    for (Index l = 1; l < num_layers; ++l) layers.push_back(filled_cache<T>(config, length, rng));
    filled_for = shape;
  }
  return layers;
}

}  // namespace headroom::bench
