// SPDX-License-Identifier: MIT
// Storage of K and V rows in one element type, shared by the contiguous and the paged cache: a
// token's keys and values for every kv head, quantised on write, read back by the kernel.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "headroom/core/element.hpp"
#include "headroom/core/error.hpp"
#include "headroom/core/huge_page_allocator.hpp"
#include "headroom/core/tensor_view.hpp"

namespace headroom::detail {

/// Rows of keys and values: row r holds one token's K [num_kv_heads, head_dim_k] and V
/// [num_kv_heads, head_dim_v] in element type T, plus for int8 one f32 scale per (row, head) each.
/// Rows come in blocks of `block_rows` (a sequence of a contiguous cache, a block of a paged one),
/// stored head-major inside the block: [block, kv_head, block_rows, dim]. Decoding one kv head then
/// streams consecutive memory, which the hardware prefetchers follow, instead of hopping
/// num_kv_heads * dim elements from token to token.
///
/// With `values_in_keys`, no V is stored: a token's value is the first head_dim_v elements of its
/// key row (head_dim_v <= head_dim_k), with the key row's int8 scale. This is MLA's latent cache
/// (DeepSeek-V2, arXiv:2405.04434, section 2.1.2 and appendix C): the absorbed attention reads
/// the latent c_kv both as the first kv_lora_rank dims of the key [c_kv | k_rope] and as the
/// value, so one stored copy serves both. V rows then sit head_dim_k elements apart.
/// \tparam T float, Eigen::bfloat16, Eigen::half or std::int8_t.
template <class T>
class KvRows {
  static_assert(kIsKvElement<T>,
                "KV caches store float, Eigen::bfloat16, Eigen::half or std::int8_t elements.");

 public:
  KvRows() = default;
  KvRows(Index num_rows, Index block_rows, Index num_kv_heads, Index head_dim_k,
         Index head_dim_v, bool values_in_keys = false)
      : block_rows_(block_rows), num_kv_heads_(num_kv_heads), head_dim_k_(head_dim_k),
        head_dim_v_(head_dim_v), values_in_keys_(values_in_keys),
        k_(static_cast<size_t>(num_rows * num_kv_heads * head_dim_k)),
        v_(values_in_keys ? 0 : static_cast<size_t>(num_rows * num_kv_heads * head_dim_v)),
        k_scale_(kHasScale<T> ? static_cast<size_t>(num_rows * num_kv_heads) : 0),
        v_scale_(kHasScale<T> && !values_in_keys ? static_cast<size_t>(num_rows * num_kv_heads)
                                                 : 0) {
    HEADROOM_DASSERT(!values_in_keys || head_dim_v <= head_dim_k);
  }

  const T* k_row(Index row, Index h) const { return k_.data() + slot(row, h) * head_dim_k_; }
  const T* v_row(Index row, Index h) const {
    if (values_in_keys_) return k_row(row, h);
    return v_.data() + slot(row, h) * head_dim_v_;
  }
  /// Returns the int8 scale of (row, h), or null for types without scales. Within a block, the
  /// next row's scale follows at +1 and its elements at +k_row_stride() / +v_row_stride().
  const float* k_scales(Index row, Index h) const {
    if constexpr (kHasScale<T>) return k_scale_.data() + slot(row, h);
    return nullptr;
  }
  const float* v_scales(Index row, Index h) const {
    if constexpr (kHasScale<T>) {
      return values_in_keys_ ? k_scales(row, h) : v_scale_.data() + slot(row, h);
    }
    return nullptr;
  }
  /// Element steps from a row of one head to the next row of the same block.
  Index k_row_stride() const { return head_dim_k_; }
  Index v_row_stride() const { return values_in_keys_ ? head_dim_k_ : head_dim_v_; }

  /// Stores token s of sequence b of k [.., num_kv_heads, head_dim_k] and of *v (null exactly
  /// when values_in_keys) in row `row`, converting (and for int8 quantising with a fresh scale per
  /// head).
  void write(Index row, const TensorView<const float>& k, const TensorView<const float>* v,
             Index b, Index s, std::vector<float>& staging) {
    HEADROOM_DASSERT((v == nullptr) == values_in_keys_);
    for (Index h = 0; h < num_kv_heads_; ++h) {
      const Index at = slot(row, h);
      write_one(k, b, s, h, head_dim_k_, k_.data() + at * head_dim_k_,
                kHasScale<T> ? &k_scale_[at] : nullptr, staging);
      if (v != nullptr) {
        write_one(*v, b, s, h, head_dim_v_, v_.data() + at * head_dim_v_,
                  kHasScale<T> ? &v_scale_[at] : nullptr, staging);
      }
    }
  }

  /// Copies row `from` to row `to` (copy-on-write of shared paged blocks).
  void copy_row(Index from, Index to) {
    for (Index h = 0; h < num_kv_heads_; ++h) {
      const Index src = slot(from, h), dst = slot(to, h);
      std::copy_n(k_.data() + src * head_dim_k_, head_dim_k_, k_.data() + dst * head_dim_k_);
      if constexpr (kHasScale<T>) k_scale_[dst] = k_scale_[src];
      if (values_in_keys_) continue;
      std::copy_n(v_.data() + src * head_dim_v_, head_dim_v_, v_.data() + dst * head_dim_v_);
      if constexpr (kHasScale<T>) v_scale_[dst] = v_scale_[src];
    }
  }

  /// Returns the bytes one row (one token, every kv head, K and V, scales included) occupies;
  /// with values_in_keys, K and its scale only.
  Index bytes_per_row() const {
    const Index stored_dims = head_dim_k_ + (values_in_keys_ ? 0 : head_dim_v_);
    const Index scales = kHasScale<T> ? (values_in_keys_ ? 1 : 2) : 0;
    return num_kv_heads_ * (stored_dims * static_cast<Index>(sizeof(T)) +
                            scales * static_cast<Index>(sizeof(float)));
  }

  Index num_kv_heads() const { return num_kv_heads_; }
  Index head_dim_k() const { return head_dim_k_; }
  Index head_dim_v() const { return head_dim_v_; }
  bool values_in_keys() const { return values_in_keys_; }

 private:
  /// Returns the index of (row, head) in [block, kv_head, block_rows] order.
  Index slot(Index row, Index h) const {
    const Index block = row / block_rows_, offset = row % block_rows_;
    return (block * num_kv_heads_ + h) * block_rows_ + offset;
  }

  static void write_one(const TensorView<const float>& x, Index b, Index s, Index h, Index dim,
                        T* dst, float* scale, std::vector<float>& staging) {
    const float* src = x.row(b, s, h);
    if (x.dim_stride != 1) {
      staging.resize(static_cast<size_t>(dim));
      for (Index d = 0; d < dim; ++d) staging[d] = src[d * x.dim_stride];
      src = staging.data();
    }
    float row_scale = 1.0f;
    if constexpr (kHasScale<T>) {
      row_scale = int8_scale(src, dim);
      *scale = row_scale;
    }
    from_float(src, dim, row_scale, dst);
  }

  Index block_rows_ = 1, num_kv_heads_ = 0, head_dim_k_ = 0, head_dim_v_ = 0;
  bool values_in_keys_ = false;
  // Aligned for packet loads (with head dims of packet multiples, every row starts aligned), and
  // in huge pages when large: a decode step streams all of it from DRAM.
  std::vector<T, HugePageAllocator<T>> k_;  // [blocks, num_kv_heads, block_rows, head_dim_k]
  std::vector<T, HugePageAllocator<T>> v_;  // same with head_dim_v; empty: values_in_keys
  std::vector<float> k_scale_;   // [num_rows / block_rows, num_kv_heads, block_rows], int8 only
  std::vector<float> v_scale_;   // same, int8 without values_in_keys only
};

/// The part of the KV-source interface (attention/kv_source.hpp) that every cache view shares:
/// rows come from one KvRows, contiguous along the head dim and head-major within a block. The
/// view (Derived) maps (sequence b, key j) to a storage row with row(b, j).
template <class T, class Derived>
class KvRowsSource {
 public:
  using Element = T;

  Index num_kv_heads() const { return rows_->num_kv_heads(); }
  Index head_dim_k() const { return rows_->head_dim_k(); }
  Index head_dim_v() const { return rows_->head_dim_v(); }
  const T* k_row(Index b, Index j, Index h) const { return rows_->k_row(row(b, j), h); }
  const T* v_row(Index b, Index j, Index h) const { return rows_->v_row(row(b, j), h); }
  const float* k_scales(Index b, Index j, Index h) const { return rows_->k_scales(row(b, j), h); }
  const float* v_scales(Index b, Index j, Index h) const { return rows_->v_scales(row(b, j), h); }
  Index k_row_stride() const { return rows_->k_row_stride(); }
  /// head_dim_v, or head_dim_k when values live in the key rows (values_in_keys).
  Index v_row_stride() const { return rows_->v_row_stride(); }
  Index k_dim_stride() const { return 1; }
  Index v_dim_stride() const { return 1; }

 protected:
  explicit KvRowsSource(const KvRows<T>& rows) : rows_(&rows) {}

 private:
  Index row(Index b, Index j) const { return static_cast<const Derived&>(*this).row(b, j); }

  const KvRows<T>* rows_;
};

/// Checks the k and v tensors of an append against a cache's heads and dims, and for int8 that
/// every value is finite (a quantisation scale of inf or NaN would poison the whole row). `v` is

/// Returns the largest magnitude a cache of T stores as itself: int8 rows need a finite scale,
/// and f16 and bf16 turn anything beyond their range into inf (bf16 from 3.3961e38 on, which f32
/// holds). Either would change the answer silently, so appends refuse larger values (and NaN)
/// before anything is written.
template <class T>
float storable_limit() {
  if constexpr (std::is_same_v<T, float> || kHasScale<T>) return std::numeric_limits<float>::max();
  return static_cast<float>(Eigen::NumTraits<T>::highest());
}

/// Returns whether `value` may be appended to a cache of T (see storable_limit); f32 caches
/// store anything.
template <class T>
bool is_storable(float value) {
  return std::is_same_v<T, float> || std::abs(value) <= storable_limit<T>();
}

/// null for a cache whose values live in its keys (values_in_keys), which takes keys alone.
template <class T>
void check_append_tensors(const char* where, const TensorView<const float>& k,
                          const TensorView<const float>* v, Index batch, Index num_kv_heads,
                          Index head_dim_k, Index head_dim_v) {
  check_view(k, where, "k", false);
  HEADROOM_CHECK(k.batch == batch, where, "k.batch (", k.batch, ") differs from the ", batch,
                 " sequence ids");
  HEADROOM_CHECK(k.heads == num_kv_heads, where, "k.heads (", k.heads,
                 ") differs from the cache's num_kv_heads (", num_kv_heads, ")");
  HEADROOM_CHECK(k.dim == head_dim_k, where, "k.dim (", k.dim,
                 ") differs from the cache's head_dim_k (", head_dim_k, ")");
  if (v != nullptr) {
    check_view(*v, where, "v", false);
    HEADROOM_CHECK(v->batch == batch, where, "v.batch (", v->batch, ") differs from the ", batch,
                   " sequence ids");
    HEADROOM_CHECK(v->seq == k.seq, where, "v.seq (", v->seq, ") differs from k.seq (", k.seq,
                   ")");
    HEADROOM_CHECK(v->heads == num_kv_heads, where, "v.heads (", v->heads,
                   ") differs from the cache's num_kv_heads (", num_kv_heads, ")");
    HEADROOM_CHECK(v->dim == head_dim_v, where, "v.dim (", v->dim,
                   ") differs from the cache's head_dim_v (", head_dim_v, ")");
  }
  if constexpr (!std::is_same_v<T, float>) {
    for (const TensorView<const float>* x : {&k, v}) {
      if (x == nullptr) continue;
      for (Index b = 0; b < x->batch; ++b) {
        for (Index s = 0; s < x->seq; ++s) {
          for (Index h = 0; h < x->heads; ++h) {
            for (Index d = 0; d < x->dim; ++d) {
              const float value = (*x)(b, s, h, d);
              HEADROOM_CHECK(is_storable<T>(value), where, x == &k ? "k" : "v", "[", b, ", ", s,
                             ", ", h, ", ", d, "] (", value, ") is outside the range of the ",
                             element_name<T>(), " cache (|x| <= ", storable_limit<T>(), ")");
            }
          }
        }
      }
    }
  }
}

/// Checks that an append brings values exactly when the cache stores them: a values_in_keys cache
/// takes keys alone, any other cache keys and values.
inline void check_append_kind(const char* where, bool values_in_keys, bool has_values) {
  HEADROOM_CHECK(!values_in_keys || !has_values, where,
                 "this cache keeps each value inside its key row (values_in_keys = true), so it "
                 "takes keys alone: call append(sequence_ids, k)");
  HEADROOM_CHECK(values_in_keys || has_values, where,
                 "append(sequence_ids, k) without values needs a cache with values_in_keys = "
                 "true; this one stores values: call append(sequence_ids, k, v)");
}

/// Checks head_dim_v against head_dim_k for a cache whose values live in its keys.
inline void check_values_in_keys(const char* where, bool values_in_keys, Index head_dim_k,
                                 Index head_dim_v) {
  HEADROOM_CHECK(!values_in_keys || head_dim_v <= head_dim_k, where, "head_dim_v (", head_dim_v,
                 ") exceeds head_dim_k (", head_dim_k,
                 "): with values_in_keys, a value is the first head_dim_v elements of its key");
}

/// Checks the sizes shared by every cache layout: positive heads and dims, and `rows_count` x
/// `rows_size` tokens (sequences x capacity, or blocks x block size) of num_kv_heads x
/// (head_dim_k + head_dim_v) elements of T addressable without overflowing Index.
template <class T>
void check_cache_layout(const char* where, Index num_kv_heads, Index head_dim_k,
                        Index head_dim_v, const char* count_name, Index count,
                        const char* size_name, Index size) {
  HEADROOM_CHECK(num_kv_heads > 0, where, "num_kv_heads (", num_kv_heads, ") must be positive");
  HEADROOM_CHECK(head_dim_k > 0, where, "head_dim_k (", head_dim_k, ") must be positive");
  HEADROOM_CHECK(head_dim_v > 0, where, "head_dim_v (", head_dim_v,
                 ") must be positive (or 0 for head_dim_k)");
  HEADROOM_CHECK(count > 0, where, count_name, " (", count, ") must be positive");
  HEADROOM_CHECK(size > 0, where, size_name, " (", size, ") must be positive");
  HEADROOM_CHECK(size <= std::numeric_limits<Index>::max() / count, where, count_name, " (",
                 count, ") x ", size_name, " (", size, ") overflows");
  // Each factor is bounded before it is multiplied, so no check itself overflows.
  const Index limit = std::numeric_limits<Index>::max() / static_cast<Index>(sizeof(T)) / 4;
  const bool dims_fit = head_dim_k <= limit && head_dim_v <= limit - head_dim_k &&
                        num_kv_heads <= limit / (head_dim_k + head_dim_v);
  HEADROOM_CHECK(dims_fit && count * size <= limit / (num_kv_heads * (head_dim_k + head_dim_v)),
                 where, count_name, " x ", size_name, " (", count * size, " tokens of ",
                 num_kv_heads, " heads x ", head_dim_k, "+", head_dim_v,
                 " dims) is too large to address");
}

/// Checks that sequence ids are distinct and each satisfies `exists`.
template <class Exists>
void check_sequence_ids(const char* where, const std::vector<Index>& ids, Exists&& exists) {
  for (size_t i = 0; i < ids.size(); ++i) {
    HEADROOM_CHECK(exists(ids[i]), where, "sequence id ", ids[i], " (at ", i,
                   ") does not exist in this cache");
    for (size_t j = 0; j < i; ++j) {
      HEADROOM_CHECK(ids[j] != ids[i], where, "sequence id ", ids[i], " appears twice (at ", j,
                     " and ", i, ")");
    }
  }
}

}  // namespace headroom::detail
