// SPDX-License-Identifier: MIT
// MLA benchmarks: a decode step of DeepSeek-V2-Lite's attention over a long latent cache, absorbed
// against expanded, and the KV budget of one model width (MHA, GQA, MQA, MLA side by side), each
// against the roofline of this machine.
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "headroom/attention/attend.hpp"
#include "headroom/attention/cost.hpp"
#include "headroom/cache/kv_cache.hpp"
#include "headroom/mla/latent_cache.hpp"
#include "headroom/mla/mla_attention.hpp"
#include "headroom/mla/mla_cost.hpp"
#include "layer_caches.hpp"
#include "roofline.hpp"

namespace headroom::bench {
namespace {

/// DeepSeek-V2-Lite's attention (16 heads, latent 512 + 64, no query compression), its
/// max_position_embeddings cut to what the benchmarks reach (the RoPE table's size only).
MlaConfig lite_config() {
  MlaConfig config = MlaConfig::deepseek_v2_lite();
  config.max_position_embeddings = 65536;
  return config;
}

/// The layer, built once (its weights take 55 MB).
const MlaAttention& lite_layer() {
  static const MlaAttention layer(lite_config(), MlaWeights::random(lite_config(), 1));
  return layer;
}

/// Sets tok_s, bytes_per_second, FLOPS and roof: the roofline time max(FLOPs / peak, bytes /
/// read bandwidth), both limits measured in this run, over the measured time.
void set_decode_counters(benchmark::State& state, double flops, double bytes, int num_threads) {
  const double steps = static_cast<double>(state.iterations());
  const double floor_seconds =
      std::max(flops / peak_flops(num_threads), bytes / read_bandwidth(num_threads));
  state.counters["tok_s"] = benchmark::Counter(steps, benchmark::Counter::kIsRate);
  state.counters["bytes_per_second"] = benchmark::Counter(bytes * steps, benchmark::Counter::kIsRate);
  state.counters["FLOPS"] = benchmark::Counter(flops * steps, benchmark::Counter::kIsRate);
  state.counters["roof"] = benchmark::Counter(floor_seconds * steps, benchmark::Counter::kIsRate);
}

enum class Path { kAbsorbedAttention, kAbsorbed, kExpanded };

const char* path_name(Path path) {
  switch (path) {
    case Path::kAbsorbedAttention:
      return "absorbed_attention";
    case Path::kAbsorbed:
      return "absorbed";
    case Path::kExpanded:
      return "expanded";
  }
  return "?";
}

/// One decode step (B = 1, one new token) of DeepSeek-V2-Lite's attention over `length` cached
/// tokens:
///   absorbed_attention: headroom::attend alone, MQA over the latent cache (Dk 576, Dv 512, all
///     16 heads sharing one pass): the part a decode step's roofline is about;
///   absorbed / expanded: the whole layer (MlaAttention::forward: projections, RoPE, cache
///     append, attention, o_proj) by that path. Expanded up-projects all `length` latents to
///     per-head K and V (2 x length x 512 x 16 x 256 FLOPs), then runs MHA.
/// FLOPs are counted with mla/mla_cost.hpp; bytes are what must come from DRAM: the cache (and
/// for the whole layer its 55 MB of f32 weights; expanded's materialised K and V, which it
/// writes and reads back, are not counted, so its roof is if anything flattered).
template <class T>
void run_mla_decode(benchmark::State& state, Path path, Index length, int num_threads) {
  const MlaAttention& layer = lite_layer();
  const MlaConfig& config = layer.config();
  auto& layers = layer_caches<T>(latent_cache_config(config, 1, length + 1), length);
  for (auto& cache : layers) cache->truncate(0, length);
  Eigen::setNbThreads(num_threads);  // the layer's projections are Eigen products
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  const Index heads = config.num_attention_heads, latent = config.latent_dim();
  std::vector<float> q(heads * latent), q_out(heads * config.kv_lora_rank);
  std::vector<float> hidden(config.hidden_size), out(config.hidden_size);
  for (float& x : q) x = dist(rng);
  for (float& x : hidden) x = dist(rng);
  AttentionOptions attention_options;
  attention_options.mask = Mask::causal();
  attention_options.scale = layer.softmax_scale();
  attention_options.num_threads = num_threads;
  MlaOptions options;
  options.mode = path == Path::kExpanded ? MlaMode::kExpanded : MlaMode::kAbsorbed;
  options.num_threads = num_threads;
  const auto hidden_view = TensorView<const float>::bshd(hidden.data(), 1, 1, 1, config.hidden_size);
  const auto out_view = TensorView<float>::bshd(out.data(), 1, 1, 1, config.hidden_size);
  size_t l = 0;
  for (auto _ : state) {
    KvCache<T>& cache = *layers[l];
    if (path == Path::kAbsorbedAttention) {
      attend(TensorView<const float>::bshd(q.data(), 1, 1, heads, latent), cache.view({0}),
             TensorView<float>::bshd(q_out.data(), 1, 1, heads, config.kv_lora_rank),
             attention_options);
      benchmark::DoNotOptimize(q_out.data());
    } else {
      layer.forward(hidden_view, cache, {0}, out_view, options);
      benchmark::DoNotOptimize(out.data());
      cache.truncate(0, length);  // the next step decodes at the same length (costs nothing)
    }
    l = (l + 1) % layers.size();
  }
  const double cache_bytes = static_cast<double>(layers[0]->bytes_per_token() * length);
  const MlaWeights& w = layer.weights();
  const double weight_bytes =
      4.0 * static_cast<double>(w.q_proj.size() + w.kv_a_proj_with_mqa.size() +
                                w.kv_b_proj.size() + w.o_proj.size());
  double flops = 0.0, bytes = cache_bytes;
  if (path == Path::kAbsorbedAttention) {
    flops = mla_absorbed_attention_flops(config, 1, length);
  } else {
    flops = mla_projection_flops(config, 1) + (path == Path::kExpanded
                                                   ? mla_expanded_flops(config, 1, length + 1)
                                                   : mla_absorbed_flops(config, 1, length + 1));
    bytes += weight_bytes;
  }
  set_decode_counters(state, flops, bytes, num_threads);
}

template <class T>
void register_mla_decode() {
  for (Path path : {Path::kAbsorbedAttention, Path::kAbsorbed, Path::kExpanded}) {
    for (Index length : {4096, 32768}) {
      for (int threads : {1, 2}) {
        if (path != Path::kAbsorbedAttention && threads == 1) continue;
        const std::string name = std::string("BM_MlaDecode/") + element_name<T>() + "/" +
                                 path_name(path) + "/kv:" + std::to_string(length) +
                                 "/threads:" + std::to_string(threads);
        benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) {
          run_mla_decode<T>(state, path, length, threads);
        })->UseRealTime()->Unit(benchmark::kMicrosecond);
      }
    }
  }
}

/// The KV budget of one model width: 16 query heads of head_dim 128 (DeepSeek-V2-Lite's, hidden
/// 2048), with keys and values per head (MHA), shared by groups (GQA with 8 kv heads, MQA with 1),
/// or as Lite's latent (MLA). One bf16 decode step at 32768 cached tokens, attention alone (MLA
/// absorbed), both threads. Counters: bytes_per_token (per layer), MiB_per_32k (one layer's
/// cache of a 32k context) and tok_s; the benchmark names make the table.
struct BudgetRow {
  const char* name;
  Index num_kv_heads, head_dim_k, head_dim_v;
  bool latent;
};

constexpr Index kBudgetHeads = 16, kBudgetContext = 32768;

void run_kv_budget(benchmark::State& state, const BudgetRow& row) {
  using T = Eigen::bfloat16;
  constexpr int kThreads = 2;
  KvCacheConfig config{row.num_kv_heads, row.head_dim_k, row.head_dim_v, 1, kBudgetContext,
                       false, row.latent};
  auto& layers = layer_caches<T>(config, kBudgetContext);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> q(kBudgetHeads * row.head_dim_k), out(kBudgetHeads * row.head_dim_v);
  for (float& x : q) x = dist(rng);
  AttentionOptions options;
  options.mask = Mask::causal();
  options.num_threads = kThreads;
  if (row.latent) options.scale = static_cast<float>(MlaConfig::deepseek_v2_lite().softmax_scale());
  size_t l = 0;
  for (auto _ : state) {
    attend(TensorView<const float>::bshd(q.data(), 1, 1, kBudgetHeads, row.head_dim_k),
           layers[l]->view({0}),
           TensorView<float>::bshd(out.data(), 1, 1, kBudgetHeads, row.head_dim_v), options);
    benchmark::DoNotOptimize(out.data());
    l = (l + 1) % layers.size();
  }
  const double bytes_per_token = static_cast<double>(layers[0]->bytes_per_token());
  const double bytes = bytes_per_token * kBudgetContext;
  set_decode_counters(state,
                      attention_flops(1, kBudgetHeads, 1, kBudgetContext, row.head_dim_k,
                                      row.head_dim_v, options.mask),
                      bytes, kThreads);
  state.counters["bytes_per_token"] = bytes_per_token;
  state.counters["MiB_per_32k"] = bytes / (1 << 20);
}

void register_kv_budget() {
  static const BudgetRow rows[] = {{"mha", 16, 128, 128, false},
                                   {"gqa8", 8, 128, 128, false},
                                   {"mqa", 1, 128, 128, false},
                                   {"mla", 1, 576, 512, true}};
  for (const BudgetRow& row : rows) {
    const std::string name = std::string("BM_KvBudget/bf16/h16xd128/") + row.name + "/kv:" +
                             std::to_string(kBudgetContext);
    benchmark::RegisterBenchmark(name.c_str(), [&row](benchmark::State& state) {
      run_kv_budget(state, row);
    })->UseRealTime()->Unit(benchmark::kMicrosecond);
  }
}

[[maybe_unused]] const bool registered = [] {
  register_mla_decode<float>();
  register_mla_decode<Eigen::bfloat16>();
  register_kv_budget();
  return true;
}();

}  // namespace
}  // namespace headroom::bench
