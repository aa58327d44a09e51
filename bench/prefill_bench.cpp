// SPDX-License-Identifier: MIT
// Prefill benchmarks: the tiled kernel against the naive Eigen baseline on the same shapes.
#include <benchmark/benchmark.h>

#include <string>

#include "naive_attention.hpp"
#include "prefill_problem.hpp"
#include "roofline.hpp"

namespace headroom::bench {
namespace {

/// Runs causal prefill at B=1, Hq=32, D=128 with the tiled kernel (naive == false) or the baseline.
void run_prefill(benchmark::State& state, Index num_kv_heads, Index seq_len, int num_threads,
                 bool naive) {
  PrefillProblem problem(32, num_kv_heads, 128, seq_len);
  AttentionOptions options;
  options.mask = Mask::causal();
  options.num_threads = num_threads;
  Eigen::setNbThreads(1);
  for (auto _ : state) {
    if (naive) {
      naive_attention(problem.q_view(), problem.kv_view(problem.k), problem.kv_view(problem.v),
                      problem.out_view(), true, num_threads);
    } else {
      problem.attend(options);
    }
    benchmark::DoNotOptimize(problem.out.data());
  }
  set_flop_counters(state, problem.flops(options.mask), num_threads);
}

const char* variant_name(Index num_kv_heads) {
  return num_kv_heads == 32 ? "mha" : num_kv_heads == 1 ? "mqa" : "gqa";
}

[[maybe_unused]] const bool registered = [] {
  for (bool naive : {false, true}) {
    for (Index num_kv_heads : {32, 8, 1}) {
      for (Index seq_len : {512, 2048}) {
        for (int threads : {1, 2}) {
          const std::string name = std::string(naive ? "BM_PrefillNaive/" : "BM_Prefill/") +
                                   variant_name(num_kv_heads) + "/S:" + std::to_string(seq_len) +
                                   "/threads:" + std::to_string(threads);
          benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) {
            run_prefill(state, num_kv_heads, seq_len, threads, naive);
          })->UseRealTime()->Unit(benchmark::kMillisecond);
        }
      }
    }
  }
  return true;
}();

}  // namespace
}  // namespace headroom::bench
