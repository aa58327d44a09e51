// SPDX-License-Identifier: MIT
// kv_budget: the KV-cache budget of one model width under MHA, GQA, MQA and MLA, side by side:
// bytes per token and per 32k context (one layer), and measured decode steps per second.
//
//   ./kv_budget [context]      (default 32768 cached tokens)
//
// The width is DeepSeek-V2-Lite's: 16 query heads of head_dim 128 (hidden 2048). MHA keeps K and
// V per head, GQA shares them across groups (8 kv heads), MQA across all heads (1 kv head), and
// MLA caches one latent row [c_kv (512) | k_pe (64)] per token, which the absorbed attention reads
// as the key and, its first 512 elements, as the value. Caches are bf16; a decode step is one
// query token attending over the whole cache (attention alone, no projections), on every core.
#include <headroom/headroom.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <vector>

namespace {

using headroom::Index;
using Cache = headroom::KvCache<Eigen::bfloat16>;

struct Variant {
  const char* name;
  const char* layout;
  Index num_kv_heads, head_dim_k, head_dim_v;
  bool latent;
};

constexpr Index kHeads = 16;

/// Returns a cache of `context` random tokens; values shift per chunk so no two pages are equal.
std::unique_ptr<Cache> filled_cache(const headroom::KvCacheConfig& config, Index context,
                                    std::mt19937& rng) {
  auto cache = std::make_unique<Cache>(config);
  const Index chunk = std::min<Index>(1024, context);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> k(chunk * config.num_kv_heads * config.head_dim_k),
      v(chunk * config.num_kv_heads * config.head_dim_v);
  for (float& x : k) x = dist(rng);
  for (float& x : v) x = dist(rng);
  using View = headroom::TensorView<const float>;
  for (Index done = 0; done < context; done += chunk) {
    for (float& x : k) x += 1.0f / 1024.0f;
    const Index n = std::min(chunk, context - done);
    const View keys = View::bshd(k.data(), 1, n, config.num_kv_heads, config.head_dim_k);
    if (config.values_in_keys) {
      cache->append(0, keys);
    } else {
      cache->append(0, keys, View::bshd(v.data(), 1, n, config.num_kv_heads, config.head_dim_v));
    }
  }
  return cache;
}

}  // namespace

int main(int argc, char** argv) {
  const Index context = argc > 1 ? std::atol(argv[1]) : 32768;
  if (context <= 0) {
    std::fprintf(stderr, "usage: kv_budget [context > 0]\n");
    return 1;
  }
  const headroom::MlaConfig lite = headroom::MlaConfig::deepseek_v2_lite();
  const Variant variants[] = {
      {"MHA", "16 kv heads x (128 + 128)", kHeads, 128, 128, false},
      {"GQA", "8 kv heads x (128 + 128)", 8, 128, 128, false},
      {"MQA", "1 kv head x (128 + 128)", 1, 128, 128, false},
      {"MLA", "latent 512 + rope 64", 1, lite.latent_dim(), lite.kv_lora_rank, true},
  };
  std::printf("KV budget of one layer, 16 query heads x head_dim 128 (hidden 2048), bf16 cache,\n"
              "decode = 1 query token over %ld cached tokens, attention only, %d threads\n\n",
              static_cast<long>(context), headroom::default_num_threads());
  std::printf("| %-4s | %-26s | %10s | %12s | %8s | %10s |\n", "kind", "cached per token",
              "bytes/tok", "MiB per 32k", "vs MHA", "decode tok/s");
  std::printf("|------|----------------------------|-----------:|-------------:|---------:|-----------:|\n");
  double mha_bytes = 0.0;
  std::mt19937 rng(1);
  for (const Variant& variant : variants) {
    headroom::KvCacheConfig config{variant.num_kv_heads, variant.head_dim_k, variant.head_dim_v,
                                   1, context, false, variant.latent};
    // Caches below 128 MiB are replicated, one per layer, and the steps walk them in turn as a
    // model does, so every step reads DRAM where the last-level cache is well below 128 MiB (a
    // larger one serves part of each step; headroom_bench's BM_KvBudget sizes its copies from it).
    std::vector<std::unique_ptr<Cache>> layers;
    layers.push_back(filled_cache(config, context, rng));
    const Index cache_bytes = layers[0]->bytes_per_token() * context;
    const Index num_layers = std::max<Index>(1, ((Index{128} << 20) + cache_bytes - 1) / cache_bytes);
    while (static_cast<Index>(layers.size()) < num_layers) {
      layers.push_back(filled_cache(config, context, rng));
    }

    std::vector<float> q(kHeads * variant.head_dim_k, 0.01f), out(kHeads * variant.head_dim_v);
    headroom::AttentionOptions options;
    options.mask = headroom::Mask::causal();
    if (variant.latent) options.scale = static_cast<float>(lite.softmax_scale());
    const auto q_view =
        headroom::TensorView<const float>::bshd(q.data(), 1, 1, kHeads, variant.head_dim_k);
    const auto out_view =
        headroom::TensorView<float>::bshd(out.data(), 1, 1, kHeads, variant.head_dim_v);
    // Best of 5 rounds of a step per layer, after a warm-up round.
    double best = 1e30;
    for (int round = 0; round < 6; ++round) {
      const auto start = std::chrono::steady_clock::now();
      for (const auto& layer : layers) headroom::attend(q_view, layer->view({0}), out_view, options);
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (round > 0) best = std::min(best, seconds / static_cast<double>(layers.size()));
    }
    const double bytes = static_cast<double>(layers[0]->bytes_per_token());
    if (mha_bytes == 0.0) mha_bytes = bytes;
    std::printf("| %-4s | %-26s | %10.0f | %12.1f | %7.1fx | %10.0f |\n", variant.name,
                variant.layout, bytes, bytes * 32768.0 / (1 << 20), mha_bytes / bytes, 1.0 / best);
  }
  std::printf("\nMLA's row is one stored copy: the values are a view of the first 512 elements of\n"
              "each key row (KvCacheConfig::values_in_keys). Its decode is compute-bound (16 heads\n"
              "x (576 + 512) multiply-adds per cached token), the others bandwidth-bound.\n");
  return 0;
}
