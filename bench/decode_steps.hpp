// SPDX-License-Identifier: MIT
// The timed decode step of the cache benchmarks: one query token over a long KV cache, each step
// paired with a read probe over as many bytes, and the counters that judge it against the roofline.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <random>
#include <vector>

#include "headroom/attention/attend.hpp"
#include "headroom/attention/cost.hpp"
#include "headroom/cache/kv_cache.hpp"
#include "headroom/position/rerope.hpp"
#include "layer_caches.hpp"
#include "roofline.hpp"

namespace headroom::bench {

/// Runs decode steps (B = 1, one query, Hq = 32, D = 128) over a cache of `length` tokens (see
/// layer_caches.hpp: replicated so that every step reads from DRAM), with ReRoPE applied in the
/// kernel when `rerope` is given (the cache then holds raw keys; with random contents, the same
/// ones). Sets tok_s, bytes_per_second, read_bw (the paired probe), FLOPS and roof: the roofline
/// time max(FLOPs / peak, K+V bytes / read_bw) over the measured time.
template <class T>
void run_decode(benchmark::State& state, Index num_kv_heads, Index length, int num_threads,
                const ReRope* rerope = nullptr) {
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
  options.rerope = rerope;
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
  const double floor_seconds = std::max(flops / peak_flops(num_threads), bytes / probe.bandwidth());
  state.counters["tok_s"] = benchmark::Counter(steps, benchmark::Counter::kIsRate);
  state.counters["bytes_per_second"] =
      benchmark::Counter(bytes * steps, benchmark::Counter::kIsRate);
  state.counters["read_bw"] = probe.bandwidth();
  state.counters["FLOPS"] = benchmark::Counter(flops * steps, benchmark::Counter::kIsRate);
  state.counters["roof"] = benchmark::Counter(floor_seconds * steps, benchmark::Counter::kIsRate);
}

}  // namespace headroom::bench
