// SPDX-License-Identifier: MIT
// Runs every attention variant headroom offers on a default problem, checks sampled rows against a
// straightforward double-precision computation, and prints errors and timings.
#include <headroom/headroom.hpp>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace {

using headroom::Index;

struct Variant {
  std::string name;
  Index num_heads, num_kv_heads, head_dim_k, head_dim_v;
  headroom::Mask mask;
  float softcap = 0.0f;
};

/// Returns out[b=0, i, h, :] computed the obvious way, in double, for checking the kernel.
std::vector<double> exact_row(const headroom::TensorView<const float>& q,
                              const headroom::TensorView<const float>& k,
                              const headroom::TensorView<const float>& v, const Variant& variant,
                              Index i, Index h) {
  const Index kv_head = h / (variant.num_heads / variant.num_kv_heads);
  const Index pos = k.seq - q.seq + i;
  const double scale = 1.0 / std::sqrt(static_cast<double>(variant.head_dim_k));
  std::vector<double> weights(k.seq, 0.0), out(variant.head_dim_v, 0.0);
  double max_logit = -INFINITY, sum = 0.0;
  for (Index j = 0; j < k.seq; ++j) {
    const bool causal = variant.mask.kind != headroom::MaskKind::kNone;
    const bool windowed = variant.mask.kind == headroom::MaskKind::kSlidingWindow;
    if ((causal && j > pos) || (windowed && pos - j >= variant.mask.window)) continue;
    double logit = 0.0;
    for (Index d = 0; d < q.dim; ++d) logit += double{q(0, i, h, d)} * k(0, j, kv_head, d);
    logit *= scale;
    if (variant.softcap > 0) logit = variant.softcap * std::tanh(logit / variant.softcap);
    weights[j] = logit;
    max_logit = std::max(max_logit, logit);
  }
  for (Index j = 0; j < k.seq; ++j) {
    const bool causal = variant.mask.kind != headroom::MaskKind::kNone;
    const bool windowed = variant.mask.kind == headroom::MaskKind::kSlidingWindow;
    if ((causal && j > pos) || (windowed && pos - j >= variant.mask.window)) continue;
    const double p = std::exp(weights[j] - max_logit);
    sum += p;
    for (Index d = 0; d < variant.head_dim_v; ++d) out[d] += p * v(0, j, kv_head, d);
  }
  for (double& x : out) x /= sum;
  return out;
}

/// Fills a cache of element type T (contiguous, or paged when Cache is PagedKvCache) with the
/// given keys and values, decodes one query against it, and prints the step time and the largest
/// difference from the f32 result `reference`.
template <class Cache>
bool decode_through(const char* name, Cache& cache, Index sequence,
                    const headroom::TensorView<const float>& k,
                    const headroom::TensorView<const float>& v,
                    const headroom::TensorView<const float>& q, const std::vector<float>& reference,
                    double tolerance) {
  cache.append(sequence, k, v);
  std::vector<float> out(reference.size());
  const auto out_view = headroom::TensorView<float>::bshd(out.data(), 1, 1, q.heads, v.dim);
  headroom::AttentionOptions options;
  options.mask = headroom::Mask::causal();
  headroom::attend(q, cache.view({sequence}), out_view, options);  // warm-up
  const auto start = std::chrono::steady_clock::now();
  headroom::attend(q, cache.view({sequence}), out_view, options);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double max_error = 0.0;
  for (size_t i = 0; i < out.size(); ++i) {
    max_error = std::max(max_error, static_cast<double>(std::abs(out[i] - reference[i])));
  }
  const bool ok = max_error < tolerance;
  std::printf("%-34s %10.3f %10.1f %12.2e %s\n", name, seconds * 1e3,
              static_cast<double>(cache.bytes_per_token() * k.seq) / seconds * 1e-9, max_error,
              ok ? "ok" : "MISMATCH");
  return ok;
}

/// Decodes one token of GQA 32/8 over 8192 cached tokens in each cache layout and element type,
/// against dense f32 attention over the same keys.
bool decode_demo() {
  const Index tokens = 8192, heads = 32, kv_heads = 8, dim = 128;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> k(tokens * kv_heads * dim), v(k.size()), q(heads * dim), reference(q.size());
  for (auto* buffer : {&k, &v, &q}) {
    for (float& x : *buffer) x = uniform(rng);
  }
  using View = headroom::TensorView<const float>;
  const View k_view = View::bshd(k.data(), 1, tokens, kv_heads, dim);
  const View v_view = View::bshd(v.data(), 1, tokens, kv_heads, dim);
  const View q_view = View::bshd(q.data(), 1, 1, heads, dim);
  headroom::AttentionOptions options;
  options.mask = headroom::Mask::causal();
  headroom::attend(q_view, k_view, v_view,
                   headroom::TensorView<float>::bshd(reference.data(), 1, 1, heads, dim), options);

  std::printf("\ndecode one token: GQA 32/8, D 128, %td cached tokens, error against f32\n", tokens);
  std::printf("%-34s %10s %10s %12s\n", "cache", "ms", "GB/s", "max error");
  const headroom::KvCacheConfig config{kv_heads, dim, dim, 1, tokens, false};
  const headroom::PagedKvCacheConfig paged{kv_heads, dim, dim, 16, tokens / 16};
  headroom::KvCache<float> f32(config);
  headroom::KvCache<Eigen::bfloat16> bf16(config);
  headroom::KvCache<std::int8_t> int8(config);
  headroom::PagedKvCache<Eigen::bfloat16> paged_bf16(paged);
  const Index paged_sequence = paged_bf16.add_sequence();
  // Tolerances: f32 reorders sums only; bf16 and int8 round every key and value (see
  // tests/cache/kv_cache_test.cpp for the bounds).
  bool ok = decode_through("contiguous f32", f32, 0, k_view, v_view, q_view, reference, 1e-5);
  ok &= decode_through("contiguous bf16", bf16, 0, k_view, v_view, q_view, reference, 1e-2);
  ok &= decode_through("contiguous int8", int8, 0, k_view, v_view, q_view, reference, 2e-2);
  ok &= decode_through("paged bf16 (16-token blocks)", paged_bf16, paged_sequence, k_view, v_view,
                       q_view, reference, 1e-2);
  return ok;
}

}  // namespace

int main() {
  const Index seq_len = 1024;
  const Variant variants[] = {
      {"MHA 32/32, causal", 32, 32, 128, 128, headroom::Mask::causal()},
      {"GQA 32/8, causal", 32, 8, 128, 128, headroom::Mask::causal()},
      {"MQA 32/1, causal", 32, 1, 128, 128, headroom::Mask::causal()},
      {"GQA 32/8, sliding window 256", 32, 8, 128, 128, headroom::Mask::sliding_window(256)},
      {"GQA 16/8, D 256, soft-cap 50", 16, 8, 256, 256, headroom::Mask::causal(), 50.0f},
      {"MLA-absorbed 16/1, Dk 576 Dv 512", 16, 1, 576, 512, headroom::Mask::causal()},
      {"bidirectional MHA 12/12, D 64", 12, 12, 64, 64, headroom::Mask::none()},
  };
  std::printf("headroom %d.%d.%d quickstart: seq_len %td, %d threads\n\n", HEADROOM_VERSION_MAJOR,
              HEADROOM_VERSION_MINOR, HEADROOM_VERSION_PATCH, seq_len,
              headroom::default_num_threads());
  std::printf("%-34s %10s %10s %12s\n", "variant", "ms", "GFLOP/s", "max error");
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  bool all_ok = true;
  for (const Variant& variant : variants) {
    // [1, seq_len, heads, dim] buffers, as a model's projections would produce them.
    std::vector<float> q(seq_len * variant.num_heads * variant.head_dim_k);
    std::vector<float> k(seq_len * variant.num_kv_heads * variant.head_dim_k);
    std::vector<float> v(seq_len * variant.num_kv_heads * variant.head_dim_v);
    std::vector<float> out(seq_len * variant.num_heads * variant.head_dim_v);
    for (auto* buffer : {&q, &k, &v}) {
      for (float& x : *buffer) x = uniform(rng);
    }
    using View = headroom::TensorView<const float>;
    const View q_view = View::bshd(q.data(), 1, seq_len, variant.num_heads, variant.head_dim_k);
    const View k_view = View::bshd(k.data(), 1, seq_len, variant.num_kv_heads, variant.head_dim_k);
    const View v_view = View::bshd(v.data(), 1, seq_len, variant.num_kv_heads, variant.head_dim_v);
    const auto out_view = headroom::TensorView<float>::bshd(out.data(), 1, seq_len,
                                                            variant.num_heads, variant.head_dim_v);
    headroom::AttentionOptions options;
    options.mask = variant.mask;
    options.softcap = variant.softcap;

    headroom::attend(q_view, k_view, v_view, out_view, options);  // warm-up
    const auto start = std::chrono::steady_clock::now();
    headroom::attend(q_view, k_view, v_view, out_view, options);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double flops = headroom::attention_flops(1, variant.num_heads, seq_len, seq_len,
                                                   variant.head_dim_k, variant.head_dim_v,
                                                   variant.mask);
    double max_error = 0.0;
    for (Index i : {Index{0}, Index{1}, seq_len / 3, seq_len - 1}) {
      for (Index h : {Index{0}, variant.num_heads - 1}) {
        const std::vector<double> expected = exact_row(q_view, k_view, v_view, variant, i, h);
        for (Index d = 0; d < variant.head_dim_v; ++d) {
          max_error = std::max(max_error, std::abs(out_view(0, i, h, d) - expected[d]));
        }
      }
    }
    const bool ok = max_error < 1e-5;
    all_ok = all_ok && ok;
    std::printf("%-34s %10.2f %10.1f %12.2e %s\n", variant.name.c_str(), seconds * 1e3,
                flops / seconds * 1e-9, max_error, ok ? "ok" : "MISMATCH");
  }
  all_ok &= decode_demo();
  std::printf("\n%s\n", all_ok ? "all variants match their checks" : "some variants do not match");
  return all_ok ? 0 : 1;
}
