// SPDX-License-Identifier: MIT
// Tests of config.json reading: DeepSeek-V2's attention, every RoPE scaling kind transformers
// writes, and the errors of missing or mistyped fields.
#include "headroom/io/hf_config.hpp"

#include <gtest/gtest.h>

#include <string>

#include "expect_error.hpp"

namespace headroom {
namespace {

using testing::expect_error;

// DeepSeek-V2-Lite's config.json, its attention fields as published.
const char* const kDeepSeekV2Lite = R"({
  "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
  "hidden_size": 2048, "num_attention_heads": 16, "num_key_value_heads": 16,
  "q_lora_rank": null, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
  "v_head_dim": 128, "rms_norm_eps": 1e-06, "rope_theta": 10000,
  "max_position_embeddings": 163840,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707,
                   "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096,
                   "type": "yarn"}})";

void expect_same_mla(const MlaConfig& actual, const MlaConfig& expected) {
  EXPECT_EQ(actual.hidden_size, expected.hidden_size);
  EXPECT_EQ(actual.num_attention_heads, expected.num_attention_heads);
  EXPECT_EQ(actual.q_lora_rank, expected.q_lora_rank);
  EXPECT_EQ(actual.kv_lora_rank, expected.kv_lora_rank);
  EXPECT_EQ(actual.qk_nope_head_dim, expected.qk_nope_head_dim);
  EXPECT_EQ(actual.qk_rope_head_dim, expected.qk_rope_head_dim);
  EXPECT_EQ(actual.v_head_dim, expected.v_head_dim);
  EXPECT_EQ(actual.rms_norm_eps, expected.rms_norm_eps);
  EXPECT_EQ(actual.rope_theta, expected.rope_theta);
  EXPECT_EQ(actual.max_position_embeddings, expected.max_position_embeddings);
  const RopeScaling &a = actual.rope_scaling, &e = expected.rope_scaling;
  EXPECT_EQ(a.kind, e.kind);
  EXPECT_EQ(a.factor, e.factor);
  EXPECT_EQ(a.original_max_position_embeddings, e.original_max_position_embeddings);
  EXPECT_EQ(a.beta_fast, e.beta_fast);
  EXPECT_EQ(a.beta_slow, e.beta_slow);
  EXPECT_EQ(a.mscale, e.mscale);
  EXPECT_EQ(a.mscale_all_dim, e.mscale_all_dim);
  EXPECT_EQ(actual.softmax_scale(), expected.softmax_scale());
}

TEST(HfConfigTest, ReadsDeepSeekV2Attention) {
  expect_same_mla(mla_config_from_json(nlohmann::json::parse(kDeepSeekV2Lite)),
                  MlaConfig::deepseek_v2_lite());
  nlohmann::json v2 = nlohmann::json::parse(kDeepSeekV2Lite);
  v2["hidden_size"] = 5120;
  v2["num_attention_heads"] = 128;
  v2["q_lora_rank"] = 1536;
  expect_same_mla(mla_config_from_json(v2), MlaConfig::deepseek_v2());
  // DeepSeek's YaRN without mscale fields: mscale 1, mscale_all_dim 0 (no softmax correction).
  v2["rope_scaling"].erase("mscale");
  v2["rope_scaling"].erase("mscale_all_dim");
  const MlaConfig defaults = mla_config_from_json(v2);
  EXPECT_EQ(defaults.rope_scaling.mscale, 1.0);
  EXPECT_EQ(defaults.rope_scaling.mscale_all_dim, 0.0);
  EXPECT_DOUBLE_EQ(defaults.softmax_scale(), 1.0 / std::sqrt(192.0));
}

RopeScaling scaling_of(const std::string& rope_scaling, Index max_positions = 131072) {
  return rope_scaling_from_json(nlohmann::json::parse("{\"rope_scaling\": " + rope_scaling + "}"),
                                max_positions);
}

TEST(HfConfigTest, ReadsEveryRopeScalingKind) {
  using Kind = RopeScaling::Kind;
  EXPECT_EQ(rope_scaling_from_json(nlohmann::json::object(), 4096).kind, Kind::kNone);
  EXPECT_EQ(scaling_of("null").kind, Kind::kNone);
  EXPECT_EQ(scaling_of(R"({"rope_type": "default"})").kind, Kind::kNone);

  const RopeScaling linear = scaling_of(R"({"type": "linear", "factor": 2.0})");
  EXPECT_EQ(linear.kind, Kind::kLinear);
  EXPECT_EQ(linear.factor, 2.0);

  const RopeScaling dynamic = scaling_of(R"({"type": "dynamic", "factor": 4})", 2048);
  EXPECT_EQ(dynamic.kind, Kind::kDynamicNtk);
  EXPECT_EQ(dynamic.original_max_position_embeddings, 2048);

  // Llama 3.1's.
  const RopeScaling llama3 = scaling_of(
      R"({"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192, "rope_type": "llama3"})");
  EXPECT_EQ(llama3.kind, Kind::kLlama3);
  EXPECT_EQ(llama3.factor, 8.0);
  EXPECT_EQ(llama3.low_freq_factor, 1.0);
  EXPECT_EQ(llama3.high_freq_factor, 4.0);
  EXPECT_EQ(llama3.original_max_position_embeddings, 8192);

  // Qwen2.5's long-context YaRN, then one with every optional field.
  const RopeScaling qwen = scaling_of(
      R"({"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"})");
  EXPECT_EQ(qwen.kind, Kind::kYarn);
  EXPECT_EQ(qwen.original_max_position_embeddings, 32768);
  EXPECT_EQ(qwen.beta_fast, 32.0);
  EXPECT_EQ(qwen.beta_slow, 1.0);
  EXPECT_EQ(qwen.mscale, 0.0);
  EXPECT_FALSE(qwen.attention_factor.has_value());
  EXPECT_TRUE(qwen.truncate);
  const RopeScaling yarn = scaling_of(
      R"({"rope_type": "yarn", "factor": 32, "beta_fast": 16, "beta_slow": 2,
          "attention_factor": 1.25, "truncate": false})",
      4096);
  EXPECT_EQ(yarn.original_max_position_embeddings, 4096);  // max_position_embeddings
  EXPECT_EQ(yarn.beta_fast, 16.0);
  EXPECT_EQ(yarn.beta_slow, 2.0);
  EXPECT_EQ(yarn.attention_factor.value_or(0.0), 1.25);
  EXPECT_FALSE(yarn.truncate);
}

TEST(HfConfigTest, RefusesMissingOrMistypedFieldsByName) {
  expect_error([] { scaling_of(R"({"type": "longrope", "factor": 2})"); },
               "headroom::rope_scaling_from_json: config.json: rope_scaling: type \"longrope\" is "
               "not one headroom implements");
  expect_error([] { scaling_of(R"({"type": "linear", "factor": "2"})"); },
               "config.json: rope_scaling: field \"factor\" (\"2\") is not a finite number");
  expect_error([] { scaling_of(R"({"type": "linear"})"); },
               "config.json: rope_scaling: field \"factor\" is missing");
  expect_error([] { scaling_of(R"({"type": "yarn", "factor": 2, "truncate": 1})"); },
               "field \"truncate\" (1) is not true or false");
  expect_error([] { scaling_of(R"({"rope_type": 3})"); }, "field \"rope_type\" (3) is not a string");
  expect_error([] { scaling_of("[1]"); }, "config.json: rope_scaling ([1]) is not a JSON object");

  nlohmann::json config = nlohmann::json::parse(kDeepSeekV2Lite);
  config.erase("kv_lora_rank");
  expect_error([&] { mla_config_from_json(config, "lite/config.json"); },
               "headroom::mla_config_from_json: lite/config.json: field \"kv_lora_rank\" is "
               "missing");
  config["kv_lora_rank"] = -512;
  expect_error([&] { mla_config_from_json(config); },
               "field \"kv_lora_rank\" (-512) is not an integer in [0, 2^62]");
  config["kv_lora_rank"] = 0;
  expect_error([&] { mla_config_from_json(config); }, "MlaConfig: kv_lora_rank (0) must be in");
  expect_error([] { read_mla_config("/nonexistent/headroom"); },
               "read_mla_config: path (\"/nonexistent/headroom/config.json\"): cannot open");
}

}  // namespace
}  // namespace headroom
