// SPDX-License-Identifier: MIT
// Tests of reading DeepSeek-V2 attention weights from a checkpoint written in bf16, as the
// published checkpoints are.
#include "headroom/io/mla_checkpoint.hpp"
#include "headroom/mla/mla_attention.hpp"

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

MlaConfig small_config(Index q_lora_rank) {
  MlaConfig config;
  config.hidden_size = 64;
  config.num_attention_heads = 4;
  config.q_lora_rank = q_lora_rank;
  config.kv_lora_rank = 32;
  config.qk_nope_head_dim = 16;
  config.qk_rope_head_dim = 8;
  config.v_head_dim = 16;
  config.max_position_embeddings = 128;
  config.rope_scaling = RopeScaling::yarn(4.0, 16, 0.707, 0.707);
  return config;
}

// Writes `weights` to dir/model.safetensors in bf16 under "model.layers.3.self_attn.", with an
// unrelated tensor before them; returns the weights as bf16 rounds them.
MlaWeights write_layer(const ScratchDirectory& dir, const MlaWeights& weights,
                       const std::string& skip = "") {
  const std::string prefix = "model.layers.3.self_attn.";
  std::vector<StoredTensor> tensors = {
      {"model.embed_tokens.weight", "F32", {2}, testing::bytes_of(std::vector<float>{1, 2})}};
  MlaWeights rounded = weights;
  const auto add = [&](const std::string& name, float* values, std::vector<Index> shape) {
    if (name != skip) testing::add_bf16(tensors, prefix + name + ".weight", values, shape);
  };
  const auto add_matrix = [&](const std::string& name, MlaWeights::Matrix& m) {
    add(name, m.data(), {m.rows(), m.cols()});
  };
  add_matrix("q_a_proj", rounded.q_a_proj);
  add("q_a_layernorm", rounded.q_a_layernorm.data(), {rounded.q_a_layernorm.size()});
  add_matrix("q_b_proj", rounded.q_b_proj);
  add_matrix("q_proj", rounded.q_proj);
  add_matrix("kv_a_proj_with_mqa", rounded.kv_a_proj_with_mqa);
  add("kv_a_layernorm", rounded.kv_a_layernorm.data(), {rounded.kv_a_layernorm.size()});
  add_matrix("kv_b_proj", rounded.kv_b_proj);
  add_matrix("o_proj", rounded.o_proj);
  testing::write_file(dir.file("model.safetensors"), testing::safetensors_file(tensors));
  return rounded;
}

template <class A, class B>
void expect_same_bits(const A& actual, const B& expected, const char* name) {
  ASSERT_EQ(actual.rows(), expected.rows()) << name;
  ASSERT_EQ(actual.cols(), expected.cols()) << name;
  if (actual.size() == 0) return;  // an unused tensor: no data to compare
  EXPECT_EQ(std::memcmp(actual.data(), expected.data(),
                        static_cast<size_t>(actual.size()) * sizeof(float)),
            0)
      << name;
}

TEST(MlaCheckpointTest, ReadsBf16LayersWithAndWithoutQueryCompression) {
  for (Index q_lora_rank : {Index{0}, Index{24}}) {
    SCOPED_TRACE(q_lora_rank);
    const MlaConfig config = small_config(q_lora_rank);
    ScratchDirectory dir("mla_checkpoint");
    const MlaWeights expected = write_layer(dir, MlaWeights::random(config, 5));
    const SafetensorsCheckpoint checkpoint(dir.path());
    const MlaWeights read = read_mla_weights(checkpoint, config, "model.layers.3.self_attn.");
    expect_same_bits(read.q_a_proj, expected.q_a_proj, "q_a_proj");
    expect_same_bits(read.q_a_layernorm, expected.q_a_layernorm, "q_a_layernorm");
    expect_same_bits(read.q_b_proj, expected.q_b_proj, "q_b_proj");
    expect_same_bits(read.q_proj, expected.q_proj, "q_proj");
    expect_same_bits(read.kv_a_proj_with_mqa, expected.kv_a_proj_with_mqa, "kv_a_proj_with_mqa");
    expect_same_bits(read.kv_a_layernorm, expected.kv_a_layernorm, "kv_a_layernorm");
    expect_same_bits(read.kv_b_proj, expected.kv_b_proj, "kv_b_proj");
    expect_same_bits(read.o_proj, expected.o_proj, "o_proj");
    // The layer takes them as they are.
    EXPECT_NO_THROW(MlaAttention(config, read));
  }
}

TEST(MlaCheckpointTest, RefusesMissingTensorsAndOtherShapesByName) {
  const MlaConfig config = small_config(0);
  ScratchDirectory dir("mla_checkpoint_errors");
  write_layer(dir, MlaWeights::random(config, 6), "kv_b_proj");
  expect_error(
      [&] { read_mla_weights(SafetensorsCheckpoint(dir.path()), config, "model.layers.3.self_attn."); },
      "no tensor named \"model.layers.3.self_attn.kv_b_proj.weight\"");
  write_layer(dir, MlaWeights::random(config, 6));
  MlaConfig wider = config;
  wider.hidden_size = 80;
  expect_error(
      [&] { read_mla_weights(SafetensorsCheckpoint(dir.path()), wider, "model.layers.3.self_attn."); },
      "tensor \"model.layers.3.self_attn.q_proj.weight\" has shape [96, 64], expected [96, 80]");
}

}  // namespace
}  // namespace headroom
