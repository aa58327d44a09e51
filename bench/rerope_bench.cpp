// SPDX-License-Identifier: MIT
// ReRoPE benchmarks: what ReRoPE and Leaky ReRoPE inside the kernel cost over ordinary RoPE, on the
// same shapes (GQA 32/8, D = 128, causal) at prefill and at decode over a long cache.
//
// Ordinary RoPE is the plain kernel on pre-rotated q and k: the rotation itself is O(S) work done
// before the call and left out. ReRoPE takes raw q and k and rotates per tile inside the kernel,
// and computes the tiles that straddle the window twice (ordinary and clamped rotation), so its
// extra time is all counted. FLOPS and roof count plain attention's FLOPs for every variant: the
// useful work, so the variants compare by time. bench_tables.py prints the time ratios.
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <memory>
#include <string>

#include "decode_steps.hpp"
#include "headroom/position/rerope.hpp"
#include "prefill_problem.hpp"
#include "roofline.hpp"

namespace headroom::bench {
namespace {

constexpr Index kHeads = 32, kKvHeads = 8, kDim = 128;
/// The published reference's settings (bojone/rerope): window 512, leak 16, trained on 4096.
constexpr Index kWindow = 512;
constexpr double kLeak = 16.0;

/// The position encodings compared, and their names in the benchmark names.
enum class Position { kRope, kReRope, kLeaky };

const char* position_name(Position position) {
  constexpr const char* kNames[] = {"rope", "rerope", "leaky"};
  return kNames[static_cast<int>(position)];
}

/// Returns the ReRoPE tables for sequences of up to `max_len` keys (null for ordinary RoPE).
std::unique_ptr<const ReRope> make_rerope(Position position, Index max_len) {
  if (position == Position::kRope) return nullptr;
  RopeConfig rope;
  rope.head_dim = kDim;
  rope.max_positions = max_len + 1;  // must exceed every kv_len
  const ReRopeConfig config = position == Position::kReRope ? ReRopeConfig::rerope(kWindow)
                                                            : ReRopeConfig::leaky(kWindow, kLeak);
  return std::make_unique<const ReRope>(rope, config);
}

/// Runs causal prefill (B = 1) of seq_len tokens with the given position policy.
void run_prefill(benchmark::State& state, Position position, Index seq_len, int num_threads) {
  PrefillProblem problem(kHeads, kKvHeads, kDim, seq_len);
  const auto rerope = make_rerope(position, seq_len);
  AttentionOptions options;
  options.mask = Mask::causal();
  options.num_threads = num_threads;
  options.rerope = rerope.get();
  Eigen::setNbThreads(1);
  for (auto _ : state) {
    problem.attend(options);
    benchmark::DoNotOptimize(problem.out.data());
  }
  set_flop_counters(state, problem.flops(options.mask), num_threads);
}

/// Runs decode steps over an f32 cache of `length` tokens with the given position policy.
void run_rerope_decode(benchmark::State& state, Position position, Index length, int num_threads) {
  const auto rerope = make_rerope(position, length);
  run_decode<float>(state, kKvHeads, length, num_threads, rerope.get());
}

// Budget: a prefill call at S = 16384 takes several seconds, so each prefill runs once per
// repetition (the median of --benchmark_repetitions=3 then takes out the noise); 2 threads only,
// so that the group stays near a minute.
[[maybe_unused]] const bool registered = [] {
  for (Index seq_len : {4096, 16384}) {
    for (Position position : {Position::kRope, Position::kReRope, Position::kLeaky}) {
      const std::string name = std::string("BM_ReRopePrefill/") + position_name(position) +
                               "/S:" + std::to_string(seq_len) + "/threads:2";
      benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) {
        run_prefill(state, position, seq_len, 2);
      })->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(1);
    }
  }
  for (Position position : {Position::kRope, Position::kReRope, Position::kLeaky}) {
    const std::string name = std::string("BM_ReRopeDecode/f32/") + position_name(position) +
                             "/kv:32768/threads:2";
    benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) {
      run_rerope_decode(state, position, 32768, 2);
    })->UseManualTime()->Unit(benchmark::kMicrosecond);
  }
  return true;
}();

}  // namespace
}  // namespace headroom::bench
