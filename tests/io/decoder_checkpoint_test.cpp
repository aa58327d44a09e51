// SPDX-License-Identifier: MIT
// Tests of loading a Llama-family decoder from a checkpoint directory: config.json and bf16
// weights in two shards, as transformers saves them.
#include "headroom/io/decoder_checkpoint.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "expect_error.hpp"
#include "safetensors_writer.hpp"

namespace headroom {
namespace {

using testing::expect_error;
using testing::ScratchDirectory;
using testing::StoredTensor;

// A Qwen2-style config.json (biases on q, k and v; tied embeddings) and a Llama one.
const char* const kQwen2 = R"({"model_type": "qwen2", "vocab_size": 29, "hidden_size": 16,
  "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "max_position_embeddings": 32, "rope_theta": 1000.0,
  "rms_norm_eps": 1e-06, "tie_word_embeddings": true, "hidden_act": "silu"})";
const char* const kLlama = R"({"model_type": "llama", "vocab_size": 29, "hidden_size": 16,
  "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 1, "max_position_embeddings": 32, "rms_norm_eps": 1e-05,
  "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8}})";

// Writes config.json and the weights, layer 0 (and the embeddings) in one shard and the rest in
// another with an index, leaving out `skip`; returns the weights as bf16 rounds them.
DecoderWeights write_checkpoint(const ScratchDirectory& dir, const char* config_json,
                                DecoderWeights weights, const std::string& skip = "") {
  testing::write_file(dir.file("config.json"),
                      std::vector<unsigned char>(config_json, config_json + std::strlen(config_json)));
  std::vector<StoredTensor> shards[2];
  const auto add = [&](int shard, const std::string& name, auto& tensor, std::vector<Index> shape) {
    if (name != skip) testing::add_bf16(shards[shard], name, tensor.data(), std::move(shape));
  };
  const auto add_matrix = [&](int shard, const std::string& name, DecoderWeights::Matrix& m) {
    add(shard, name, m, {m.rows(), m.cols()});
  };
  const auto add_vector = [&](int shard, const std::string& name, Eigen::VectorXf& v) {
    add(shard, name, v, {v.size()});
  };
  add_matrix(0, "model.embed_tokens.weight", weights.embed_tokens);
  for (size_t i = 0; i < weights.layers.size(); ++i) {
    DecoderLayerWeights& l = weights.layers[i];
    const int shard = i == 0 ? 0 : 1;
    const std::string at = "model.layers." + std::to_string(i) + ".";
    add_vector(shard, at + "input_layernorm.weight", l.input_layernorm);
    add_matrix(shard, at + "self_attn.q_proj.weight", l.q_proj);
    add_matrix(shard, at + "self_attn.k_proj.weight", l.k_proj);
    add_matrix(shard, at + "self_attn.v_proj.weight", l.v_proj);
    add_vector(shard, at + "self_attn.q_proj.bias", l.q_bias);
    add_vector(shard, at + "self_attn.k_proj.bias", l.k_bias);
    add_vector(shard, at + "self_attn.v_proj.bias", l.v_bias);
    add_matrix(shard, at + "self_attn.o_proj.weight", l.o_proj);
    add_vector(shard, at + "post_attention_layernorm.weight", l.post_attention_layernorm);
    add_matrix(shard, at + "mlp.gate_proj.weight", l.gate_proj);
    add_matrix(shard, at + "mlp.up_proj.weight", l.up_proj);
    add_matrix(shard, at + "mlp.down_proj.weight", l.down_proj);
  }
  add_vector(1, "model.norm.weight", weights.norm);
  add_matrix(1, "lm_head.weight", weights.lm_head);
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  for (int shard = 0; shard < 2; ++shard) {
    const std::string file = "model-0000" + std::to_string(shard + 1) + "-of-00002.safetensors";
    testing::write_file(dir.file(file), testing::safetensors_file(shards[shard]));
    for (const StoredTensor& tensor : shards[shard]) index["weight_map"][tensor.name] = file;
  }
  const std::string text = index.dump();
  testing::write_file(dir.file("model.safetensors.index.json"),
                      std::vector<unsigned char>(text.begin(), text.end()));
  return weights;
}

TEST(DecoderCheckpointTest, LoadsQwen2AndLlamaCheckpointsThatComputeAsTheirWeights) {
  for (const char* config_json : {kQwen2, kLlama}) {
    const DecoderConfig config = decoder_config_from_json(nlohmann::json::parse(config_json));
    ScratchDirectory dir("decoder_checkpoint");
    const DecoderWeights rounded =
        write_checkpoint(dir, config_json, DecoderWeights::random(config, 21));
    Decoder<float> loaded = load_decoder(dir.path(), DecoderOptions{12, 1});
    Decoder<float> expected(config, rounded, DecoderOptions{12, 1});
    EXPECT_EQ(loaded.config().qkv_bias, config.qkv_bias);
    EXPECT_EQ(loaded.forward({1, 5, 28, 3}), expected.forward({1, 5, 28, 3}));
    EXPECT_EQ(loaded.forward({7}), expected.forward({7}));
  }
}

TEST(DecoderCheckpointTest, LoadsBf16WeightsUnchangedFromABf16Checkpoint) {
  const DecoderConfig config = decoder_config_from_json(nlohmann::json::parse(kLlama));
  ScratchDirectory dir("decoder_checkpoint_bf16");
  const DecoderWeights rounded = write_checkpoint(dir, kLlama, DecoderWeights::random(config, 23));
  using Bf16 = Eigen::bfloat16;
  Decoder<float, Bf16> loaded = load_decoder<float, Bf16>(dir.path(), DecoderOptions{12, 1});
  const DecoderWeightsOf<Bf16> held = loaded.weights();
  EXPECT_EQ(held.embed_tokens.cast<float>(), rounded.embed_tokens);
  EXPECT_EQ(held.layers[1].down_proj.cast<float>(), rounded.layers[1].down_proj);
  EXPECT_EQ(held.lm_head.cast<float>(), rounded.lm_head);
  Decoder<float, Bf16> expected(config, rounded.converted<Bf16>(), DecoderOptions{12, 1});
  EXPECT_EQ(loaded.forward({1, 5, 28, 3, 9}), expected.forward({1, 5, 28, 3, 9}));
  EXPECT_EQ(loaded.forward({7}), expected.forward({7}));
}

TEST(DecoderCheckpointTest, RefusesMissingTensorsByName) {
  const DecoderConfig config = decoder_config_from_json(nlohmann::json::parse(kLlama));
  ScratchDirectory dir("decoder_checkpoint_missing");
  write_checkpoint(dir, kLlama, DecoderWeights::random(config, 22), "model.layers.1.mlp.up_proj.weight");
  expect_error([&] { load_decoder(dir.path()); },
               "no tensor named \"model.layers.1.mlp.up_proj.weight\"");
  write_checkpoint(dir, kLlama, DecoderWeights::random(config, 22), "lm_head.weight");
  expect_error([&] { load_decoder(dir.path()); }, "no tensor named \"lm_head.weight\"");
}

}  // namespace
}  // namespace headroom
