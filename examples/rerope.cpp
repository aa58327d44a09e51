// SPDX-License-Identifier: MIT
// rerope: ReRoPE and Leaky ReRoPE (Su Jianlin, "Rectified Rotary Position Embeddings", 2023) in the
// attention kernel. Prints the relative positions they give a small case, so the window and the
// clamp can be seen, then runs a prompt twice the training length and a few decode steps through
// rerope_attention and a KvCache, timed against ordinary RoPE (apply_rope, then attend).
//
//   ./rerope [prompt_len]      (default 8192; the model is taken as trained on 4096 tokens)
#include <headroom/headroom.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace {

using headroom::Index;
using View = headroom::TensorView<const float>;
using Cache = headroom::KvCache<float>;

constexpr Index kHeads = 32, kKvHeads = 8, kDim = 128;  // GQA 32/8, as Llama 3 8B
constexpr Index kTrainingLength = 4096;
constexpr Index kWindow = 512;  // the published reference's window (bojone/rerope), and its leak:
constexpr double kLeak = 16.0;
constexpr Index kDecodeSteps = 8;

/// Prints the relative position RoPE is given for every (query i, key j) of an n-token sequence,
/// ReRoPE and Leaky ReRoPE side by side; '.' marks future keys, which the causal mask hides.
void print_relative_positions(Index n, const headroom::ReRopeConfig& rerope,
                              const headroom::ReRopeConfig& leaky) {
  std::printf("Relative position of query i (row) to key j (column); '.' = future key, masked.\n");
  std::printf("Inside the window (i - j < %td) both are RoPE's i - j; beyond it ReRoPE clamps to\n"
              "w and Leaky ReRoPE grows by 1/k per token.\n\n",
              rerope.window);
  std::printf("%-4s %-*s   Leaky ReRoPE (w = %td, k = %g)\n", "", static_cast<int>(3 * n),
              ("ReRoPE (w = " + std::to_string(rerope.window) + ")").c_str(), leaky.window,
              leaky.leak);
  const auto print_row = [n](const headroom::ReRopeConfig& config, Index i, int width) {
    for (Index j = 0; j < n; ++j) {
      if (i < 0) {
        std::printf("%*td", width, j);  // the header row: key indices
      } else if (j > i) {
        std::printf("%*s", width, ".");
      } else {
        std::printf("%*g", width, config.relative_position(i, j));
      }
    }
  };
  std::printf("i\\j ");
  print_row(rerope, -1, 3);
  std::printf("  ");
  print_row(leaky, -1, 4);
  std::printf("\n");
  for (Index i = 0; i < n; ++i) {
    std::printf("%4td ", i);
    print_row(rerope, i, 3);
    std::printf("  ");
    print_row(leaky, i, 4);
    std::printf("\n");
  }
}

/// Random projections of every token the run attends: the prompt, then the decode steps.
struct Tokens {
  std::vector<float> q;  // [1, n, kHeads, kDim]
  std::vector<float> k;  // [1, n, kKvHeads, kDim]
  std::vector<float> v;  // [1, n, kKvHeads, kDim]

  explicit Tokens(Index n) : q(n * kHeads * kDim), k(n * kKvHeads * kDim), v(k.size()) {
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    for (auto* buffer : {&q, &k, &v}) {
      for (float& x : *buffer) x = uniform(rng);
    }
  }
};

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

/// Runs one attention layer over tokens [start, start + n), appending their keys and values to
/// the cache, and returns the seconds it took. out: [1, n, kHeads, kDim].
/// Ordinary RoPE (rerope == null) rotates q and k at their absolute positions, caches the rotated
/// keys and attends; it works on copies (made before the clock starts) because a model rotates its
/// fresh projections in place. ReRoPE hands the raw q, k and v to rerope_attention, which caches
/// raw keys and rotates inside the kernel.
double attend_tokens(const headroom::RopeTable& table, const headroom::ReRope* rerope,
                     const Tokens& tokens, Index start, Index n, Cache& cache,
                     std::vector<float>& out) {
  const auto q = View::bshd(tokens.q.data() + start * kHeads * kDim, 1, n, kHeads, kDim);
  const auto k = View::bshd(tokens.k.data() + start * kKvHeads * kDim, 1, n, kKvHeads, kDim);
  const auto v = View::bshd(tokens.v.data() + start * kKvHeads * kDim, 1, n, kKvHeads, kDim);
  const auto out_view = headroom::TensorView<float>::bshd(out.data(), 1, n, kHeads, kDim);
  headroom::AttentionOptions options;
  options.mask = headroom::Mask::causal();
  if (rerope != nullptr) {
    std::vector<Index> positions(n);
    std::iota(positions.begin(), positions.end(), cache.length(0));
    const auto start_time = std::chrono::steady_clock::now();
    headroom::rerope_attention(*rerope, q, k, v, headroom::PositionView::bs(positions.data(), 1, n),
                               cache, {0}, out_view, options);
    return seconds_since(start_time);
  }
  std::vector<float> q_rot(q.data, q.data + q.size()), k_rot(k.data, k.data + k.size());
  const auto q_rot_view = headroom::TensorView<float>::bshd(q_rot.data(), 1, n, kHeads, kDim);
  const auto k_rot_view = headroom::TensorView<float>::bshd(k_rot.data(), 1, n, kKvHeads, kDim);
  const auto start_time = std::chrono::steady_clock::now();
  headroom::apply_rope(table, q_rot_view, k_rot_view, cache.length(0));
  cache.append(0, k_rot_view, v);
  headroom::attend(q_rot_view, cache.view({0}), out_view, options);
  return seconds_since(start_time);
}

}  // namespace

int main(int argc, char** argv) {
  const Index prompt_len = argc > 1 ? std::atol(argv[1]) : 8192;
  if (prompt_len <= kWindow) {
    std::fprintf(stderr, "usage: rerope [prompt_len > %td]\n", kWindow);
    return 1;
  }

  // The small case: 12 tokens, window 4, leak 2, so every regime fits on a screen.
  print_relative_positions(12, headroom::ReRopeConfig::rerope(4),
                           headroom::ReRopeConfig::leaky(4, 2.0));

  // The long case, for a model trained on 4096 tokens. The RoPE table must cover every position
  // attended, well past training; ordinary RoPE reads the same table.
  const Index total = prompt_len + kDecodeSteps;
  headroom::RopeConfig rope;
  rope.head_dim = kDim;
  rope.max_positions = total + 1;
  headroom::ReRopeConfig rerope_config = headroom::ReRopeConfig::rerope(kWindow);
  headroom::ReRopeConfig leaky_config = headroom::ReRopeConfig::leaky(kWindow, kLeak);
  rerope_config.training_length = leaky_config.training_length = kTrainingLength;
  const headroom::ReRope rerope(rope, rerope_config), leaky(rope, leaky_config);

  struct Variant {
    const char* name;
    const headroom::ReRope* rerope;  // null: ordinary RoPE
    double max_relative;             // the largest relative position a logit is given
  };
  const Index last = total - 1;
  const Variant variants[] = {
      {"RoPE (apply_rope + attend)", nullptr, static_cast<double>(last)},
      {"ReRoPE, w = 512", &rerope, rerope_config.relative_position(last, 0)},
      {"Leaky ReRoPE, w = 512, k = 16", &leaky, leaky_config.relative_position(last, 0)},
  };

  std::printf("\nPrompt of %td tokens (trained on %td) + %td decode steps, GQA %td/%td, D %td,\n"
              "f32 KvCache, %d threads. Ordinary RoPE is only the speed baseline here: past %td\n"
              "tokens it gives relative positions the model never saw, which ReRoPE avoids.\n\n",
              prompt_len, kTrainingLength, kDecodeSteps, kHeads, kKvHeads, kDim,
              headroom::default_num_threads(), kTrainingLength);
  std::printf("%-30s %10s %8s %10s %8s %14s\n", "position encoding", "prefill ms", "vs RoPE",
              "decode ms", "vs RoPE", "max rel. pos.");

  const Tokens tokens(total);
  Cache cache({kKvHeads, kDim, kDim, 1, total});
  std::vector<float> out(prompt_len * kHeads * kDim), rope_rows;
  double rope_prefill = 0.0, rope_decode = 0.0, max_diff = 0.0;
  for (const Variant& variant : variants) {
    cache.reset();
    const double prefill =
        attend_tokens(rerope.table(), variant.rerope, tokens, 0, prompt_len, cache, out);
    // Queries at positions < w see only keys inside the window, where ReRoPE is RoPE: their rows
    // must match ordinary RoPE's, which checks the kernel's rotations.
    const auto window_rows = out.begin() + kWindow * kHeads * kDim;
    if (variant.rerope == nullptr) {
      rope_rows.assign(out.begin(), window_rows);
    } else {
      for (size_t i = 0; i < rope_rows.size(); ++i) {
        max_diff = std::max(max_diff, static_cast<double>(std::abs(out[i] - rope_rows[i])));
      }
    }
    double decode = 0.0;
    for (Index step = 0; step < kDecodeSteps; ++step) {
      decode += attend_tokens(rerope.table(), variant.rerope, tokens, prompt_len + step, 1, cache,
                              out) /
                kDecodeSteps;
    }
    if (variant.rerope == nullptr) {
      rope_prefill = prefill;
      rope_decode = decode;
    }
    std::printf("%-30s %10.1f %7.2fx %10.2f %7.2fx %14.1f\n", variant.name, prefill * 1e3,
                prefill / rope_prefill, decode * 1e3, decode / rope_decode, variant.max_relative);
  }
  // Tolerance: the same float rotations in another order, and sums in another order.
  const bool ok = max_diff < 1e-4;
  std::printf("\nQueries before position %td (all keys inside the window) match ordinary RoPE:\n"
              "max |difference| %.2e, %s\n",
              kWindow, max_diff, ok ? "ok" : "MISMATCH");
  return ok ? 0 : 1;
}
