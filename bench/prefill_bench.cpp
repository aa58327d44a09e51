// SPDX-License-Identifier: MIT
// Prefill benchmarks: the tiled kernel against the naive Eigen baseline on the same shapes.
#include <benchmark/benchmark.h>

#include <string>

#include "naive_attention.hpp"
#include "prefill_problem.hpp"
#include "roofline.hpp"

namespace headroom::bench {
namespace {

/// Which implementation a prefill benchmark runs.
enum class Kernel { kTiled, kNaive, kTiledBf16 };

/// Runs causal prefill at B=1, Hq=32, D=128 with the tiled kernel (on f32 or bf16 q, k, v) or the
/// naive baseline.
void run_prefill(benchmark::State& state, Index num_kv_heads, Index seq_len, int num_threads,
                 Kernel kernel) {
  PrefillProblem problem(32, num_kv_heads, 128, seq_len);
  AttentionOptions options;
  options.mask = Mask::causal();
  options.num_threads = num_threads;
  Eigen::setNbThreads(1);
  // bf16 storage of the same values: the kernel multiplies bf16 pairs where the CPU has them.
  const auto to_bf16 = [](const std::vector<float>& x) {
    return std::vector<Eigen::bfloat16>(x.begin(), x.end());
  };
  const bool bf16 = kernel == Kernel::kTiledBf16;
  const std::vector<Eigen::bfloat16> q16 = bf16 ? to_bf16(problem.q) : std::vector<Eigen::bfloat16>{};
  const std::vector<Eigen::bfloat16> k16 = bf16 ? to_bf16(problem.k) : std::vector<Eigen::bfloat16>{};
  const std::vector<Eigen::bfloat16> v16 = bf16 ? to_bf16(problem.v) : std::vector<Eigen::bfloat16>{};
  const auto bf16_view = [&](const std::vector<Eigen::bfloat16>& x, Index heads) {
    return TensorView<const Eigen::bfloat16>::bshd(x.data(), 1, seq_len, heads, 128);
  };
  for (auto _ : state) {
    if (bf16) {
      attend(bf16_view(q16, 32), bf16_view(k16, num_kv_heads), bf16_view(v16, num_kv_heads),
             problem.out_view(), options);
    } else if (kernel == Kernel::kNaive) {
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

void register_prefill(Kernel kernel, Index num_kv_heads, Index seq_len, int threads) {
  const char* prefix = kernel == Kernel::kTiled  ? "BM_Prefill/"
                       : kernel == Kernel::kNaive ? "BM_PrefillNaive/"
                                                  : "BM_PrefillBf16/";
  const std::string name = prefix + std::string(variant_name(num_kv_heads)) +
                           "/S:" + std::to_string(seq_len) + "/threads:" + std::to_string(threads);
  benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) {
    run_prefill(state, num_kv_heads, seq_len, threads, kernel);
  })->UseRealTime()->Unit(benchmark::kMillisecond);
}

[[maybe_unused]] const bool registered = [] {
  for (Kernel kernel : {Kernel::kTiled, Kernel::kNaive}) {
    for (Index num_kv_heads : {32, 8, 1}) {
      for (Index seq_len : {512, 2048}) {
        for (int threads : {1, 2}) register_prefill(kernel, num_kv_heads, seq_len, threads);
      }
    }
  }
  // The long prefill of issue 6 (GQA 32/8 at S = 8192; the naive baseline would need 8 GiB of
  // scores), and bf16 storage against f32 at the same shapes.
  for (int threads : {1, 2}) {
    register_prefill(Kernel::kTiled, 8, 8192, threads);
    for (Index seq_len : {2048, 8192}) register_prefill(Kernel::kTiledBf16, 8, seq_len, threads);
  }
  return true;
}();

}  // namespace
}  // namespace headroom::bench
