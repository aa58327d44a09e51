// SPDX-License-Identifier: MIT
// A paged KV cache: fixed-size blocks from one pool, a block table per sequence, prefix sharing by
// reference counts (the PagedAttention idea of vLLM, Kwon et al. 2023).
#pragma once

#include <algorithm>
#include <limits>
#include <map>
#include <vector>

#include "headroom/cache/kv_rows.hpp"
#include "headroom/core/element.hpp"
#include "headroom/core/error.hpp"
#include "headroom/core/tensor_view.hpp"

namespace headroom {

/// Sizes of a PagedKvCache.
struct PagedKvCacheConfig {
  Index num_kv_heads = 0;
  Index head_dim_k = 0;
  Index head_dim_v = 0;   // 0 means head_dim_k
  Index block_size = 16;  // tokens per block
  Index num_blocks = 0;   // blocks in the pool
  /// When true no V is stored: a token's value is the first head_dim_v elements of its key row
  /// (head_dim_v <= head_dim_k), and append takes keys alone (MLA's latent cache).
  bool values_in_keys = false;
};

template <class T>
class PagedKvCache;

/// Some sequences of a PagedKvCache as a KV source for headroom::attend: each sequence is a block
/// table (block ids into the pool) and a length. Built by PagedKvCache::view, or from block tables
/// the caller manages itself (validated against the pool). Valid while the cache lives unchanged.
template <class T>
class PagedKvView : public detail::KvRowsSource<T, PagedKvView<T>> {
 public:
  /// Views explicit block tables: sequence b has lengths[b] tokens, token j in block
  /// block_tables[b][j / block_size] at offset j % block_size.
  PagedKvView(const PagedKvCache<T>& cache, std::vector<std::vector<Index>> block_tables,
              std::vector<Index> lengths)
      : detail::KvRowsSource<T, PagedKvView<T>>(cache.rows_), cache_(&cache),
        tables_(std::move(block_tables)), lengths_(std::move(lengths)) {}

  Index batch() const { return static_cast<Index>(tables_.size()); }
  Index max_kv_len() const {
    return lengths_.empty() ? 0 : *std::max_element(lengths_.begin(), lengths_.end());
  }
  Index kv_len(Index b) const { return lengths_[b]; }
  Index first_readable(Index) const { return 0; }
  Index run_length(Index b, Index j) const {
    // A block's rows of one head are consecutive.
    static_cast<void>(b);
    return cache_->config().block_size - j % cache_->config().block_size;
  }
  /// Checks that every table covers its length and names only blocks of the pool.
  void validate(const char* where) const {
    HEADROOM_CHECK(lengths_.size() == tables_.size(), where, "lengths has ", lengths_.size(),
                   " entries but there are ", tables_.size(), " block tables");
    const Index block_size = cache_->config().block_size;
    for (size_t b = 0; b < tables_.size(); ++b) {
      HEADROOM_CHECK(lengths_[b] >= 0, where, "lengths[", b, "] (", lengths_[b],
                     ") is negative");
      const Index needed = lengths_[b] / block_size + (lengths_[b] % block_size != 0 ? 1 : 0);
      HEADROOM_CHECK(static_cast<Index>(tables_[b].size()) >= needed, where,
                     "sequence ", b, " has length ", lengths_[b], " but its block table holds ",
                     tables_[b].size(), " blocks of ", block_size, " tokens");
      for (size_t i = 0; i < tables_[b].size(); ++i) {
        HEADROOM_CHECK(tables_[b][i] >= 0 && tables_[b][i] < cache_->config().num_blocks, where,
                       "block_tables[", b, "][", i, "] (", tables_[b][i],
                       ") is outside the pool [0, ", cache_->config().num_blocks, ")");
      }
    }
  }

 private:
  friend class detail::KvRowsSource<T, PagedKvView<T>>;
  Index row(Index b, Index j) const {
    const Index block_size = cache_->config().block_size;
    return tables_[b][j / block_size] * block_size + j % block_size;
  }

  const PagedKvCache<T>* cache_;
  std::vector<std::vector<Index>> tables_;  // [batch][blocks]
  std::vector<Index> lengths_;              // [batch]
};

/// A pool of `num_blocks` blocks of `block_size` tokens, each token's keys and values for every
/// kv head stored in element type T (int8: one f32 scale per token and kv head). Sequences are
/// created and removed at will and take blocks only as they grow, so many sequences of different
/// lengths share one pool without fragmentation; fork() shares a prefix's blocks, copied only when
/// a sharer writes into a shared, partly filled block.
/// \tparam T float, Eigen::bfloat16, Eigen::half or std::int8_t.
template <class T>
class PagedKvCache {
 public:
  using Element = T;  // as stored

  explicit PagedKvCache(const PagedKvCacheConfig& config) : config_(validated(config)) {
    rows_ = detail::KvRows<T>(config_.num_blocks * config_.block_size, config_.block_size,
                              config_.num_kv_heads, config_.head_dim_k, config_.head_dim_v,
                              config_.values_in_keys);
    references_.assign(static_cast<size_t>(config_.num_blocks), 0);
    for (Index block = config_.num_blocks - 1; block >= 0; --block) free_.push_back(block);
  }

  /// Creates an empty sequence and returns its id.
  Index add_sequence() {
    const Index id = next_id_++;
    sequences_[id] = Sequence{};
    return id;
  }

  /// Creates a sequence that shares all of `sequence_id`'s tokens (a common prompt prefix, beam
  /// search) without copying them, and returns its id.
  Index fork(Index sequence_id) {
    const Sequence& source = sequence("PagedKvCache::fork", sequence_id);
    for (Index block : source.blocks) ++references_[block];
    const Index id = next_id_++;
    sequences_[id] = source;
    return id;
  }

  /// Removes a sequence and returns the blocks no other sequence uses to the pool.
  void remove_sequence(Index sequence_id) {
    Sequence& seq = sequence("PagedKvCache::remove_sequence", sequence_id);
    release_blocks(seq, 0);
    sequences_.erase(sequence_id);
  }

  /// Appends k.seq tokens to each sequence in `sequence_ids`, taking blocks from the pool as
  /// needed. All or nothing: if the pool cannot hold them, nothing changes.
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

  /// Appends keys alone to a pool with values_in_keys (each value is the first head_dim_v
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
  PagedKvView<T> view(const std::vector<Index>& sequence_ids) const {
    constexpr const char* kWhere = "PagedKvCache::view";
    detail::check_sequence_ids(kWhere, sequence_ids, [&](Index id) { return has_sequence(id); });
    std::vector<std::vector<Index>> tables;
    std::vector<Index> lengths;
    for (Index id : sequence_ids) {
      tables.push_back(sequences_.at(id).blocks);
      lengths.push_back(sequences_.at(id).length);
    }
    return PagedKvView<T>(*this, std::move(tables), std::move(lengths));
  }

  /// Shortens a sequence to `new_length` tokens and frees the blocks it no longer needs.
  void truncate(Index sequence_id, Index new_length) {
    constexpr const char* kWhere = "PagedKvCache::truncate";
    Sequence& seq = sequence(kWhere, sequence_id);
    HEADROOM_CHECK(new_length >= 0 && new_length <= seq.length, kWhere, "new_length (",
                   new_length, ") is outside [0, ", seq.length, "] for sequence ", sequence_id);
    seq.length = new_length;
    release_blocks(seq, (new_length + config_.block_size - 1) / config_.block_size);
  }

  /// Forgets every token of a sequence (it stays, empty).
  void reset(Index sequence_id) { truncate(sequence_id, 0); }

  Index length(Index sequence_id) const {
    return sequence("PagedKvCache::length", sequence_id).length;
  }
  const std::vector<Index>& block_table(Index sequence_id) const {
    return sequence("PagedKvCache::block_table", sequence_id).blocks;
  }
  bool has_sequence(Index id) const { return sequences_.count(id) != 0; }
  Index free_blocks() const { return static_cast<Index>(free_.size()); }
  const PagedKvCacheConfig& config() const { return config_; }
  /// Returns the bytes one token takes: K and V of every kv head (K alone with values_in_keys),
  /// plus the int8 scales.
  Index bytes_per_token() const { return rows_.bytes_per_row(); }
  /// Returns the bytes allocated for the pool.
  Index bytes_total() const { return bytes_per_token() * config_.num_blocks * config_.block_size; }

 private:
  friend class PagedKvView<T>;

  struct Sequence {
    std::vector<Index> blocks;  // block table
    Index length = 0;
  };

  static PagedKvCacheConfig validated(PagedKvCacheConfig config) {
    constexpr const char* kWhere = "PagedKvCache";
    if (config.head_dim_v == 0) config.head_dim_v = config.head_dim_k;
    detail::check_cache_layout<T>(kWhere, config.num_kv_heads, config.head_dim_k,
                                  config.head_dim_v, "num_blocks", config.num_blocks,
                                  "block_size", config.block_size);
    detail::check_values_in_keys(kWhere, config.values_in_keys, config.head_dim_k,
                                 config.head_dim_v);
    return config;
  }

  /// Appends k (and *v unless values_in_keys) after checking everything, all or nothing.
  void append_rows(const std::vector<Index>& sequence_ids, const TensorView<const float>& k,
                   const TensorView<const float>* v) {
    constexpr const char* kWhere = "PagedKvCache::append";
    detail::check_append_kind(kWhere, config_.values_in_keys, v != nullptr);
    detail::check_sequence_ids(kWhere, sequence_ids, [&](Index id) { return has_sequence(id); });
    detail::check_append_tensors<T>(kWhere, k, v, static_cast<Index>(sequence_ids.size()),
                                    config_.num_kv_heads, config_.head_dim_k, config_.head_dim_v);
    // No sequence holds more tokens than the pool (whose size check_cache_layout bounded), so
    // this also keeps the sums in blocks_needed_for from overflowing.
    const Index pool_tokens = config_.num_blocks * config_.block_size;
    HEADROOM_CHECK(k.seq <= pool_tokens, kWhere, "appending ", k.seq,
                   " tokens exceeds the pool's ", pool_tokens, " tokens (", config_.num_blocks,
                   " blocks of ", config_.block_size, ")");
    const Index blocks_needed = blocks_needed_for(sequence_ids, k.seq);
    HEADROOM_CHECK(blocks_needed <= static_cast<Index>(free_.size()), kWhere, "appending ",
                   k.seq, " tokens to ", sequence_ids.size(), " sequences needs ", blocks_needed,
                   " free blocks but the pool has ", free_.size(), " of ", config_.num_blocks);
    for (size_t b = 0; b < sequence_ids.size(); ++b) {
      Sequence& seq = sequences_.at(sequence_ids[b]);
      for (Index s = 0; s < k.seq; ++s) {
        const Index pos = seq.length, offset = pos % config_.block_size;
        if (offset == 0) {
          seq.blocks.push_back(take_block());
        } else if (references_[seq.blocks.back()] > 1) {
          // Copy-on-write: the last block is shared with a fork and about to change.
          const Index copy = take_block();
          for (Index i = 0; i < offset; ++i) {
            rows_.copy_row(seq.blocks.back() * config_.block_size + i,
                           copy * config_.block_size + i);
          }
          --references_[seq.blocks.back()];
          seq.blocks.back() = copy;
        }
        rows_.write(seq.blocks.back() * config_.block_size + offset, k, v,
                    static_cast<Index>(b), s, staging_);
        ++seq.length;
      }
    }
  }

  const Sequence& sequence(const char* where, Index id) const {
    const auto it = sequences_.find(id);
    HEADROOM_CHECK(it != sequences_.end(), where, "sequence id ", id, " does not exist");
    return it->second;
  }
  Sequence& sequence(const char* where, Index id) {
    return const_cast<Sequence&>(static_cast<const PagedKvCache&>(*this).sequence(where, id));
  }

  /// Returns how many blocks appending `count` tokens to each of `ids` takes from the pool: the
  /// new blocks, plus a copy of each shared, partly filled last block for every sharer that
  /// writes into it, except that when all of a block's sharers write, the last one keeps it.
  Index blocks_needed_for(const std::vector<Index>& ids, Index count) const {
    if (count == 0) return 0;
    Index needed = 0;
    std::map<Index, Index> writers;  // shared partly filled last block -> sharers in this call
    for (Index id : ids) {
      const Sequence& seq = sequences_.at(id);
      const Index have = static_cast<Index>(seq.blocks.size());
      needed += (seq.length + count + config_.block_size - 1) / config_.block_size - have;
      if (seq.length % config_.block_size != 0 && references_[seq.blocks.back()] > 1) {
        ++writers[seq.blocks.back()];
      }
    }
    for (const auto& [block, sharers] : writers) {
      needed += sharers < references_[block] ? sharers : sharers - 1;
    }
    return needed;
  }

  Index take_block() {
    const Index block = free_.back();
    free_.pop_back();
    references_[block] = 1;
    return block;
  }

  /// Drops the sequence's blocks from index `keep` on, returning unshared ones to the pool.
  void release_blocks(Sequence& seq, Index keep) {
    while (static_cast<Index>(seq.blocks.size()) > keep) {
      const Index block = seq.blocks.back();
      seq.blocks.pop_back();
      if (--references_[block] == 0) free_.push_back(block);
    }
  }

  PagedKvCacheConfig config_;
  detail::KvRows<T> rows_;           // [num_blocks * block_size] rows
  std::vector<Index> references_;    // [num_blocks] sequences using each block
  std::vector<Index> free_;          // blocks with no reference, taken from the back
  std::map<Index, Sequence> sequences_;
  Index next_id_ = 0;
  std::vector<float> staging_;
};

}  // namespace headroom
