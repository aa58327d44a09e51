// SPDX-License-Identifier: MIT
// Picks the next token from a decoder's logits: greedy, or sampled with temperature, top-k and
// top-p (nucleus), reproducibly from a seed.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "headroom/core/error.hpp"
#include "headroom/core/tensor_view.hpp"

namespace headroom {

/// How Sampler picks tokens. Applied in the order of transformers' logits warpers: temperature,
/// then top-k, then top-p, then a draw from what is left.
struct SamplerConfig {
  /// Divides the logits; 0 means greedy (the largest logit, the lowest id among equals).
  float temperature = 1.0f;
  /// Keeps the k most likely tokens, and those tied with the k-th (as transformers' top-k, which
  /// keeps every logit >= the k-th largest); 0 keeps all.
  Index top_k = 0;
  /// Keeps the fewest most likely tokens whose probabilities sum to at least top_p (Holtzman et
  /// al. 2020, "The Curious Case of Neural Text Degeneration"); 1 keeps all.
  float top_p = 1.0f;
  /// Seeds the draws: the same seed and logits give the same tokens on every platform.
  std::uint64_t seed = 0;
};

/// Picks tokens from logits as its SamplerConfig says; holds the random state of the draws.
class Sampler {
 public:
  /// Throws headroom::Error unless temperature is finite and >= 0, top_k >= 0 and top_p is in
  /// (0, 1].
  explicit Sampler(const SamplerConfig& config = {}) : config_(validated(config)), rng_(config.seed) {}

  const SamplerConfig& config() const { return config_; }

  /// Returns the id picked from `logits` [vocab_size]. Throws headroom::Error if the logits are
  /// empty, hold a NaN or +inf, or are all -inf (no token possible).
  std::int32_t sample(const Eigen::VectorXf& logits) {
    constexpr const char* kWhere = "Sampler::sample";
    const Index vocab = logits.size();
    HEADROOM_CHECK(vocab > 0 && vocab <= std::numeric_limits<std::int32_t>::max(), kWhere,
                   "logits.size() (", vocab, ") must be in [1, 2^31)");
    Index best = -1;
    for (Index i = 0; i < vocab; ++i) {
      HEADROOM_CHECK(!std::isnan(logits[i]) && logits[i] != std::numeric_limits<float>::infinity(),
                     kWhere, "logits[", i, "] (", logits[i],
                     ") is NaN or +inf; expected a number or -inf");
      if (logits[i] != -std::numeric_limits<float>::infinity() &&
          (best < 0 || logits[i] > logits[best])) {
        best = i;
      }
    }
    HEADROOM_CHECK(best >= 0, kWhere, "every logit is -inf: no token can be picked");
    if (config_.temperature == 0.0f) return static_cast<std::int32_t>(best);

    // The candidates, most likely first (ties by id), with exp((logit - max) / temperature).
    const Index keep = config_.top_k > 0 ? std::min(config_.top_k, vocab) : vocab;
    order_.resize(static_cast<size_t>(vocab));
    std::iota(order_.begin(), order_.end(), Index{0});
    const auto more_likely = [&](Index a, Index b) {
      return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
    };
    std::partial_sort(order_.begin(), order_.begin() + keep, order_.end(), more_likely);
    // Ties with the k-th stay, in id order after it.
    const float kth = logits[order_[static_cast<size_t>(keep - 1)]];
    const auto tied_end = std::partition(order_.begin() + keep, order_.end(),
                                         [&](Index id) { return logits[id] == kth; });
    std::sort(order_.begin() + keep, tied_end);
    order_.erase(tied_end, order_.end());
    weights_.resize(order_.size());
    const double top = logits[best], temperature = config_.temperature;
    double total = 0.0;
    for (size_t i = 0; i < order_.size(); ++i) {
      total += weights_[i] = std::exp((logits[order_[i]] - top) / temperature);
    }
    // Nucleus: the shortest prefix reaching top_p of the probability (at least one token).
    size_t kept = order_.size();
    if (config_.top_p < 1.0f) {
      double cumulative = 0.0;
      for (size_t i = 0; i < order_.size(); ++i) {
        cumulative += weights_[i] / total;
        if (cumulative >= config_.top_p) {
          kept = i + 1;
          break;
        }
      }
      total = std::accumulate(weights_.begin(),
                              weights_.begin() + static_cast<std::ptrdiff_t>(kept), 0.0);
    }
    // u in [0, 1) from 53 random bits: std's distributions differ between standard libraries.
    const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53 * total;
    double cumulative = 0.0;
    for (size_t i = 0; i < kept; ++i) {
      cumulative += weights_[i];
      if (u < cumulative) return static_cast<std::int32_t>(order_[i]);
    }
    return static_cast<std::int32_t>(order_[kept - 1]);  // u within rounding of the total
  }

 private:
  static SamplerConfig validated(const SamplerConfig& config) {
    constexpr const char* kWhere = "Sampler";
    HEADROOM_CHECK(config.temperature >= 0.0f && std::isfinite(config.temperature), kWhere,
                   "temperature (", config.temperature, ") must be a finite number >= 0");
    HEADROOM_CHECK(config.top_k >= 0, kWhere, "top_k (", config.top_k, ") must be >= 0");
    HEADROOM_CHECK(config.top_p > 0.0f && config.top_p <= 1.0f, kWhere, "top_p (", config.top_p,
                   ") must be in (0, 1]");
    return config;
  }

  SamplerConfig config_;
  std::mt19937_64 rng_;
  std::vector<Index> order_;     // candidate ids, most likely first
  std::vector<double> weights_;  // their unnormalised probabilities
};

}  // namespace headroom
