// SPDX-License-Identifier: MIT
// Tests of checkpoint directories: one model.safetensors, or shards named by an index, and the
// ways an index can be wrong.
#include "headroom/io/checkpoint.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "expect_error.hpp"
#include "safetensors_writer.hpp"

namespace headroom {
namespace {

using testing::bytes_of;
using testing::expect_error;
using testing::safetensors_file;
using testing::ScratchDirectory;
using testing::write_file;

void write_text(const std::string& path, const std::string& text) {
  write_file(path, std::vector<unsigned char>(text.begin(), text.end()));
}

// Two shards: a.weight and b.weight in the first, c.weight in the second.
void write_shards(const ScratchDirectory& dir) {
  write_file(dir.file("model-00001-of-00002.safetensors"),
             safetensors_file({{"a.weight", "F32", {2}, bytes_of(std::vector<float>{1, 2})},
                               {"b.weight", "F32", {1}, bytes_of(std::vector<float>{3})}}));
  write_file(dir.file("model-00002-of-00002.safetensors"),
             safetensors_file({{"c.weight", "F32", {3}, bytes_of(std::vector<float>{4, 5, 6})}}));
}

const char* const kIndex = R"({"metadata": {"total_size": 24}, "weight_map": {
    "a.weight": "model-00001-of-00002.safetensors",
    "c.weight": "model-00002-of-00002.safetensors",
    "b.weight": "model-00001-of-00002.safetensors"}})";

TEST(CheckpointTest, ReadsOneFileCheckpoints) {
  ScratchDirectory dir("checkpoint_single");
  write_file(dir.file("model.safetensors"),
             safetensors_file({{"w", "F32", {2, 2}, bytes_of(std::vector<float>{1, 2, 3, 4})}}));
  const SafetensorsCheckpoint checkpoint(dir.path());
  EXPECT_EQ(checkpoint.files().size(), 1u);
  EXPECT_EQ(checkpoint.read<float>("w", {2, 2}), (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(checkpoint.tensor_names(), std::vector<std::string>{"w"});
  expect_error([&] { checkpoint.tensor("v"); },
               "SafetensorsCheckpoint: " + dir.path() + ": no tensor named \"v\"");
}

TEST(CheckpointTest, ReadsShardsThroughTheIndex) {
  ScratchDirectory dir("checkpoint_shards");
  write_shards(dir);
  write_text(dir.file("model.safetensors.index.json"), kIndex);
  const SafetensorsCheckpoint checkpoint(dir.path() + "/");
  EXPECT_EQ(checkpoint.files().size(), 2u);
  EXPECT_EQ(checkpoint.tensor_names(),
            (std::vector<std::string>{"a.weight", "b.weight", "c.weight"}));
  EXPECT_EQ(checkpoint.read<float>("a.weight", {2}), (std::vector<float>{1, 2}));
  EXPECT_EQ(checkpoint.read<float>("b.weight", {1}), (std::vector<float>{3}));
  EXPECT_EQ(checkpoint.read<float>("c.weight", {3}), (std::vector<float>{4, 5, 6}));
  EXPECT_EQ(&checkpoint.file_of("c.weight"), &checkpoint.files()[1]);
}

TEST(CheckpointTest, RefusesBrokenIndexesByName) {
  ScratchDirectory dir("checkpoint_broken");
  expect_error([&] { SafetensorsCheckpoint{dir.path()}; },
               "SafetensorsCheckpoint: directory (\"" + dir.path() +
                   "\") holds neither model.safetensors.index.json nor model.safetensors");
  write_shards(dir);
  const std::string index = dir.file("model.safetensors.index.json");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{\"weight_map\": ", "not valid JSON"},
      {R"({"weight_map": [1]})", "has no \"weight_map\" object"},
      {R"({"weight_map": {"a.weight": 1}})", "weight_map entry \"a.weight\" (1) is not a file name"},
      {R"({"weight_map": {"a.weight": "../model-00001-of-00002.safetensors"}})",
       "names \"../model-00001-of-00002.safetensors\", not a file name of the checkpoint's"},
      {R"({"weight_map": {"a.weight": ".."}})", "not a file name of the checkpoint's"},
      {R"({"weight_map": {"a.weight": "missing.safetensors"}})",
       "path (\"" + dir.file("missing.safetensors") + "\"): cannot open"},
      {R"({"weight_map": {"c.weight": "model-00001-of-00002.safetensors"}})",
       "tensor \"c.weight\" is mapped to model-00001-of-00002.safetensors, which does not hold it"},
  };
  for (const auto& [text, message] : cases) {
    SCOPED_TRACE(text);
    write_text(index, text);
    expect_error([&] { SafetensorsCheckpoint{dir.path()}; }, message);
  }
  write_file(dir.file("model-00002-of-00002.safetensors"), {1, 2, 3});
  write_text(index, kIndex);
  expect_error([&] { SafetensorsCheckpoint{dir.path()}; }, "file size (3 bytes)");
}

}  // namespace
}  // namespace headroom
