// SPDX-License-Identifier: MIT
// Decode benchmarks: one query token per step over a long KV cache, per element type and head
// layout, against the roofline of this machine (the larger of the FLOP floor and the byte floor).
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <cstdint>
#include <string>

#include "decode_steps.hpp"

namespace headroom::bench {
namespace {

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

/// Short caches, where a decode step is a few tens of microseconds and the split of the keys
/// decides whether the second core helps (see default_num_splits): MQA and GQA's one work item
/// per kv head, at lengths that split in two (512, 1536) and in four (2560).
void register_short_decode() {
  for (Index num_kv_heads : {8, 1}) {
    for (Index length : {512, 1536, 2560}) {
      for (int threads : {1, 2}) {
        const std::string name = std::string("BM_DecodeShort/f32/") +
                                 variant_name(num_kv_heads) + "/kv:" + std::to_string(length) +
                                 "/threads:" + std::to_string(threads);
        benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) {
          run_decode<float>(state, num_kv_heads, length, threads);
        })->UseManualTime()->Unit(benchmark::kMicrosecond);
      }
    }
  }
}

[[maybe_unused]] const bool registered = [] {
  register_decode<float>();
  register_short_decode();
  register_decode<Eigen::bfloat16>();
  register_decode<std::int8_t>();
  return true;
}();

}  // namespace
}  // namespace headroom::bench
