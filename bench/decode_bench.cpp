// SPDX-License-Identifier: MIT
// Decode benchmarks: one query token per step over a long KV cache, per element type and head
// layout, against the roofline of this machine (the larger of the FLOP floor and the byte floor).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "headroom/attention/attend.hpp"
#include "headroom/attention/cost.hpp"
#include "headroom/cache/kv_cache.hpp"
#include "roofline.hpp"

namespace headroom::bench {
namespace {

/// Fills a cache with `length` tokens of random keys and values, 1024 tokens per append.
template <class T>
std::unique_ptr<KvCache<T>> filled_cache(Index num_kv_heads, Index head_dim, Index length,
                                         std::mt19937& rng) {
  auto cache = std::make_unique<KvCache<T>>(
      KvCacheConfig{num_kv_heads, head_dim, head_dim, 1, length, false});
  const Index chunk = std::min<Index>(1024, length);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> data(chunk * num_kv_heads * head_dim);
  for (float& x : data) x = dist(rng);
  const auto view = TensorView<const float>::bshd(data.data(), 1, chunk, num_kv_heads, head_dim);
  for (Index done = 0; done < length; done += chunk) {
    // Shifts every chunk so no two pages of the cache hold the same bytes (the host may merge
    // identical pages, and decode would then read a cache instead of DRAM).
    for (float& x : data) x += 1.0f / 1024.0f;
    cache->append(0, view, view);
  }
  return cache;
}

/// Runs decode steps (B = 1, one query, Hq = 32, D = 128) over a cache of `length` tokens. Caches
/// smaller than 128 MiB are replicated, one per layer, and the steps walk the layers in turn, as a
/// model does, so every step reads its keys from DRAM rather than from the 32 MiB L3.
/// The layer caches of one decode shape, kept between the runs Google Benchmark makes of the same
/// benchmark (its iteration-count probes and repetitions), since filling gigabytes takes seconds.
template <class T>
const std::vector<std::unique_ptr<KvCache<T>>>& decode_layers(Index num_kv_heads, Index head_dim,
                                                               Index length) {
  static std::vector<std::unique_ptr<KvCache<T>>> layers;
  static Index filled_for[2] = {0, 0};
  if (layers.empty() || filled_for[0] != num_kv_heads || filled_for[1] != length) {
    layers.clear();  // one shape at a time: the largest take gigabytes
    std::mt19937 rng(1);
    layers.push_back(filled_cache<T>(num_kv_heads, head_dim, length, rng));
    const Index cache_bytes = layers[0]->bytes_per_token() * length;
    const Index num_layers =
        std::max<Index>(1, ((Index{128} << 20) + cache_bytes - 1) / cache_bytes);
    for (Index l = 1; l < num_layers; ++l) {
      layers.push_back(filled_cache<T>(num_kv_heads, head_dim, length, rng));
    }
    filled_for[0] = num_kv_heads;
    filled_for[1] = length;
  }
  return layers;
}

template <class T>
void run_decode(benchmark::State& state, Index num_kv_heads, Index length, int num_threads) {
  constexpr Index kHeads = 32, kDim = 128;
  std::mt19937 rng(1);
  const auto& layers = decode_layers<T>(num_kv_heads, kDim, length);
  const Index cache_bytes = layers[0]->bytes_per_token() * length;
  std::vector<float> q(kHeads * kDim), out(kHeads * kDim);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (float& x : q) x = dist(rng);
  AttentionOptions options;
  options.mask = Mask::causal();
  options.num_threads = num_threads;
  const auto q_view = TensorView<const float>::bshd(q.data(), 1, 1, kHeads, kDim);
  const auto out_view = TensorView<float>::bshd(out.data(), 1, 1, kHeads, kDim);
  PairedReadProbe probe(num_threads, cache_bytes);
  size_t layer = 0;
  for (auto _ : state) {
    const double step_seconds =
        seconds([&] { attend(q_view, layers[layer]->view({0}), out_view, options); });
    state.SetIterationTime(step_seconds);
    benchmark::DoNotOptimize(out.data());
    layer = (layer + 1) % layers.size();
    probe.run();
  }
  const double steps = static_cast<double>(state.iterations());
  const double bytes = static_cast<double>(cache_bytes);
  const double flops = attention_flops(1, kHeads, 1, length, kDim, kDim, options.mask);
  const double floor_seconds =
      std::max(flops / peak_flops(num_threads), bytes / probe.bandwidth());
  state.counters["tok_s"] = benchmark::Counter(steps, benchmark::Counter::kIsRate);
  state.counters["bytes_per_second"] = benchmark::Counter(bytes * steps, benchmark::Counter::kIsRate);
  state.counters["read_bw"] = probe.bandwidth();
  state.counters["FLOPS"] = benchmark::Counter(flops * steps, benchmark::Counter::kIsRate);
  state.counters["roof"] = benchmark::Counter(floor_seconds * steps, benchmark::Counter::kIsRate);
}

const char* variant_name(Index num_kv_heads) {
  return num_kv_heads == 32 ? "mha" : num_kv_heads == 1 ? "mqa" : "gqa";
}

template <class T>
void register_decode() {
  for (Index num_kv_heads : {32, 8, 1}) {
    for (Index length : {4096, 16384, 65536}) {
      for (int threads : {1, 2}) {
        const std::string name = std::string("BM_Decode/") + element_name<T>() + "/" +
                                 variant_name(num_kv_heads) + "/kv:" + std::to_string(length) +
                                 "/threads:" + std::to_string(threads);
        benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) {
          run_decode<T>(state, num_kv_heads, length, threads);
        })->UseManualTime()->Unit(benchmark::kMicrosecond);
      }
    }
  }
}

[[maybe_unused]] const bool registered = [] {
  register_decode<float>();
  register_decode<Eigen::bfloat16>();
  register_decode<std::int8_t>();
  return true;
}();

}  // namespace
}  // namespace headroom::bench
