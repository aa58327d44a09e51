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
#include "layer_caches.hpp"
#include "roofline.hpp"

namespace headroom::bench {
namespace {

/// Runs decode steps (B = 1, one query, Hq = 32, D = 128) over a cache of `length` tokens (see
/// layer_caches.hpp: replicated so that every step reads from DRAM).
template <class T>
void run_decode(benchmark::State& state, Index num_kv_heads, Index length, int num_threads) {
  constexpr Index kHeads = 32, kDim = 128;
  std::mt19937 rng(1);
  const auto& layers =
      layer_caches<T>(KvCacheConfig{num_kv_heads, kDim, kDim, 1, length, false}, length);
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
