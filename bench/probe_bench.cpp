// SPDX-License-Identifier: MIT
// Probe benchmarks: this machine's FP32 FMA peak and DRAM read bandwidth, per thread count.
#include <benchmark/benchmark.h>

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

}  // namespace
}  // namespace headroom::bench
