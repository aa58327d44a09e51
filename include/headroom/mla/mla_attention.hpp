// SPDX-License-Identifier: MIT
// headroom::MlaAttention: one DeepSeek-V2 multi-head latent attention layer over a latent cache,
// computed by the expanded path (prefill) or the absorbed path (decode), both on headroom::attend.
//
// Read top to bottom: the options, the small steps (RMSNorm, reading latent rows back from the
// cache), then the layer: projections and RoPE, the cache append, and the two attention paths.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "headroom/attention/attend.hpp"
#include "headroom/attention/merge.hpp"
#include "headroom/attention/options.hpp"
#include "headroom/cache/kv_cache.hpp"
#include "headroom/cache/paged_kv_cache.hpp"
#include "headroom/core/error.hpp"
#include "headroom/core/tensor_view.hpp"
#include "headroom/mla/latent_cache.hpp"
#include "headroom/mla/mla_config.hpp"
#include "headroom/mla/mla_cost.hpp"
#include "headroom/mla/mla_weights.hpp"
#include "headroom/position/rope.hpp"

namespace headroom {

/// Which form of MLA computes the attention; both give the same result up to rounding.
enum class MlaMode {
  /// The form with fewer FLOPs for the call (mla_expanded_flops against mla_absorbed_flops, summed
  /// over the sequences). Per cached key and head, expanded pays a fixed up-projection
  /// (2 x kv_lora_rank x (d_nope + d_v) = 262144 FLOPs at DeepSeek-V2's dims) plus 2 x (d_nope +
  /// d_rope + d_v) = 640 per query, absorbed 2 x (2 x kv_lora_rank + d_rope) = 2176 per query.
  /// So with q_len new tokens after kv_len cached ones, absorbed wins while q_len < about
  /// 262144 / 1536 = 170 (for kv_len >> q_len): decode, speculative verification and short
  /// chunks go absorbed, and a prompt (q_len == kv_len, where both pay the same per-query
  /// absorption) goes expanded.
  kAutomatic,
  /// Up-projects the cached latents to per-head keys [k_nope | k_pe] and values, then MHA with
  /// head_dim_k = d_nope + d_rope, head_dim_v = d_v: the compute-efficient form for prefill.
  kExpanded,
  /// Folds W_UK into the queries and W_UV into the outputs, then MQA straight over the latent
  /// cache with head_dim_k = kv_lora_rank + d_rope, head_dim_v = kv_lora_rank: every head shares
  /// one pass over the cache, the bandwidth-efficient form for decode.
  kAbsorbed,
};

/// What a call to MlaAttention::forward may ask for beyond its tensors.
struct MlaOptions {
  MlaMode mode = MlaMode::kAutomatic;
  /// RoPE position ids of the new tokens, [batch, q_len]; unset (null data) means each sequence's
  /// cache length before the call plus s. They set the rotation only: a query sees the keys the
  /// cache holds up to its own (the new tokens are the last q_len of each sequence).
  PositionView positions;
  /// Cached tokens the expanded path up-projects at once; each chunk's partial attention is merged
  /// into the result by its LSE, so prefill memory stays bounded. 0 chooses about 64 MiB of
  /// expanded keys and values per chunk (2304 tokens at DeepSeek-V2-Lite's 16 heads).
  Index expanded_chunk = 0;
  /// Threads for the attention kernel; 0 means default_num_threads(). The projections are Eigen
  /// products and use Eigen's own setting (Eigen::setNbThreads).
  int num_threads = 0;
};

namespace detail {

/// Row-major f32 activations, [tokens, features].
using MlaRows = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Normalises the first `dim` columns of each row of x in place: x * weight / sqrt(mean(x^2) +
/// eps), the mean taken in double. Source: modeling_deepseek.py, DeepseekV2RMSNorm.forward.
inline void rms_norm_rows(MlaRows& x, Index dim, const Eigen::VectorXf& weight, double eps) {
  for (Index t = 0; t < x.rows(); ++t) {
    float* row = x.row(t).data();
    double sum = 0.0;
    for (Index d = 0; d < dim; ++d) sum += static_cast<double>(row[d]) * row[d];
    const float inv = static_cast<float>(1.0 / std::sqrt(sum / static_cast<double>(dim) + eps));
    for (Index d = 0; d < dim; ++d) row[d] = weight[d] * (row[d] * inv);
  }
}

/// Converts the cached rows [j0, j1) of sequence b of a latent-cache view to f32 (int8 rows times
/// their scale) into dst [j1 - j0, head_dim_k], row-major.
template <class Source>
void read_latent_rows(const Source& view, Index b, Index j0, Index j1, float* dst) {
  const Index dim = view.head_dim_k();
  for (Index j = j0; j < j1;) {
    const Index run = std::min(j1 - j, view.run_length(b, j));
    const auto* rows = view.k_row(b, j, 0);
    const float* scales = view.k_scales(b, j, 0);
    for (Index i = 0; i < run; ++i) {
      const auto* row = rows + i * view.k_row_stride();
      const float scale = scales != nullptr ? scales[i] : 1.0f;
      float* out = dst + (j - j0 + i) * dim;
      for (Index d = 0; d < dim; ++d) out[d] = scale * static_cast<float>(row[d]);
    }
    j += run;
  }
}

/// Views `rows` [batch * seq, heads * dim] (row-major, columns [offset, offset + heads * stride)
/// used) as [batch, seq, heads, dim] with heads `head_stride` apart.
template <class T>
TensorView<T> rows_view(T* data, Index batch, Index seq, Index heads, Index dim,
                        Index row_stride, Index head_stride) {
  return {data, batch, seq, heads, dim, seq * row_stride, row_stride, head_stride, 1};
}

inline bool is_ring_buffer(const KvCacheConfig& config) { return config.ring_buffer; }
inline bool is_ring_buffer(const PagedKvCacheConfig&) { return false; }

}  // namespace detail

/// One DeepSeek-V2 attention layer (DeepSeek-V2, arXiv:2405.04434, section 2.1 and appendix C;
/// modeling_deepseek.py DeepseekV2Attention): for new tokens x,
///
///   q      = q_b_proj(RMSNorm(q_a_proj(x)))  or  q_proj(x)      per head [q_nope | q_pe]
///   [c, p] = kv_a_proj_with_mqa(x);  c_kv = RMSNorm(c);  k_pe = RoPE(p)   (the norm skips k_pe)
///   cache <- [c_kv | k_pe]                                            (one row per token)
///   k_h = [c_kv . W_UK_h^T | k_pe],  v_h = c_kv . W_UV_h^T             (W_UK_h, W_UV_h: kv_b_proj)
///   o_h = softmax(softmax_scale * RoPE(q_pe) . k_pe + q_nope . k_nope) . v_h,  out = o_proj(o)
///
/// The expanded path materialises k_h and v_h from the cache; the absorbed path uses
/// q_nope . (c_kv W_UK_h^T) = (q_nope W_UK_h) . c_kv to attend over [c_kv | k_pe] directly, and
/// o_h = (softmax . c_kv) W_UV_h^T. Both call headroom::attend; see MlaMode.
class MlaAttention {
 public:
  /// Takes the layer's config and weights; throws headroom::Error if either is invalid.
  MlaAttention(const MlaConfig& config, MlaWeights weights)
      : config_(validated(config)), weights_(validated(config_, std::move(weights))),
        rope_(config_.rope_config()),
        softmax_scale_(static_cast<float>(config_.softmax_scale())) {}

  const MlaConfig& config() const { return config_; }
  const MlaWeights& weights() const { return weights_; }
  /// Returns the RoPE table of the qk_rope_head_dim dims (interleaved, DeepSeek's YaRN).
  const RopeTable& rope() const { return rope_; }
  /// Returns the scale both paths pass to attend (MlaConfig::softmax_scale).
  float softmax_scale() const { return softmax_scale_; }

  /// Returns the path kAutomatic takes for q_len new tokens in sequences that then hold
  /// kv_lens[b] tokens: the one with fewer FLOPs (see MlaMode).
  static MlaMode choose_mode(const MlaConfig& config, Index q_len,
                             const std::vector<Index>& kv_lens) {
    double expanded = 0.0, absorbed = 0.0;
    for (Index kv_len : kv_lens) {
      expanded += mla_expanded_flops(config, q_len, kv_len);
      absorbed += mla_absorbed_flops(config, q_len, kv_len);
    }
    return absorbed < expanded ? MlaMode::kAbsorbed : MlaMode::kExpanded;
  }

  /// Runs the layer on q_len new tokens of each sequence in `sequence_ids`: appends their latents
  /// [c_kv | k_pe] to the cache, then attends causally over everything the sequence has cached.
  /// All or nothing: a call that throws headroom::Error leaves the cache and `out` unchanged.
  ///
  ///   hidden: [sequence_ids.size(), q_len, 1, hidden_size]   any strides
  ///   cache:  a latent cache (latent_cache_config); not a ring buffer: MLA sees every token
  ///   out:    [sequence_ids.size(), q_len, 1, hidden_size]   may alias hidden
  /// \tparam T the cache's element type: float, Eigen::bfloat16, Eigen::half or std::int8_t.
  template <class T>
  void forward(TensorView<const float> hidden, KvCache<T>& cache,
               const std::vector<Index>& sequence_ids, TensorView<float> out,
               const MlaOptions& options = {}) const {
    run(hidden, cache, sequence_ids, out, options);
  }

  /// The same over a paged latent cache (paged_latent_cache_config).
  template <class T>
  void forward(TensorView<const float> hidden, PagedKvCache<T>& cache,
               const std::vector<Index>& sequence_ids, TensorView<float> out,
               const MlaOptions& options = {}) const {
    run(hidden, cache, sequence_ids, out, options);
  }

 private:
  using Rows = detail::MlaRows;
  static constexpr const char* kWhere = "MlaAttention::forward";
  /// Expanded keys and values per chunk when MlaOptions::expanded_chunk is 0.
  static constexpr Index kExpandedChunkBytes = Index{64} << 20;

  static MlaConfig validated(const MlaConfig& config) {
    config.validate();
    return config;
  }
  static MlaWeights validated(const MlaConfig& config, MlaWeights weights) {
    weights.validate(config);
    return weights;
  }

  /// Checks every argument of forward before anything is computed.
  template <class Cache>
  void validate_forward(const TensorView<const float>& hidden, const Cache& cache,
                        const std::vector<Index>& ids, const TensorView<float>& out,
                        const MlaOptions& options) const {
    const Index hidden_size = config_.hidden_size;
    detail::check_view(hidden, kWhere, "hidden", false);
    detail::check_view(out, kWhere, "out", true);
    HEADROOM_CHECK(hidden.heads == 1 && hidden.dim == hidden_size, kWhere, "hidden is [",
                   hidden.batch, ", ", hidden.seq, ", ", hidden.heads, ", ", hidden.dim,
                   "] but must be [batch, q_len, 1, hidden_size (", hidden_size, ")]");
    HEADROOM_CHECK(out.batch == hidden.batch && out.seq == hidden.seq && out.heads == 1 &&
                       out.dim == hidden_size,
                   kWhere, "out is [", out.batch, ", ", out.seq, ", ", out.heads, ", ", out.dim,
                   "] but must be [", hidden.batch, ", ", hidden.seq, ", 1, ", hidden_size,
                   "] like hidden");
    HEADROOM_CHECK(static_cast<Index>(ids.size()) == hidden.batch, kWhere, "sequence_ids has ",
                   ids.size(), " entries but hidden.batch is ", hidden.batch);
    detail::check_sequence_ids(kWhere, ids, [&](Index id) { return cache.has_sequence(id); });
    detail::check_latent_cache(kWhere, cache.config(), config_);
    HEADROOM_CHECK(!detail::is_ring_buffer(cache.config()), kWhere,
                   "the cache is a ring buffer, but MLA attends to every cached token");
    HEADROOM_CHECK(options.mode == MlaMode::kAutomatic || options.mode == MlaMode::kExpanded ||
                       options.mode == MlaMode::kAbsorbed,
                   kWhere, "options.mode (", static_cast<int>(options.mode),
                   ") is not an MlaMode");
    HEADROOM_CHECK(options.expanded_chunk >= 0, kWhere, "options.expanded_chunk (",
                   options.expanded_chunk, ") must be >= 0 (0 chooses)");
    HEADROOM_CHECK(options.num_threads >= 0, kWhere, "options.num_threads (",
                   options.num_threads, ") must be >= 0 (0 means the default)");
    if (options.positions.data != nullptr) {
      HEADROOM_CHECK(options.positions.batch == hidden.batch && options.positions.seq == hidden.seq,
                     kWhere, "options.positions is [", options.positions.batch, ", ",
                     options.positions.seq, "] but must be [batch ", hidden.batch, ", q_len ",
                     hidden.seq, "]");
      detail::check_position_ids(rope_, options.positions, kWhere);
    } else {
      for (Index id : ids) {
        HEADROOM_CHECK(cache.length(id) + hidden.seq <= rope_.max_positions(), kWhere,
                       "sequence ", id, " reaches position ", cache.length(id) + hidden.seq - 1,
                       " but the RoPE table covers max_position_embeddings (",
                       rope_.max_positions(), ") positions");
      }
    }
  }

  template <class Cache>
  void run(const TensorView<const float>& hidden, Cache& cache, const std::vector<Index>& ids,
           const TensorView<float>& out, const MlaOptions& options) const {
    validate_forward(hidden, cache, ids, out, options);
    const Index batch = hidden.batch, q_len = hidden.seq, tokens = batch * q_len;
    if (tokens == 0) return;
    const Index heads = config_.num_attention_heads, rank = config_.kv_lora_rank;
    const Index nope = config_.qk_nope_head_dim, rope = config_.qk_rope_head_dim;
    const Index q_dim = config_.q_head_dim(), latent_dim = config_.latent_dim();

    // x: [tokens, hidden_size], token t = b * q_len + s.
    Rows x(tokens, config_.hidden_size);
    for (Index b = 0; b < batch; ++b) {
      for (Index s = 0; s < q_len; ++s) {
        const float* row = hidden.row(b, s, 0);
        for (Index d = 0; d < x.cols(); ++d) x(b * q_len + s, d) = row[d * hidden.dim_stride];
      }
    }

    // q: [tokens, heads * q_dim], per head [q_nope | q_pe].
    Rows q;
    if (config_.q_lora_rank > 0) {
      Rows compressed = x * weights_.q_a_proj.transpose();  // [tokens, q_lora_rank]
      detail::rms_norm_rows(compressed, config_.q_lora_rank, weights_.q_a_layernorm,
                            config_.rms_norm_eps);
      q.noalias() = compressed * weights_.q_b_proj.transpose();
    } else {
      q.noalias() = x * weights_.q_proj.transpose();
    }
    // latent: [tokens, kv_lora_rank + rope], [c_kv | k_pe]; the norm covers c_kv only.
    Rows latent = x * weights_.kv_a_proj_with_mqa.transpose();
    detail::rms_norm_rows(latent, rank, weights_.kv_a_layernorm, config_.rms_norm_eps);

    // RoPE on q_pe (every head) and k_pe (shared), at the given or the cache's positions.
    std::vector<Index> own_positions;
    PositionView positions = options.positions;
    if (positions.data == nullptr) {
      own_positions.resize(static_cast<size_t>(tokens));
      for (Index b = 0; b < batch; ++b) {
        for (Index s = 0; s < q_len; ++s) own_positions[b * q_len + s] = cache.length(ids[b]) + s;
      }
      positions = PositionView::bs(own_positions.data(), batch, q_len);
    }
    apply_rope(rope_, detail::rows_view(q.data() + nope, batch, q_len, heads, rope, heads * q_dim, q_dim),
               detail::rows_view(latent.data() + rank, batch, q_len, 1, rope, latent_dim, latent_dim),
               positions);

    // A latent the cache cannot store (NaN or beyond the range of f16, bf16 or int8) comes from
    // `hidden`: said so here, rather than by the cache of a tensor the caller never passed.
    using Element = typename Cache::Element;
    for (Index t = 0; t < tokens; ++t) {
      for (Index d = 0; d < latent_dim; ++d) {
        HEADROOM_CHECK(detail::is_storable<Element>(latent(t, d)), kWhere, "hidden[", t / q_len,
                       ", ", t % q_len, "] gives a latent whose element ", d, " (", latent(t, d),
                       ") is outside the range of the ", element_name<Element>(),
                       " cache (|x| <= ", detail::storable_limit<Element>(), ")");
      }
    }
    // The only state change: all or nothing (capacity, pool, f16 / int8 range checked first).
    cache.append(ids, detail::rows_view<const float>(latent.data(), batch, q_len, 1, latent_dim,
                                                     latent_dim, latent_dim));

    std::vector<Index> kv_lens;
    for (Index id : ids) kv_lens.push_back(cache.length(id));
    const MlaMode mode =
        options.mode == MlaMode::kAutomatic ? choose_mode(config_, q_len, kv_lens) : options.mode;
    Rows attention(tokens, heads * config_.v_head_dim);  // [tokens, heads * v_head_dim]
    if (mode == MlaMode::kAbsorbed) {
      attend_absorbed(q, cache.view(ids), batch, q_len, options, attention);
    } else {
      for (Index b = 0; b < batch; ++b) {
        attend_expanded(q, cache.view({ids[b]}), b, q_len, options, attention);
      }
    }

    const Rows result = attention * weights_.o_proj.transpose();  // [tokens, hidden_size]
    for (Index b = 0; b < batch; ++b) {
      for (Index s = 0; s < q_len; ++s) {
        float* row = out.row(b, s, 0);
        for (Index d = 0; d < result.cols(); ++d) row[d * out.dim_stride] = result(b * q_len + s, d);
      }
    }
  }

  /// The absorbed path: q_latent_h = [q_nope_h W_UK_h | q_pe_h], MQA over the cache's
  /// [c_kv | k_pe] rows with c_kv as the value, then W_UV_h on each head's output.
  template <class Source>
  void attend_absorbed(const Rows& q, const Source& cache_view, Index batch, Index q_len,
                       const MlaOptions& options, Rows& attention) const {
    const Index heads = config_.num_attention_heads, rank = config_.kv_lora_rank;
    const Index nope = config_.qk_nope_head_dim, rope = config_.qk_rope_head_dim;
    const Index v_dim = config_.v_head_dim, q_dim = config_.q_head_dim();
    const Index latent_dim = config_.latent_dim(), tokens = batch * q_len;
    const Rows& kv_b = weights_.kv_b_proj;

    Rows q_latent(tokens, heads * latent_dim);  // [tokens, heads, kv_lora_rank + rope]
    for (Index h = 0; h < heads; ++h) {
      const auto w_uk = kv_b.middleRows(h * (nope + v_dim), nope);  // [nope, kv_lora_rank]
      q_latent.middleCols(h * latent_dim, rank).noalias() = q.middleCols(h * q_dim, nope) * w_uk;
      q_latent.middleCols(h * latent_dim + rank, rope) = q.middleCols(h * q_dim + nope, rope);
    }
    Rows latent_out(tokens, heads * rank);  // [tokens, heads, kv_lora_rank]
    AttentionOptions attention_options;
    attention_options.mask = Mask::causal();
    attention_options.scale = softmax_scale_;
    attention_options.num_threads = options.num_threads;
    attend(detail::rows_view<const float>(q_latent.data(), batch, q_len, heads, latent_dim,
                                          heads * latent_dim, latent_dim),
           cache_view,
           detail::rows_view(latent_out.data(), batch, q_len, heads, rank, heads * rank, rank),
           attention_options);
    for (Index h = 0; h < heads; ++h) {
      const auto w_uv = kv_b.middleRows(h * (nope + v_dim) + nope, v_dim);  // [v, kv_lora_rank]
      attention.middleCols(h * v_dim, v_dim).noalias() =
          latent_out.middleCols(h * rank, rank) * w_uv.transpose();
    }
  }

  /// The expanded path for sequence b (the view's only sequence): the cached latents are read
  /// back and up-projected chunk by chunk to K = [k_nope | k_pe] and V per head, attended as MHA,
  /// and the chunks' partial results merged by their LSE. For a chunk of keys [j0, j1), queries
  /// at positions in [j0, j1) are its last positions (a causal call), and later queries see the
  /// whole chunk (an unmasked call).
  template <class Source>
  void attend_expanded(const Rows& q, const Source& cache_view, Index b, Index q_len,
                       const MlaOptions& options, Rows& attention) const {
    const Index heads = config_.num_attention_heads, rank = config_.kv_lora_rank;
    const Index nope = config_.qk_nope_head_dim, rope = config_.qk_rope_head_dim;
    const Index v_dim = config_.v_head_dim, q_dim = config_.q_head_dim();
    const Index latent_dim = config_.latent_dim(), kv_dim = nope + v_dim;
    const Index kv_len = cache_view.kv_len(0);
    const Index first_position = kv_len - q_len;
    const Index per_key_bytes =
        static_cast<Index>(sizeof(float)) * (heads * (kv_dim + q_dim) + latent_dim);
    const Index chunk = std::min(
        kv_len, options.expanded_chunk > 0
                    ? options.expanded_chunk
                    : std::max<Index>(64, kExpandedChunkBytes / per_key_bytes / 64 * 64));

    Rows latent(chunk, latent_dim);           // [chunk, kv_lora_rank + rope], read back
    Rows kv(chunk, heads * kv_dim);           // [chunk, heads, nope + v]: k_nope and v
    Rows keys(chunk, heads * q_dim);          // [chunk, heads, nope + rope]
    const float* q_b = q.data() + b * q_len * heads * q_dim;
    float* out_b = attention.data() + b * q_len * heads * v_dim;
    const auto q_rows = [&](Index i0, Index i1) {
      return detail::rows_view<const float>(q_b + i0 * heads * q_dim, 1, i1 - i0, heads, q_dim,
                                            heads * q_dim, q_dim);
    };
    const auto out_rows = [&](float* base, Index i0, Index i1) {
      return detail::rows_view(base + i0 * heads * v_dim, 1, i1 - i0, heads, v_dim,
                               heads * v_dim, v_dim);
    };

    // Partial results when there is more than one chunk: out_b and lse accumulate, starting from
    // "no key seen" (LSE -inf merges with weight 0).
    const bool chunked = chunk < kv_len;
    std::vector<float> lse, part_lse, part_out;
    if (chunked) {
      std::fill(out_b, out_b + q_len * heads * v_dim, 0.0f);
      lse.assign(static_cast<size_t>(heads * q_len), -std::numeric_limits<float>::infinity());
      part_lse.resize(static_cast<size_t>(heads * q_len));
      part_out.resize(static_cast<size_t>(q_len * heads * v_dim));
    }
    const auto lse_rows = [&](std::vector<float>& values, Index i0, Index i1) {
      return LseView{values.data() + i0, 1, heads, i1 - i0, heads * q_len, q_len, 1};
    };

    for (Index j0 = 0; j0 < kv_len; j0 += chunk) {
      const Index j1 = std::min(kv_len, j0 + chunk), count = j1 - j0;
      detail::read_latent_rows(cache_view, 0, j0, j1, latent.data());
      kv.topRows(count).noalias() =
          latent.topLeftCorner(count, rank) * weights_.kv_b_proj.transpose();
      for (Index t = 0; t < count; ++t) {
        for (Index h = 0; h < heads; ++h) {
          float* key = keys.row(t).data() + h * q_dim;
          std::copy_n(kv.row(t).data() + h * kv_dim, nope, key);
          std::copy_n(latent.row(t).data() + rank, rope, key + nope);  // k_pe, shared by heads
        }
      }
      const auto k_view = detail::rows_view<const float>(keys.data(), 1, count, heads, q_dim,
                                                         heads * q_dim, q_dim);
      const auto v_view = detail::rows_view<const float>(kv.data() + nope, 1, count, heads, v_dim,
                                                         heads * kv_dim, kv_dim);
      // Query rows [i0, i1) against this chunk, causal (queries inside it) or unmasked (after it).
      const auto attend_rows = [&](Index i0, Index i1, const Mask& mask) {
        if (i0 >= i1) return;
        AttentionOptions attention_options;
        attention_options.mask = mask;
        attention_options.scale = softmax_scale_;
        attention_options.num_threads = options.num_threads;
        if (!chunked) {
          attend(q_rows(i0, i1), k_view, v_view, out_rows(out_b, i0, i1), attention_options);
          return;
        }
        attention_options.lse = lse_rows(part_lse, i0, i1);
        attend(q_rows(i0, i1), k_view, v_view, out_rows(part_out.data(), i0, i1),
               attention_options);
        merge_attention(out_rows(out_b, i0, i1), lse_rows(lse, i0, i1),
                        out_rows(part_out.data(), i0, i1), lse_rows(part_lse, i0, i1),
                        out_rows(out_b, i0, i1), lse_rows(lse, i0, i1));
      };
      const Index inside_begin = std::max(j0, first_position) - first_position;
      const Index after_begin = std::clamp<Index>(j1 - first_position, 0, q_len);
      attend_rows(std::min(inside_begin, after_begin), after_begin, Mask::causal());
      attend_rows(after_begin, q_len, Mask::none());
    }
  }

  MlaConfig config_;
  MlaWeights weights_;
  RopeTable rope_;
  float softmax_scale_;
};

}  // namespace headroom
