// SPDX-License-Identifier: MIT
// Decoder benchmarks: one generated token per step through a whole random model, its weights held
// as f32 or bf16, against the time this machine takes to read those weights from DRAM.
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <cstdint>
#include <string>
#include <vector>

#include "headroom/model/decoder.hpp"
#include "headroom/model/decoder_weights.hpp"
#include "roofline.hpp"

namespace headroom::bench {
namespace {

/// Llama 3.2 1B's layer (hidden 2048, 32 heads of 64 over 8 kv heads, intermediate 8192) four
/// times, with a 32k vocabulary: 309M weights, 1.2 GB as f32 and 0.6 GB as bf16, tens of
/// last-level caches, so a step reads them all from DRAM.
DecoderConfig bench_model() {
  DecoderConfig config;
  config.vocab_size = 32000;
  config.hidden_size = 2048;
  config.intermediate_size = 8192;
  config.num_hidden_layers = 4;
  config.num_attention_heads = 32;
  config.num_key_value_heads = 8;
  config.head_dim = 64;
  config.max_position_embeddings = 8192;
  config.rope_theta = 500000.0;
  return config;
}

/// The bytes of the weights a decode step reads: every linear weight and the output head (the
/// embedding row of the token and the norms are a few KiB).
template <class Weight>
double step_weight_bytes(const DecoderWeightsOf<Weight>& weights) {
  double elements = static_cast<double>(weights.lm_head.size());
  for (const auto& l : weights.layers) {
    elements += static_cast<double>(l.q_proj.size() + l.k_proj.size() + l.v_proj.size() +
                                    l.o_proj.size() + l.gate_proj.size() + l.up_proj.size() +
                                    l.down_proj.size());
  }
  return elements * sizeof(Weight);
}

/// The model's weights of Weight, drawn once per process (a few seconds of random numbers).
template <class Weight>
const DecoderWeightsOf<Weight>& bench_weights() {
  static const DecoderWeightsOf<Weight> weights =
      DecoderWeightsOf<Weight>::random(bench_model(), 3);
  return weights;
}

/// Decode steps after a 128-token prompt, each rolled back so every step sees the same sequence
/// length, each paired with a read probe over as many bytes as the step's weights. Sets tok_s,
/// bytes_per_second (weights read), read_bw (the paired probe) and roof: the time to read the
/// weights at read_bw over the measured time.
template <class Weight>
void run_decoder_step(benchmark::State& state, int num_threads) {
  constexpr Index kPrompt = 128;
  const DecoderConfig config = bench_model();
  Decoder<float, Weight> decoder(config, bench_weights<Weight>(),
                                 DecoderOptions{kPrompt + 1, num_threads});
  std::vector<std::int32_t> prompt(kPrompt);
  for (Index i = 0; i < kPrompt; ++i) prompt[i] = static_cast<std::int32_t>((i * 7919) % 32000);
  decoder.forward(prompt);
  const double bytes = step_weight_bytes(bench_weights<Weight>());
  // Four streams per thread, as weight_row_dots reads four rows at once (and Eigen's GEMV of f32
  // weights several): judged against two, the f32 steps read faster than the probe (roof > 1).
  PairedReadProbe probe(num_threads, static_cast<Index>(bytes), 4);
  std::int32_t token = 1;
  for (auto _ : state) {
    Eigen::VectorXf logits;
    state.SetIterationTime(seconds([&] { logits = decoder.forward({token}); }));
    benchmark::DoNotOptimize(logits.data());
    decoder.truncate(kPrompt);
    token = (token + 1) % 32000;
    probe.run();
  }
  const double steps = static_cast<double>(state.iterations());
  state.counters["tok_s"] = benchmark::Counter(steps, benchmark::Counter::kIsRate);
  state.counters["bytes_per_second"] =
      benchmark::Counter(bytes * steps, benchmark::Counter::kIsRate);
  state.counters["read_bw"] = probe.bandwidth();
  state.counters["roof"] =
      benchmark::Counter(bytes / probe.bandwidth() * steps, benchmark::Counter::kIsRate);
}

template <class Weight>
void register_decoder_steps(const char* weight_name) {
  for (int threads : {1, 2}) {
    const std::string name = std::string("BM_DecoderStep/") + weight_name +
                             "/threads:" + std::to_string(threads);
    benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) {
      run_decoder_step<Weight>(state, threads);
    })->UseManualTime()->Unit(benchmark::kMillisecond);
  }
}

[[maybe_unused]] const bool registered = [] {
  register_decoder_steps<float>("f32");
  register_decoder_steps<Eigen::bfloat16>("bf16");
  return true;
}();

}  // namespace
}  // namespace headroom::bench
