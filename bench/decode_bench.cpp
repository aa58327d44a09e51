// SPDX-License-Identifier: MIT
// Decode benchmarks: one query token per step over a long KV cache, per element type and head
// layout, against the roofline of this machine (the larger of the FLOP floor and the byte floor).
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "decode_steps.hpp"

namespace headroom::bench {
namespace {

const char* variant_name(Index num_kv_heads) {
  return num_kv_heads == 32 ? "mha" : num_kv_heads == 1 ? "mqa" : "gqa";
}

/// Registers `family`/<type>/<mha|gqa|mqa>/kv:<length>/threads:<n> for every combination.
template <class T>
void register_decode_steps(const std::string& family, std::initializer_list<Index> kv_heads,
                           std::initializer_list<Index> lengths) {
  for (Index num_kv_heads : kv_heads) {
    for (Index length : lengths) {
      for (int threads : {1, 2}) {
        const std::string name = family + "/" + element_name<T>() + "/" +
                                 variant_name(num_kv_heads) + "/kv:" + std::to_string(length) +
                                 "/threads:" + std::to_string(threads);
        benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) {
          run_decode<T>(state, num_kv_heads, length, threads);
        })->UseManualTime()->Unit(benchmark::kMicrosecond);
      }
    }
  }
}

template <class T>
void register_decode() {
  register_decode_steps<T>("BM_Decode", {32, 8, 1}, {4096, 16384, 65536});
}

/// Short caches, where a decode step is a few tens of microseconds and the split of the keys
/// decides whether the second core helps (see default_num_splits): MQA's lone work item, which
/// splits in two at each of these lengths (two splits of 256 keys at 512), and GQA's one item per
/// kv head, which does not split.
void register_short_decode() {
  register_decode_steps<float>("BM_DecodeShort", {8, 1}, {512, 1536, 2560});
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
