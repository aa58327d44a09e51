// SPDX-License-Identifier: MIT
// The latent KV cache of an MLA layer: one row [c_kv | k_pe] per token, as a KvCache or a
// PagedKvCache whose values are a view of the first kv_lora_rank elements of each key row.
#pragma once

#include "headroom/cache/kv_cache.hpp"
#include "headroom/cache/paged_kv_cache.hpp"
#include "headroom/core/error.hpp"
#include "headroom/mla/mla_config.hpp"

namespace headroom {

/// A contiguous latent cache: a KvCache with one kv head of head_dim_k = kv_lora_rank +
/// qk_rope_head_dim, head_dim_v = kv_lora_rank and values_in_keys. Build its config with
/// latent_cache_config().
template <class T>
using LatentCache = KvCache<T>;
/// A paged latent cache; build its config with paged_latent_cache_config().
template <class T>
using PagedLatentCache = PagedKvCache<T>;

/// Returns the config of a contiguous latent cache for `config`'s layer: `num_sequences` slots
/// of `capacity` tokens. One token takes (kv_lora_rank + qk_rope_head_dim) elements of the cache
/// type (576 for DeepSeek-V2: 2304 bytes in f32, 1152 in bf16 and f16, 580 in int8 with its one
/// f32 scale), against 2 x num_heads x head_dim for MHA. The absorbed attention reads the row as
/// its key and its first kv_lora_rank elements, c_kv, as its value: one stored copy.
inline KvCacheConfig latent_cache_config(const MlaConfig& config, Index num_sequences,
                                         Index capacity) {
  config.validate();
  KvCacheConfig cache;
  cache.num_kv_heads = 1;
  cache.head_dim_k = config.latent_dim();
  cache.head_dim_v = config.kv_lora_rank;
  cache.num_sequences = num_sequences;
  cache.capacity = capacity;
  cache.values_in_keys = true;
  return cache;
}

/// Returns the config of a paged latent cache for `config`'s layer: a pool of `num_blocks` blocks
/// of `block_size` tokens (see latent_cache_config for the row).
inline PagedKvCacheConfig paged_latent_cache_config(const MlaConfig& config, Index num_blocks,
                                                    Index block_size = 16) {
  config.validate();
  PagedKvCacheConfig cache;
  cache.num_kv_heads = 1;
  cache.head_dim_k = config.latent_dim();
  cache.head_dim_v = config.kv_lora_rank;
  cache.block_size = block_size;
  cache.num_blocks = num_blocks;
  cache.values_in_keys = true;
  return cache;
}

namespace detail {

/// Checks that a cache has the latent layout of `config`'s layer (see latent_cache_config).
template <class CacheConfig>
void check_latent_cache(const char* where, const CacheConfig& cache, const MlaConfig& config) {
  HEADROOM_CHECK(cache.num_kv_heads == 1 && cache.head_dim_k == config.latent_dim() &&
                     cache.head_dim_v == config.kv_lora_rank && cache.values_in_keys,
                 where, "the cache has num_kv_heads ", cache.num_kv_heads, ", head_dim_k ",
                 cache.head_dim_k, ", head_dim_v ", cache.head_dim_v, ", values_in_keys ",
                 cache.values_in_keys ? "true" : "false",
                 " but the layer's latent cache needs 1, kv_lora_rank + qk_rope_head_dim (",
                 config.latent_dim(), "), kv_lora_rank (", config.kv_lora_rank,
                 "), true: build it from latent_cache_config or paged_latent_cache_config");
}

}  // namespace detail
}  // namespace headroom
