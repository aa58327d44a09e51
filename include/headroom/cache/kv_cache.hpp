// SPDX-License-Identifier: MIT
// A contiguous per-layer KV cache for a fixed set of sequences, optionally a ring buffer for
// sliding-window models, in f32, bf16, f16 or int8.
#pragma once

#include <algorithm>
#include <limits>
#include <vector>

#include "headroom/cache/kv_rows.hpp"
#include "headroom/core/element.hpp"
#include "headroom/core/error.hpp"
#include "headroom/core/tensor_view.hpp"

namespace headroom {

/// Sizes of a KvCache.
struct KvCacheConfig {
  Index num_kv_heads = 0;
  Index head_dim_k = 0;
  Index head_dim_v = 0;     // 0 means head_dim_k
  Index num_sequences = 1;  // slots, addressed by sequence ids 0 .. num_sequences - 1
  Index capacity = 0;       // tokens kept per sequence
  /// When true the cache keeps the last `capacity` tokens of each sequence and appends overwrite
  /// the oldest (for sliding-window models: capacity >= window + the longest chunk appended and
  /// attended at once); when false, appending past capacity is an error.
  bool ring_buffer = false;
  /// When true no V is stored: a token's value is the first head_dim_v elements of its key row
  /// (head_dim_v <= head_dim_k), and append takes keys alone. MLA's latent cache (see
  /// mla/latent_cache.hpp): one copy of the latent serves as key and value.
  bool values_in_keys = false;
};

template <class T>
class KvCache;

/// The keys and values of some sequences of a KvCache, as a KV source for headroom::attend. Holds
/// a pointer to the cache: valid while the cache lives and is not appended to.
template <class T>
class KvCacheView : public detail::KvRowsSource<T, KvCacheView<T>> {
 public:
  KvCacheView(const KvCache<T>& cache, std::vector<Index> sequence_ids)
      : detail::KvRowsSource<T, KvCacheView<T>>(cache.rows_), cache_(&cache),
        ids_(std::move(sequence_ids)) {}

  Index batch() const { return static_cast<Index>(ids_.size()); }
  Index max_kv_len() const {
    Index longest = 0;
    for (Index id : ids_) longest = std::max(longest, cache_->length(id));
    return longest;
  }
  Index kv_len(Index b) const { return cache_->length(ids_[b]); }
  Index first_readable(Index b) const { return cache_->first_readable(ids_[b]); }
  Index run_length(Index b, Index j) const {
    // A sequence's rows of one head are consecutive, up to the ring buffer's wrap.
    const Index capacity = cache_->config().capacity;
    static_cast<void>(b);
    return cache_->config().ring_buffer ? capacity - j % capacity : capacity - j;
  }
  /// Checks that every sequence id exists and appears once.
  void validate(const char* where) const {
    detail::check_sequence_ids(where, ids_, [&](Index id) { return cache_->has_sequence(id); });
  }

 private:
  friend class detail::KvRowsSource<T, KvCacheView<T>>;
  Index row(Index b, Index j) const { return cache_->row_of(ids_[b], j); }

  const KvCache<T>* cache_;
  std::vector<Index> ids_;  // [batch]
};

/// A per-layer KV cache: `num_sequences` slots of `capacity` tokens each, every token's keys and
/// values for all kv heads stored in element type T (int8: symmetric, one f32 scale per token and
/// kv head, quantised on append). Positions are logical: a sequence's tokens are 0 .. length - 1
/// whatever the ring buffer has overwritten.
/// \tparam T float, Eigen::bfloat16, Eigen::half or std::int8_t.
template <class T>
class KvCache {
 public:
  using Element = T;  // as stored

  explicit KvCache(const KvCacheConfig& config) : config_(validated(config)) {
    rows_ = detail::KvRows<T>(config_.num_sequences * config_.capacity, config_.capacity,
                              config_.num_kv_heads, config_.head_dim_k, config_.head_dim_v,
                              config_.values_in_keys);
    length_.assign(static_cast<size_t>(config_.num_sequences), 0);
    first_.assign(static_cast<size_t>(config_.num_sequences), 0);
  }

  /// Appends k.seq tokens to each sequence in `sequence_ids` (sequence b of k and v goes to
  /// sequence_ids[b]). All or nothing: a rejected call leaves every sequence as it was.
  ///   k: [sequence_ids.size(), new_tokens, num_kv_heads, head_dim_k]
  ///   v: [sequence_ids.size(), new_tokens, num_kv_heads, head_dim_v]
  void append(const std::vector<Index>& sequence_ids, TensorView<const float> k,
              TensorView<const float> v) {
    append_rows(sequence_ids, k, &v);
  }

  /// Appends to one sequence; k and v have batch 1.
  void append(Index sequence_id, TensorView<const float> k, TensorView<const float> v) {
    append(std::vector<Index>{sequence_id}, k, v);
  }

  /// Appends keys alone to a cache with values_in_keys (each value is the first head_dim_v
  /// elements of its key); otherwise as the overload with values.
  ///   k: [sequence_ids.size(), new_tokens, num_kv_heads, head_dim_k]
  void append(const std::vector<Index>& sequence_ids, TensorView<const float> k) {
    append_rows(sequence_ids, k, nullptr);
  }

  /// Appends keys alone to one sequence; k has batch 1.
  void append(Index sequence_id, TensorView<const float> k) {
    append(std::vector<Index>{sequence_id}, k);
  }

  /// Returns a KV source over the given sequences, in that order, for headroom::attend.
  KvCacheView<T> view(std::vector<Index> sequence_ids) const {
    KvCacheView<T> result(*this, std::move(sequence_ids));
    result.validate("KvCache::view");
    return result;
  }

  /// Returns the tokens appended to a sequence so far (its next position).
  Index length(Index sequence_id) const {
    check_id("KvCache::length", sequence_id);
    return length_[sequence_id];
  }
  /// Returns the first position still stored (ring buffers drop older ones), else 0.
  Index first_readable(Index sequence_id) const {
    check_id("KvCache::first_readable", sequence_id);
    return first_[sequence_id];
  }

  /// Forgets every token of one sequence.
  void reset(Index sequence_id) {
    check_id("KvCache::reset", sequence_id);
    length_[sequence_id] = 0;
    first_[sequence_id] = 0;
  }
  /// Forgets every token of every sequence.
  void reset() {
    std::fill(length_.begin(), length_.end(), 0);
    std::fill(first_.begin(), first_.end(), 0);
  }

  /// Shortens a sequence to `new_length` tokens (rolls back rejected speculative tokens). A ring
  /// buffer cannot bring back what it overwrote: new_length must be >= first_readable().
  void truncate(Index sequence_id, Index new_length) {
    constexpr const char* kWhere = "KvCache::truncate";
    check_id(kWhere, sequence_id);
    HEADROOM_CHECK(new_length >= first_[sequence_id] && new_length <= length_[sequence_id],
                   kWhere, "new_length (", new_length, ") is outside [", first_[sequence_id],
                   ", ", length_[sequence_id], "] for sequence ", sequence_id);
    length_[sequence_id] = new_length;
  }

  const KvCacheConfig& config() const { return config_; }
  Index capacity() const { return config_.capacity; }
  bool has_sequence(Index id) const { return id >= 0 && id < config_.num_sequences; }
  /// Returns the bytes one token of one sequence takes: K and V of every kv head (K alone with
  /// values_in_keys), plus the int8 scales.
  Index bytes_per_token() const { return rows_.bytes_per_row(); }
  /// Returns the bytes allocated for keys, values and scales.
  Index bytes_total() const {
    return bytes_per_token() * config_.num_sequences * config_.capacity;
  }

 private:
  friend class KvCacheView<T>;

  static KvCacheConfig validated(KvCacheConfig config) {
    constexpr const char* kWhere = "KvCache";
    if (config.head_dim_v == 0) config.head_dim_v = config.head_dim_k;
    detail::check_cache_layout<T>(kWhere, config.num_kv_heads, config.head_dim_k,
                                  config.head_dim_v, "num_sequences", config.num_sequences,
                                  "capacity", config.capacity);
    detail::check_values_in_keys(kWhere, config.values_in_keys, config.head_dim_k,
                                 config.head_dim_v);
    return config;
  }

  /// Appends k (and *v unless values_in_keys) after checking everything, all or nothing.
  void append_rows(const std::vector<Index>& sequence_ids, const TensorView<const float>& k,
                   const TensorView<const float>* v) {
    constexpr const char* kWhere = "KvCache::append";
    detail::check_append_kind(kWhere, config_.values_in_keys, v != nullptr);
    detail::check_sequence_ids(kWhere, sequence_ids, [&](Index id) { return has_sequence(id); });
    detail::check_append_tensors<T>(kWhere, k, v, static_cast<Index>(sequence_ids.size()),
                                    config_.num_kv_heads, config_.head_dim_k, config_.head_dim_v);
    for (Index id : sequence_ids) {
      const Index limit = config_.ring_buffer ? config_.capacity
                                              : config_.capacity - length_[id];
      HEADROOM_CHECK(k.seq <= limit, kWhere, "appending ", k.seq, " tokens to sequence ", id,
                     " of length ", length_[id], " exceeds the capacity (", config_.capacity,
                     config_.ring_buffer ? " tokens at once in a ring buffer)" : " tokens)");
    }
    for (size_t b = 0; b < sequence_ids.size(); ++b) {
      const Index id = sequence_ids[b];
      for (Index s = 0; s < k.seq; ++s) {
        rows_.write(row_of(id, length_[id] + s), k, v, static_cast<Index>(b), s, staging_);
      }
      length_[id] += k.seq;
      if (config_.ring_buffer) first_[id] = std::max(first_[id], length_[id] - config_.capacity);
    }
  }

  void check_id(const char* where, Index id) const {
    HEADROOM_CHECK(has_sequence(id), where, "sequence id ", id, " does not exist (the cache has ",
                   config_.num_sequences, " sequences)");
  }

  /// Returns the storage row of position `pos` of a sequence.
  Index row_of(Index id, Index pos) const {
    return id * config_.capacity + (config_.ring_buffer ? pos % config_.capacity : pos);
  }

  KvCacheConfig config_;
  detail::KvRows<T> rows_;     // [num_sequences * capacity] rows
  std::vector<Index> length_;  // [num_sequences] tokens appended
  std::vector<Index> first_;   // [num_sequences] first position still stored
  std::vector<float> staging_;
};

}  // namespace headroom
