// SPDX-License-Identifier: MIT
// Tests of generation_config.json reading: published files, transformers' defaults, the fallback
// to config.json, and the errors of mistyped or out-of-range fields.
#include "headroom/io/generation_config.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "expect_error.hpp"
#include "safetensors_writer.hpp"

namespace headroom {
namespace {

using testing::expect_error;

// Llama 3.1 8B Instruct's generation_config.json as published: its end-of-turn (128009) and
// end-of-message (128008) tokens are listed only here; config.json names 128001 alone.
const char* const kLlama31Instruct = R"({"bos_token_id": 128000, "do_sample": true,
  "eos_token_id": [128001, 128008, 128009], "temperature": 0.6, "top_p": 0.9,
  "transformers_version": "4.42.3"})";

DecoderConfig llama31_config() {
  DecoderConfig config;
  config.vocab_size = 128256;
  config.eos_token_ids = {128001};
  return config;
}

TEST(GenerationConfigTest, ReadsPublishedStopTokensAndSampling) {
  const GenerationConfig generation =
      generation_config_from_json(nlohmann::json::parse(kLlama31Instruct), llama31_config());
  EXPECT_EQ(generation.stop_tokens, (std::vector<std::int32_t>{128001, 128008, 128009}));
  EXPECT_EQ(generation.sampler.temperature, 0.6f);
  EXPECT_EQ(generation.sampler.top_p, 0.9f);
  EXPECT_EQ(generation.sampler.top_k, 50);  // transformers' default, absent from the file
  EXPECT_EQ(generation.max_new_tokens, GenerationConfig{}.max_new_tokens);
}

TEST(GenerationConfigTest, GreedyUnlessDoSampleWhateverTheTemperature) {
  nlohmann::json config = nlohmann::json::parse(kLlama31Instruct);
  config.erase("do_sample");
  EXPECT_EQ(generation_config_from_json(config, llama31_config()).sampler.temperature, 0.0f);
  config["do_sample"] = false;
  EXPECT_EQ(generation_config_from_json(config, llama31_config()).sampler.temperature, 0.0f);
  config["do_sample"] = true;
  config.erase("temperature");
  EXPECT_EQ(generation_config_from_json(config, llama31_config()).sampler.temperature, 1.0f);
}

TEST(GenerationConfigTest, AbsentFieldsKeepConfigJsonsStopTokensAndDefaults) {
  const nlohmann::json config = nlohmann::json::parse(R"({"bos_token_id": 1, "max_new_tokens": 7,
    "top_k": 0, "eos_token_id": null})");
  const GenerationConfig generation = generation_config_from_json(config, llama31_config());
  EXPECT_EQ(generation.stop_tokens, std::vector<std::int32_t>{128001});
  EXPECT_EQ(generation.max_new_tokens, 7);
  EXPECT_EQ(generation.sampler.top_k, 0);
  EXPECT_EQ(generation.sampler.top_p, 1.0f);
  EXPECT_EQ(generation.sampler.temperature, 0.0f);
  EXPECT_EQ(generation_config_from_json(nlohmann::json::parse(R"({"eos_token_id": 2})"),
                                        llama31_config())
                .stop_tokens,
            std::vector<std::int32_t>{2});
}

TEST(GenerationConfigTest, BadFieldsThrowErrorsNamingTheField) {
  const DecoderConfig llama = llama31_config();
  const auto with = [](const char* field, nlohmann::json value) {
    nlohmann::json config = nlohmann::json::parse(kLlama31Instruct);
    config[field] = std::move(value);
    return config;
  };
  expect_error([&] { generation_config_from_json(with("eos_token_id", 128256), llama); },
               "eos_token_id (128256) is not a token id or a list of them in [0, vocab_size "
               "(128256))");
  expect_error([&] { generation_config_from_json(with("eos_token_id", {1, -2}), llama); },
               "eos_token_id ([1,-2]) is not a token id");
  expect_error([&] { generation_config_from_json(with("eos_token_id", "</s>"), llama); },
               "eos_token_id (\"</s>\") is not a token id");
  expect_error([&] { generation_config_from_json(with("temperature", -0.5), llama); },
               "temperature (-0.5) must be in [0, 1e30]");
  expect_error([&] { generation_config_from_json(with("temperature", "hot"), llama); },
               "field \"temperature\" (\"hot\") is not a finite number");
  expect_error([&] { generation_config_from_json(with("top_p", 0.0), llama); },
               "top_p (0) must be in (0, 1]");
  expect_error([&] { generation_config_from_json(with("top_p", 1.5), llama); },
               "top_p (1.5) must be in (0, 1]");
  expect_error([&] { generation_config_from_json(with("top_k", -1), llama); },
               "field \"top_k\" (-1) is not an integer in [0, 2^62]");
  expect_error([&] { generation_config_from_json(with("do_sample", "yes"), llama); },
               "field \"do_sample\" (\"yes\") is not true or false");
  expect_error([&] { generation_config_from_json(with("max_new_tokens", 2.5), llama); },
               "field \"max_new_tokens\" (2.5) is not an integer");
  expect_error([&] { generation_config_from_json(nlohmann::json::array(), llama); },
               "generation_config.json ([]) is not a JSON object");
}

TEST(GenerationConfigTest, ReadsTheFileOfADirectoryOrFallsBackToConfigJson) {
  const testing::ScratchDirectory dir("generation_config_test");
  const GenerationConfig fallback = read_generation_config(dir.path(), llama31_config());
  EXPECT_EQ(fallback.stop_tokens, std::vector<std::int32_t>{128001});
  EXPECT_EQ(fallback.sampler.temperature, 0.0f);  // transformers: greedy without the file
  const std::string text = kLlama31Instruct;
  testing::write_file(dir.file("generation_config.json"),
                      std::vector<unsigned char>(text.begin(), text.end()));
  const GenerationConfig read = read_generation_config(dir.path(), llama31_config());
  EXPECT_EQ(read.stop_tokens, (std::vector<std::int32_t>{128001, 128008, 128009}));
  EXPECT_EQ(read.sampler.temperature, 0.6f);
  const std::string truncated = text.substr(0, text.size() / 2);
  testing::write_file(dir.file("generation_config.json"),
                      std::vector<unsigned char>(truncated.begin(), truncated.end()));
  expect_error([&] { read_generation_config(dir.path(), llama31_config()); },
               "generation_config.json: not valid JSON");
}

}  // namespace
}  // namespace headroom
