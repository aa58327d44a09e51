// SPDX-License-Identifier: MIT
// Tests of token picking: greedy, the sampled distribution against softmax, top-k and top-p
// supports, reproducibility, and bad logits or settings.
#include "headroom/model/sampler.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "expect_error.hpp"

namespace headroom {
namespace {

using testing::expect_error;

Eigen::VectorXf logits_of(std::vector<float> values) {
  return Eigen::Map<Eigen::VectorXf>(values.data(), static_cast<Index>(values.size()));
}

// Counts of each id over `draws` samples.
std::vector<int> histogram(Sampler& sampler, const Eigen::VectorXf& logits, int draws) {
  std::vector<int> counts(static_cast<size_t>(logits.size()), 0);
  for (int i = 0; i < draws; ++i) ++counts[static_cast<size_t>(sampler.sample(logits))];
  return counts;
}

TEST(SamplerTest, GreedyPicksTheLargestLogitAndTheLowestIdAmongEquals) {
  Sampler greedy(SamplerConfig{0.0f, 0, 1.0f, 0});
  EXPECT_EQ(greedy.sample(logits_of({0.5f, 2.0f, -1.0f, 1.5f})), 1);
  EXPECT_EQ(greedy.sample(logits_of({3.0f, 1.0f, 3.0f})), 0);
  const float ninf = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(greedy.sample(logits_of({ninf, ninf, -7.0f})), 2);
  // top_k = 1 and a tiny top_p leave the same token at any temperature.
  Sampler top1(SamplerConfig{5.0f, 1, 1.0f, 1});
  Sampler nucleus(SamplerConfig{5.0f, 0, 1e-6f, 1});
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(top1.sample(logits_of({0.5f, 2.0f, -1.0f, 1.9f})), 1);
    EXPECT_EQ(nucleus.sample(logits_of({0.5f, 2.0f, -1.0f, 1.9f})), 1);
  }
}

TEST(SamplerTest, DrawsFollowTheTemperedSoftmaxOfWhatTopKAndTopPKeep) {
  const Eigen::VectorXf logits = logits_of({1.0f, 0.0f, 2.0f, -1.0f, 0.5f});
  const float ninf = -std::numeric_limits<float>::infinity();
  // Each case: the config and the logits the kept tokens are drawn by (-inf: never drawn).
  struct Case {
    SamplerConfig config;
    std::vector<float> expected_logits;
  };
  const std::vector<Case> cases = {
      {{1.0f, 0, 1.0f, 3}, {1.0f, 0.0f, 2.0f, -1.0f, 0.5f}},
      {{0.5f, 0, 1.0f, 4}, {2.0f, 0.0f, 4.0f, -2.0f, 1.0f}},
      {{1.0f, 2, 1.0f, 5}, {1.0f, ninf, 2.0f, ninf, ninf}},
      // Softmax of the logits: 2.0 -> 0.563, 1.0 -> 0.207, 0.5 -> 0.126, 0.0 -> 0.076, ...:
      // top_p 0.6 keeps the first two (0.770), top_p 0.8 three (0.896).
      {{1.0f, 0, 0.6f, 6}, {1.0f, ninf, 2.0f, ninf, ninf}},
      {{1.0f, 0, 0.8f, 7}, {1.0f, ninf, 2.0f, ninf, 0.5f}},
  };
  constexpr int kDraws = 40000;
  for (const Case& c : cases) {
    Sampler sampler(c.config);
    const std::vector<int> counts = histogram(sampler, logits, kDraws);
    double total = 0.0;
    for (float l : c.expected_logits) total += std::exp(static_cast<double>(l));
    for (size_t i = 0; i < counts.size(); ++i) {
      const double p = std::exp(static_cast<double>(c.expected_logits[i])) / total;
      // Five standard deviations of a binomial count: a fixed seed, so no flakiness either way.
      const double sigma = std::sqrt(kDraws * p * (1.0 - p));
      EXPECT_NEAR(counts[i], kDraws * p, 5.0 * sigma + 1e-9)
          << "id " << i << " temperature " << c.config.temperature << " top_k "
          << c.config.top_k << " top_p " << c.config.top_p;
    }
  }
}

TEST(SamplerTest, TopKKeepsTiesWithTheKth) {
  // The third largest, 0.5, is tied: top_k 3 keeps ids 2, 0, 1 and 3, never 4.
  Sampler sampler(SamplerConfig{1.0f, 3, 1.0f, 9});
  const std::vector<int> counts = histogram(sampler, logits_of({1.0f, 0.5f, 2.0f, 0.5f, -1.0f}), 4000);
  EXPECT_GT(counts[1], 300);
  EXPECT_GT(counts[3], 300);
  EXPECT_EQ(counts[4], 0);
}

TEST(SamplerTest, TheSameSeedGivesTheSameTokens) {
  const Eigen::VectorXf logits = logits_of({0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f});
  Sampler a(SamplerConfig{1.0f, 0, 1.0f, 42}), b(SamplerConfig{1.0f, 0, 1.0f, 42});
  Sampler c(SamplerConfig{1.0f, 0, 1.0f, 43});
  std::vector<int> from_a, from_b, from_c;
  for (int i = 0; i < 64; ++i) {
    from_a.push_back(a.sample(logits));
    from_b.push_back(b.sample(logits));
    from_c.push_back(c.sample(logits));
  }
  EXPECT_EQ(from_a, from_b);
  EXPECT_NE(from_a, from_c);
}

TEST(SamplerTest, RefusesBadLogitsAndSettings) {
  Sampler sampler;
  const float ninf = -std::numeric_limits<float>::infinity();
  expect_error([&] { sampler.sample(Eigen::VectorXf()); },
               "Sampler::sample: logits.size() (0) must be in [1, 2^31)");
  expect_error([&] { sampler.sample(logits_of({0.0f, std::nanf("")})); },
               "Sampler::sample: logits[1] (nan) is NaN or +inf; expected a number or -inf");
  expect_error([&] { sampler.sample(logits_of({-ninf})); }, "logits[0] (inf) is NaN or +inf");
  expect_error([&] { sampler.sample(logits_of({ninf, ninf})); },
               "every logit is -inf: no token can be picked");
  expect_error([] { Sampler(SamplerConfig{-1.0f, 0, 1.0f, 0}); },
               "Sampler: temperature (-1) must be a finite number >= 0");
  expect_error([] { Sampler(SamplerConfig{1.0f, -2, 1.0f, 0}); }, "top_k (-2) must be >= 0");
  expect_error([] { Sampler(SamplerConfig{1.0f, 0, 0.0f, 0}); }, "top_p (0) must be in (0, 1]");
}

}  // namespace
}  // namespace headroom
