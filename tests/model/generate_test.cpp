// SPDX-License-Identifier: MIT
// Tests of generation: the greedy loop written out by hand, stop tokens, budgets and capacity.
#include "headroom/model/generate.hpp"

#include <gtest/gtest.h>

#include <vector>

#include "expect_error.hpp"

namespace headroom {
namespace {

using testing::expect_error;

DecoderConfig small_config() {
  DecoderConfig config;
  config.vocab_size = 23;
  config.hidden_size = 16;
  config.intermediate_size = 20;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.head_dim = 4;
  config.max_position_embeddings = 32;
  return config;
}

std::int32_t argmax(const Eigen::VectorXf& logits) {
  Index best = 0;
  for (Index i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return static_cast<std::int32_t>(best);
}

TEST(GenerateTest, GreedyGenerationIsTheLoopOfForwardAndArgmax) {
  const DecoderConfig config = small_config();
  const DecoderWeights weights = DecoderWeights::random(config, 31);
  Decoder<float> by_hand(config, weights, DecoderOptions{20, 1});
  std::vector<std::int32_t> expected;
  Eigen::VectorXf logits = by_hand.forward({4, 9, 1});
  for (int i = 0; i < 6; ++i) {
    expected.push_back(argmax(logits));
    logits = by_hand.forward({expected.back()});
  }
  Decoder<float> decoder(config, weights, DecoderOptions{20, 1});
  GenerationConfig greedy;
  greedy.max_new_tokens = 6;
  greedy.sampler.temperature = 0.0f;
  std::vector<std::int32_t> streamed;
  const auto generated =
      generate(decoder, {4, 9, 1}, greedy, [&](std::int32_t token) { streamed.push_back(token); });
  EXPECT_EQ(generated, expected);
  EXPECT_EQ(streamed, expected);
  EXPECT_EQ(decoder.position(), 3 + 5);  // the last token is not fed

  // Stopping at the third token's id ends there, the stop token included.
  Decoder<float> stopped(config, weights, DecoderOptions{20, 1});
  greedy.stop_tokens = {expected[2]};
  const auto until_stop = generate(stopped, {4, 9, 1}, greedy);
  const auto first_stop = std::find(expected.begin(), expected.end(), expected[2]);
  EXPECT_EQ(until_stop, std::vector<std::int32_t>(expected.begin(), first_stop + 1));
}

TEST(GenerateTest, StopsAtTheDecodersCapacityAndRefusesBadRequests) {
  const DecoderConfig config = small_config();
  const DecoderWeights weights = DecoderWeights::random(config, 32);
  Decoder<float> decoder(config, weights, DecoderOptions{8, 1});
  GenerationConfig sampled;
  sampled.max_new_tokens = 100;
  sampled.sampler.seed = 5;
  // 3 prompt tokens and 8 slots: 5 more fit, and the sixth is picked but never fed.
  EXPECT_EQ(generate(decoder, {1, 2, 3}, sampled).size(), 6u);
  EXPECT_EQ(decoder.position(), 8);

  Decoder<float> fresh(config, weights, DecoderOptions{8, 1});
  sampled.max_new_tokens = -1;
  expect_error([&] { generate(fresh, {1}, sampled); },
               "generate: config.max_new_tokens (-1) must be >= 0");
  sampled.max_new_tokens = 3;
  sampled.sampler.top_p = 2.0f;
  expect_error([&] { generate(fresh, {1}, sampled); }, "Sampler: top_p (2) must be in (0, 1]");
  sampled.sampler.top_p = 1.0f;
  expect_error([&] { generate(fresh, std::vector<std::int32_t>(9, 1), sampled); },
               "tokens (9) would take the sequence from 0 past max_tokens (8)");
  EXPECT_EQ(fresh.position(), 0);
  EXPECT_TRUE(generate(fresh, {1}, GenerationConfig{0, {}, {}}).empty());
}

}  // namespace
}  // namespace headroom
