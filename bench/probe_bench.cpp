// SPDX-License-Identifier: MIT
// Probe benchmarks: this machine's FP32 FMA peak and DRAM read bandwidth, per thread count, and
// the fraction of that peak a matrix product reaches here (Eigen's SGEMM), the class of speed the
// prefill kernel's products aim at.
#include <benchmark/benchmark.h>

#include <Eigen/Core>

#include "roofline.hpp"

namespace headroom::bench {
namespace {

void BM_PeakFma(benchmark::State& state) {
  const int num_threads = static_cast<int>(state.range(0));
  double flops = 0.0;
  for (auto _ : state) {
    const double time = seconds([&] { flops = fma_probe(num_threads, 2'000'000); });
    record_peak_flops(num_threads, flops / time);
    state.SetIterationTime(time);
  }
  state.counters["FLOPS"] = benchmark::Counter(flops * static_cast<double>(state.iterations()),
                                               benchmark::Counter::kIsRate);
}
BENCHMARK(BM_PeakFma)->ArgName("threads")->Arg(1)->Arg(2)->UseManualTime()->Unit(
    benchmark::kMillisecond);

void BM_ReadBandwidth(benchmark::State& state) {
  const int num_threads = static_cast<int>(state.range(0));
  const int streams = static_cast<int>(state.range(1));
  const auto& buffer = read_probe_buffer();
  double bytes = 0.0;
  for (auto _ : state) {
    const double time = seconds([&] { bytes = read_probe(buffer, num_threads, streams); });
    record_read_bandwidth(num_threads, bytes / time);
    state.SetIterationTime(time);
  }
  state.SetBytesProcessed(static_cast<int64_t>(bytes) * state.iterations());
}
BENCHMARK(BM_ReadBandwidth)
    ->ArgNames({"threads", "streams"})
    ->ArgsProduct({{1, 2}, {1, 2, 4}})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

/// C = A.B for square f32 matrices of 2048 (L3-sized operands, as in a tuned SGEMM's best case):
/// what a register-blocked, cache-blocked product with loads and stores reaches of the FMA peak,
/// which counts register-only FMAs. Reported as `roof`, like the attention kernels.
void BM_EigenSgemm(benchmark::State& state) {
  const int num_threads = static_cast<int>(state.range(0));
  constexpr Index kSize = 2048;
  Eigen::setNbThreads(num_threads);
  const Eigen::MatrixXf a = Eigen::MatrixXf::Random(kSize, kSize);
  const Eigen::MatrixXf b = Eigen::MatrixXf::Random(kSize, kSize);
  Eigen::MatrixXf c(kSize, kSize);
  for (auto _ : state) {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  Eigen::setNbThreads(1);
  set_flop_counters(state, 2.0 * kSize * kSize * kSize, num_threads);
}
BENCHMARK(BM_EigenSgemm)->ArgName("threads")->Arg(1)->Arg(2)->UseRealTime()->Unit(
    benchmark::kMillisecond);

}  // namespace
}  // namespace headroom::bench
