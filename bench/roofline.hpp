// SPDX-License-Identifier: MIT
// This machine's own limits, measured in the benchmark run that uses them: FP32 FMA peak and
// DRAM read bandwidth, for 1..n threads. Kernels report `roof` as a fraction of them.
#pragma once

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <map>
#include <vector>

#include <unistd.h>

#include "headroom/core/error.hpp"
#include "headroom/core/huge_page_allocator.hpp"
#include "headroom/core/parallel.hpp"

namespace headroom::bench {

using Packet = Eigen::internal::packet_traits<float>::type;
inline constexpr int kPacketSize = Eigen::internal::packet_traits<float>::size;

/// Runs `iterations` rounds of 12 independent FMA chains per thread and returns the FLOPs done.
/// 12 chains cover the FMA latency (4 cycles) times the issue rate (up to 2 full-width per cycle).
inline double fma_probe(int num_threads, long iterations) {
  using namespace Eigen::internal;
  constexpr int kChains = 12;
  std::vector<float> sink(static_cast<size_t>(num_threads) * kPacketSize);
  detail::parallel_for(num_threads, num_threads, [&](int, Index thread) {
    Packet acc[kChains];
    for (int c = 0; c < kChains; ++c) acc[c] = pset1<Packet>(static_cast<float>(c) * 1e-3f);
    const Packet a = pset1<Packet>(0.999999f), b = pset1<Packet>(1e-7f);
    for (long i = 0; i < iterations; ++i) {
      // A chain of rounded FMAs has no closed form, so the compiler must issue every one; the
      // accumulators stay in registers (no DoNotOptimize here: it would force them to memory).
      for (int c = 0; c < kChains; ++c) acc[c] = pmadd(acc[c], a, b);
    }
    Packet total = acc[0];
    for (int c = 1; c < kChains; ++c) total = padd(total, acc[c]);
    pstoreu(sink.data() + thread * kPacketSize, total);
  });
  benchmark::DoNotOptimize(sink.data());
  return 2.0 * kChains * kPacketSize * static_cast<double>(iterations) * num_threads;
}

/// The read probe's buffer, in the same pages as the KV caches it is the roofline of (huge pages
/// where the system gives them): the best rate at which this machine reads such memory.
using ProbeBuffer = std::vector<float, detail::HugePageAllocator<float>>;

/// Sums `count` floats (a multiple of kStreams * kPacketSize) with packet loads, walked as
/// kStreams interleaved sub-ranges: more streams keep more DRAM requests in flight. The number of
/// streams is a template parameter so that the loop over them unrolls.
template <int kStreams>
float read_streams(const float* data, Index count) {
  using namespace Eigen::internal;
  const Index per_stream = count / kStreams;
  Packet acc[kStreams];
  for (Packet& a : acc) a = pset1<Packet>(0.0f);
  for (Index i = 0; i < per_stream; i += kPacketSize) {
    for (int s = 0; s < kStreams; ++s) {
      acc[s] = padd(acc[s], pload<Packet>(data + s * per_stream + i));
    }
  }
  for (int s = 1; s < kStreams; ++s) acc[0] = padd(acc[0], acc[s]);
  return predux(acc[0]);
}

/// read_streams for 1, 2 or 4 streams; throws headroom::Error for any other count.
inline float read_streams(const float* data, Index count, int streams) {
  switch (streams) {
    case 1: return read_streams<1>(data, count);
    case 2: return read_streams<2>(data, count);
    case 4: return read_streams<4>(data, count);
    default: HEADROOM_CHECK(false, "read_streams", "streams (", streams, ") is not 1, 2 or 4");
  }
  return 0.0f;
}

/// Reads the buffer once, each thread its own slice as `streams` interleaved sub-ranges, and
/// returns the bytes read.
inline double read_probe(const ProbeBuffer& buffer, int num_threads, int streams) {
  const Index per_thread = static_cast<Index>(buffer.size()) / num_threads /
                           (streams * kPacketSize) * (streams * kPacketSize);
  std::vector<float> sink(static_cast<size_t>(num_threads));
  detail::parallel_for(num_threads, num_threads, [&](int, Index thread) {
    sink[thread] = read_streams(buffer.data() + thread * per_thread, per_thread, streams);
  });
  benchmark::DoNotOptimize(sink.data());
  return 4.0 * static_cast<double>(per_thread) * num_threads;
}

/// This machine's last-level cache in bytes (glibc reads it from cpuid), or 32 MiB where it cannot
/// tell. Server parts differ by an order of magnitude: 32 MiB on a Zen 4 CCD, 480 MiB on the Xeon
/// these benchmarks have also run on. Shared with the other tenants of the host, but a step that
/// reads less than it can still be served partly from it.
inline Index last_level_cache_bytes() {
#if defined(_SC_LEVEL3_CACHE_SIZE)
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  if (l3 > 0) return static_cast<Index>(l3);
#endif
  return Index{32} << 20;
}

/// The read probe's buffer: at least 1 GiB and four last-level caches, so that the windows read
/// in turn (see PairedReadProbe) come from DRAM; filled with distinct values: pages of identical
/// content may be merged by the host (KSM), and reading one shared page over and over measures a
/// cache, not DRAM.
inline const ProbeBuffer& read_probe_buffer() {
  static const ProbeBuffer buffer = [] {
    const Index bytes = std::max<Index>(Index{1} << 30, 4 * last_level_cache_bytes());
    ProbeBuffer values(static_cast<size_t>(bytes / Index{sizeof(float)}));
    for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i % 65521);
    return values;
  }();
  return buffer;
}

/// The best rate seen so far for each thread count, from the probe benchmarks or, when a filter
/// skipped them, from a short measurement of its own.
struct Limits {
  std::map<int, double> peak_flops;   // FLOP/s
  std::map<int, double> read_bytes;   // bytes/s

  static Limits& instance() {
    static Limits limits;
    return limits;
  }
};

/// Times f() once and returns seconds.
template <class F>
double seconds(F&& f) {
  const auto start = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

inline void record_peak_flops(int num_threads, double rate) {
  double& best = Limits::instance().peak_flops[num_threads];
  best = std::max(best, rate);
}
inline void record_read_bandwidth(int num_threads, double rate) {
  double& best = Limits::instance().read_bytes[num_threads];
  best = std::max(best, rate);
}

/// Returns the FP32 FMA peak of `num_threads` threads in FLOP/s.
inline double peak_flops(int num_threads) {
  auto& known = Limits::instance().peak_flops;
  if (known.count(num_threads) == 0) {
    for (int trial = 0; trial < 5; ++trial) {
      double flops = 0.0;
      const double time = seconds([&] { flops = fma_probe(num_threads, 2'000'000); });
      record_peak_flops(num_threads, flops / time);
    }
  }
  return known[num_threads];
}

/// Returns the DRAM read bandwidth of `num_threads` threads in bytes/s: the best of 1, 2 and 4
/// streams per thread.
inline double read_bandwidth(int num_threads) {
  auto& known = Limits::instance().read_bytes;
  if (known.count(num_threads) == 0) {
    const auto& buffer = read_probe_buffer();
    for (int trial = 0; trial < 3; ++trial) {
      for (int streams : {1, 2, 4}) {
        double bytes = 0.0;
        const double time = seconds([&] { bytes = read_probe(buffer, num_threads, streams); });
        record_read_bandwidth(num_threads, bytes / time);
      }
    }
  }
  return known[num_threads];
}

/// DRAM read bandwidth measured next to the kernel it judges. The host is shared: its bandwidth
/// drifts by tens of percent from minute to minute, so a probe run once at the start (or the best
/// of all its runs) compares the kernel with another moment's machine. Run the probe right after
/// each kernel step over as many bytes as the step read (from a buffer no step reads, walked
/// onwards so that it always comes from DRAM), and both see the same machine.
class PairedReadProbe {
 public:
  /// Steps that read more than half the probe's buffer are matched by windows of half of it:
  /// a window still streams hundreds of MiB, and consecutive windows never overlap. Each thread
  /// reads its share as `streams` (1, 2 or 4) interleaved sub-ranges: two keep enough DRAM
  /// requests in flight for one core here (BM_ReadBandwidth: one stream reaches half of it), as
  /// many as the kernel reads at once judge it by what that pattern can reach.
  PairedReadProbe(int num_threads, Index bytes_per_step, int streams = 2)
      : num_threads_(num_threads),
        streams_(streams),
        floats_(std::clamp<Index>(bytes_per_step / Index{sizeof(float)}, Index{1} << 16,
                                  static_cast<Index>(read_probe_buffer().size()) / 2) /
                kPacketSize * kPacketSize) {  // windows start on packets (aligned loads)
    HEADROOM_CHECK(streams == 1 || streams == 2 || streams == 4, "PairedReadProbe", "streams (",
                   streams, ") is not 1, 2 or 4");
  }

  /// Reads the next window of bytes_per_step bytes and adds its time to the total.
  void run() {
    const auto& buffer = read_probe_buffer();
    const Index size = static_cast<Index>(buffer.size());
    if (offset_ + floats_ > size) offset_ = 0;
    const Index per_thread =
        floats_ / num_threads_ / (streams_ * kPacketSize) * (streams_ * kPacketSize);
    std::vector<float> sink(static_cast<size_t>(num_threads_));
    seconds_ += seconds([&] {
      detail::parallel_for(num_threads_, num_threads_, [&](int, Index thread) {
        sink[thread] =
            read_streams(buffer.data() + offset_ + thread * per_thread, per_thread, streams_);
      });
    });
    benchmark::DoNotOptimize(sink.data());
    bytes_ += static_cast<double>(per_thread * num_threads_) * sizeof(float);
    offset_ += floats_;
  }

  /// Returns the bytes per second of every window read so far.
  double bandwidth() const { return seconds_ > 0.0 ? bytes_ / seconds_ : 0.0; }

 private:
  int num_threads_;
  int streams_;
  Index floats_;
  Index offset_ = 0;
  double seconds_ = 0.0, bytes_ = 0.0;
};

/// Sets the FLOPS counter (a rate) and `roof`, the fraction of the FMA peak it reaches.
inline void set_flop_counters(benchmark::State& state, double flops_per_iteration,
                              int num_threads) {
  const double iterations = static_cast<double>(state.iterations());
  state.counters["FLOPS"] =
      benchmark::Counter(flops_per_iteration * iterations, benchmark::Counter::kIsRate);
  state.counters["roof"] = benchmark::Counter(
      flops_per_iteration * iterations / peak_flops(num_threads), benchmark::Counter::kIsRate);
}

}  // namespace headroom::bench
