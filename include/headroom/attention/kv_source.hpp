// SPDX-License-Identifier: MIT
// Where the kernel reads keys and values from: the one interface behind dense tensors, contiguous
// caches, ring buffers and paged caches.
#pragma once

#include <cstdint>
#include <vector>

#include "headroom/core/element.hpp"
#include "headroom/core/error.hpp"
#include "headroom/core/tensor_view.hpp"

namespace headroom {

// A KV source is any type with these members (the kernel is a template over it):
//
//   using Element = ...;                       // float, Eigen::bfloat16, Eigen::half, std::int8_t
//   Index batch() const;                       // sequences
//   Index num_kv_heads() const, head_dim_k() const, head_dim_v() const;
//   Index max_kv_len() const;                  // upper bound of kv_len(b)
//   Index kv_len(Index b) const;               // keys of sequence b; queries are its last q_len
//   Index first_readable(Index b) const;       // keys before it are gone (ring buffers), else 0
//   const Element* k_row(Index b, Index j, Index h) const;  // key j of kv head h, head_dim_k long
//   const Element* v_row(Index b, Index j, Index h) const;  // its value, head_dim_v long
//   const float* k_scales(Index b, Index j, Index h) const; // int8 scale of key j, else null
//   const float* v_scales(Index b, Index j, Index h) const;
//   Index run_length(Index b, Index j) const;  // keys from j stored at the strides below (>= 1)
//   Index k_row_stride() const, v_row_stride() const;       // element step from key to key
//   Index k_dim_stride() const, v_dim_stride() const;       // element step along the head dim
//
// Within a run, key j + i sits at k_row(b, j, h) + i * k_row_stride() and its scale at
// k_scales(b, j, h) + i, so the kernel resolves a block table or a ring buffer once per run, not
// once per key. Caches store rows contiguously (dim stride 1); DenseKv takes any strides.

/// Keys and values in caller-owned dense tensors, [batch, kv_len, num_kv_heads, dim], any strides,
/// with optional per-sequence lengths.
/// \tparam T float, Eigen::bfloat16 or Eigen::half (int8 needs scales: use a cache).
template <class T>
struct DenseKv {
  static_assert(kIsKvElement<T> && !kHasScale<T>,
                "DenseKv holds float, bfloat16 or half; int8 keys need scales, use a KvCache.");
  using Element = T;

  TensorView<const T> k;       // [batch, kv_len, num_kv_heads, head_dim_k]
  TensorView<const T> v;       // [batch, kv_len, num_kv_heads, head_dim_v]
  std::vector<Index> kv_lens;  // [batch] or empty (every sequence has k.seq keys)

  Index batch() const { return k.batch; }
  Index num_kv_heads() const { return k.heads; }
  Index head_dim_k() const { return k.dim; }
  Index head_dim_v() const { return v.dim; }
  Index max_kv_len() const { return k.seq; }
  Index kv_len(Index b) const { return kv_lens.empty() ? k.seq : kv_lens[b]; }
  Index first_readable(Index) const { return 0; }
  const T* k_row(Index b, Index j, Index h) const { return k.row(b, j, h); }
  const T* v_row(Index b, Index j, Index h) const { return v.row(b, j, h); }
  const float* k_scales(Index, Index, Index) const { return nullptr; }
  const float* v_scales(Index, Index, Index) const { return nullptr; }
  Index run_length(Index, Index j) const { return k.seq - j; }
  Index k_row_stride() const { return k.seq_stride; }
  Index v_row_stride() const { return v.seq_stride; }
  Index k_dim_stride() const { return k.dim_stride; }
  Index v_dim_stride() const { return v.dim_stride; }

  /// Checks the views and lengths; throws headroom::Error naming the bad one.
  void validate(const char* where) const {
    detail::check_view(k, where, "k", false);
    detail::check_view(v, where, "v", false);
    HEADROOM_CHECK(v.batch == k.batch, where, "v.batch (", v.batch, ") differs from k.batch (",
                   k.batch, ")");
    HEADROOM_CHECK(v.seq == k.seq, where, "v.seq (", v.seq, ") differs from k.seq (", k.seq, ")");
    HEADROOM_CHECK(v.heads == k.heads, where, "v.heads (", v.heads, ") differs from k.heads (",
                   k.heads, ")");
    if (!kv_lens.empty()) {
      HEADROOM_CHECK(static_cast<Index>(kv_lens.size()) == k.batch, where, "kv_lens.size() (",
                     kv_lens.size(), ") differs from the batch (", k.batch, ")");
      for (size_t b = 0; b < kv_lens.size(); ++b) {
        HEADROOM_CHECK(kv_lens[b] >= 0 && kv_lens[b] <= k.seq, where, "kv_lens[", b, "] (",
                       kv_lens[b], ") is outside [0, k.seq = ", k.seq, "]");
      }
    }
  }
};

}  // namespace headroom
