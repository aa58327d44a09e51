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

// Llama 3.2 1B's, Qwen2.5 0.5B's and Mistral 7B v0.1's config.json fields (as published).
const char* const kLlama32 = R"({"architectures": ["LlamaForCausalLM"], "attention_bias": false,
  "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu",
  "hidden_size": 2048, "intermediate_size": 8192, "max_position_embeddings": 131072,
  "mlp_bias": false, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
  "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 32.0,
  "high_freq_factor": 4.0, "low_freq_factor": 1.0, "original_max_position_embeddings": 8192,
  "rope_type": "llama3"}, "rope_theta": 500000.0, "tie_word_embeddings": true,
  "torch_dtype": "bfloat16", "vocab_size": 128256})";
const char* const kQwen25 = R"({"architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu",
  "hidden_size": 896, "intermediate_size": 4864, "max_position_embeddings": 32768,
  "max_window_layers": 21, "model_type": "qwen2", "num_attention_heads": 14,
  "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "sliding_window": 32768, "tie_word_embeddings": true, "use_sliding_window": false,
  "vocab_size": 151936})";
const char* const kMistral = R"({"architectures": ["MistralForCausalLM"], "hidden_act": "silu",
  "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 32768,
  "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32,
  "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
  "tie_word_embeddings": false, "vocab_size": 32000})";

TEST(HfConfigTest, ReadsLlamaQwen2AndMistralDecoders) {
  const DecoderConfig llama = decoder_config_from_json(nlohmann::json::parse(kLlama32));
  EXPECT_EQ(llama.model_type, "llama");
  EXPECT_EQ(llama.vocab_size, 128256);
  EXPECT_EQ(llama.hidden_size, 2048);
  EXPECT_EQ(llama.intermediate_size, 8192);
  EXPECT_EQ(llama.num_hidden_layers, 16);
  EXPECT_EQ(llama.num_attention_heads, 32);
  EXPECT_EQ(llama.num_key_value_heads, 8);
  EXPECT_EQ(llama.head_dim, 64);
  EXPECT_EQ(llama.rms_norm_eps, 1e-5);
  EXPECT_EQ(llama.rope_theta, 500000.0);
  EXPECT_EQ(llama.rope_scaling.kind, RopeScaling::Kind::kLlama3);
  EXPECT_EQ(llama.rope_scaling.factor, 32.0);
  EXPECT_TRUE(llama.tie_word_embeddings);
  EXPECT_FALSE(llama.qkv_bias);
  EXPECT_FALSE(llama.o_bias);
  EXPECT_EQ(llama.sliding_window, 0);
  EXPECT_EQ(llama.eos_token_ids, std::vector<std::int32_t>{128001});

  const DecoderConfig qwen = decoder_config_from_json(nlohmann::json::parse(kQwen25));
  EXPECT_EQ(qwen.head_dim, 64);  // 896 / 14
  EXPECT_EQ(qwen.num_key_value_heads, 2);
  EXPECT_TRUE(qwen.qkv_bias);
  EXPECT_FALSE(qwen.o_bias);
  EXPECT_EQ(qwen.sliding_window, 0);  // use_sliding_window is false
  EXPECT_EQ(qwen.rope_scaling.kind, RopeScaling::Kind::kNone);

  const DecoderConfig mistral = decoder_config_from_json(nlohmann::json::parse(kMistral));
  EXPECT_EQ(mistral.sliding_window, 4096);
  EXPECT_EQ(mistral.head_dim, 128);
  EXPECT_FALSE(mistral.tie_word_embeddings);

  // Fields left out take the defaults of the model's transformers config class; null ones mean
  // none (the window) or MHA (the kv heads).
  nlohmann::json sparse = nlohmann::json::parse(kMistral);
  sparse.erase("num_key_value_heads");
  sparse.erase("sliding_window");
  const DecoderConfig mistral_defaults = decoder_config_from_json(sparse);
  EXPECT_EQ(mistral_defaults.num_key_value_heads, 8);
  EXPECT_EQ(mistral_defaults.sliding_window, 4096);
  nlohmann::json no_kv = nlohmann::json::parse(kMistral);
  no_kv["num_key_value_heads"] = nullptr;
  no_kv["sliding_window"] = nullptr;
  no_kv["attention_bias"] = true;  // MistralAttention has no biases whatever this says
  const DecoderConfig mha = decoder_config_from_json(no_kv);
  EXPECT_EQ(mha.num_key_value_heads, 32);
  EXPECT_EQ(mha.sliding_window, 0);
  EXPECT_FALSE(mha.qkv_bias);
  EXPECT_FALSE(mha.o_bias);
  EXPECT_TRUE(mha.eos_token_ids.empty());
  no_kv["eos_token_id"] = {2, 7};
  EXPECT_EQ(decoder_config_from_json(no_kv).eos_token_ids, (std::vector<std::int32_t>{2, 7}));
  no_kv["eos_token_id"] = 32000;
  expect_error([&] { decoder_config_from_json(no_kv); },
               "eos_token_id (32000) is not a token id or a list of them in [0, vocab_size (32000))");
}

TEST(HfConfigTest, ReadsTransformersV5RopeParameters) {
  // transformers v5 moves rope_theta and the scaling into one rope_parameters object.
  nlohmann::json v5 = nlohmann::json::parse(kLlama32);
  v5["rope_parameters"] = v5["rope_scaling"];
  v5["rope_parameters"]["rope_theta"] = 500000.0;
  v5.erase("rope_scaling");
  v5.erase("rope_theta");
  const DecoderConfig llama = decoder_config_from_json(v5);
  EXPECT_EQ(llama.rope_theta, 500000.0);
  EXPECT_EQ(llama.rope_scaling.kind, RopeScaling::Kind::kLlama3);
  EXPECT_EQ(llama.rope_scaling.original_max_position_embeddings, 8192);
  v5["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e6}};
  const DecoderConfig plain = decoder_config_from_json(v5);
  EXPECT_EQ(plain.rope_theta, 1e6);
  EXPECT_EQ(plain.rope_scaling.kind, RopeScaling::Kind::kNone);
}

TEST(HfConfigTest, RefusesDecodersThatWouldComputeSomethingElse) {
  const auto with = [](const char* base, const char* field, nlohmann::json value) {
    nlohmann::json config = nlohmann::json::parse(base);
    config[field] = std::move(value);
    return config;
  };
  expect_error([&] { decoder_config_from_json(with(kLlama32, "model_type", "gpt2")); },
               "decoder_config_from_json: config.json: model_type (\"gpt2\") is not a decoder "
               "headroom runs (llama, mistral, qwen2)");
  expect_error([&] { decoder_config_from_json(with(kLlama32, "hidden_act", "gelu")); },
               "hidden_act (\"gelu\") is not \"silu\"");
  expect_error([&] { decoder_config_from_json(with(kLlama32, "mlp_bias", true)); },
               "mlp_bias (true) is not supported");
  expect_error([&] { decoder_config_from_json(with(kQwen25, "use_sliding_window", true)); },
               "use_sliding_window (true) is not supported for qwen2");
  expect_error([&] { decoder_config_from_json(with(kLlama32, "num_key_value_heads", 7)); },
               "DecoderConfig: num_attention_heads (32) is not a multiple of num_key_value_heads (7)");
  expect_error([&] { decoder_config_from_json(with(kLlama32, "num_attention_heads", 0)); },
               "num_attention_heads (0) must be positive");
  expect_error([] { read_decoder_config("/nonexistent/headroom"); },
               "read_decoder_config: path (\"/nonexistent/headroom/config.json\"): cannot open");
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
