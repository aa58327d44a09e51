// SPDX-License-Identifier: MIT
// Tests of the safetensors reader: round trips of every floating-point dtype, and every way a
// header can be malformed, named and refused before a tensor is read.
#include "headroom/io/safetensors.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "expect_error.hpp"
#include "safetensors_writer.hpp"

namespace headroom {
namespace {

using testing::bytes_of;
using testing::expect_error;
using testing::file_of;
using testing::safetensors_file;
using testing::StoredTensor;

std::vector<float> random_values(Index count, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> values(static_cast<size_t>(count));
  for (float& value : values) value = normal(rng);
  return values;
}

template <class T>
std::vector<T> converted(const std::vector<float>& values) {
  std::vector<T> out;
  for (float value : values) out.push_back(T(value));
  return out;
}

// The values of `values` stored as `dtype`, then read as T, element by element: the expectation
// the reader's bulk conversion must meet exactly.
template <class T>
std::vector<T> expected_read(const std::vector<float>& values, const std::string& dtype) {
  std::vector<T> out;
  for (float value : values) {
    float stored = value;
    if (dtype == "BF16") stored = static_cast<float>(Eigen::bfloat16(value));
    if (dtype == "F16") stored = static_cast<float>(Eigen::half(value));
    if constexpr (std::is_same_v<T, float>) {
      out.push_back(stored);
    } else {
      out.push_back(T(stored));
    }
  }
  return out;
}

template <class T>
void expect_same_bits(const std::vector<T>& actual, const std::vector<T>& expected,
                      const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  for (size_t i = 0; i < actual.size(); ++i) {
    ASSERT_EQ(std::memcmp(&actual[i], &expected[i], sizeof(T)), 0)
        << what << " element " << i << ": " << static_cast<float>(actual[i]) << " vs "
        << static_cast<float>(expected[i]);
  }
}

// The four floating-point dtypes of the same values, 3 x 5 each, in a file whose header is not
// padded: the data section starts at an odd offset, so every read is unaligned.
std::vector<StoredTensor> every_float_dtype(const std::vector<float>& values) {
  const std::vector<Index> shape = {3, 5};
  std::vector<double> doubles(values.begin(), values.end());
  return {{"f32", "F32", shape, bytes_of(values)},
          {"f64", "F64", shape, bytes_of(doubles)},
          {"bf16", "BF16", shape, bytes_of(converted<Eigen::bfloat16>(values))},
          {"f16", "F16", shape, bytes_of(converted<Eigen::half>(values))}};
}

TEST(SafetensorsTest, ReadsEveryFloatDtypeAsEveryElementType) {
  const std::vector<float> values = random_values(15, 1);
  const auto file = safetensors_file(every_float_dtype(values), {}, /*pad=*/false);
  const SafetensorsFile st = SafetensorsFile::from_bytes(file);
  ASSERT_EQ(st.tensors().size(), 4u);
  for (const char* name : {"f32", "f64", "bf16", "f16"}) {
    const std::string dtype = safetensors_dtype_name(st.tensor(name).dtype);
    expect_same_bits(st.read<float>(name, {3, 5}), expected_read<float>(values, dtype),
                     std::string(name) + " as f32");
    expect_same_bits(st.read<Eigen::bfloat16>(name, {3, 5}),
                     expected_read<Eigen::bfloat16>(values, dtype),
                     std::string(name) + " as bf16");
    expect_same_bits(st.read<Eigen::half>(name, {3, 5}),
                     expected_read<Eigen::half>(values, dtype), std::string(name) + " as f16");
  }
}

std::vector<unsigned char> data_bytes(size_t count) { return std::vector<unsigned char>(count, 1); }

// "1,1,...,1", `count` ones.
std::string ones(int count) {
  std::string text = "1";
  for (int i = 1; i < count; ++i) text += ",1";
  return text;
}

TEST(SafetensorsTest, OpensEveryDtypeOfTheFormatAndNullMetadata) {
  const SafetensorsFile st = SafetensorsFile::from_bytes(file_of(
      R"({"__metadata__": null, "scales": {"dtype": "F8_E8M0", "shape": [2], "data_offsets": [0, 2]},)"
      R"("packed": {"dtype": "F4", "shape": [2, 3], "data_offsets": [2, 5]},)"
      R"("six": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [5, 8]},)"
      R"("complex": {"dtype": "C64", "shape": [1], "data_offsets": [8, 16]}})",
      data_bytes(16)));
  EXPECT_TRUE(st.metadata().empty());
  EXPECT_EQ(st.tensor("packed").bytes, 3);
  EXPECT_EQ(safetensors_dtype_bits(st.tensor("six").dtype), 6);
  expect_error([&] { st.read<float>("scales", {2}); }, "has dtype F8_E8M0, expected a floating");
}

TEST(SafetensorsTest, NarrowsF64BeyondF32AsIeeeDoes) {
  const double max = std::numeric_limits<float>::max();
  const std::vector<double> values = {1e300, -1e300, max * (1 + 0x1p-25), -max, 0x1p-160};
  const SafetensorsFile st = SafetensorsFile::from_bytes(
      safetensors_file({{"x", "F64", {5}, bytes_of(values)}}));
  const std::vector<float> read = st.read<float>("x", {5});
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(read, (std::vector<float>{inf, -inf, std::numeric_limits<float>::max(),
                                      -std::numeric_limits<float>::max(), 0.0f}));
}

TEST(SafetensorsTest, DescribesTensorsInDataOrderWithMetadata) {
  const std::vector<float> values = random_values(15, 2);
  auto tensors = every_float_dtype(values);
  tensors.push_back({"scalar", "F32", {}, bytes_of(std::vector<float>{2.5f})});
  tensors.push_back({"empty", "BF16", {0, 7}, {}});
  tensors.push_back({"tokens", "I64", {2}, bytes_of(std::vector<std::int64_t>{3, 4})});
  const SafetensorsFile st =
      SafetensorsFile::from_bytes(safetensors_file(tensors, {{"format", "pt"}}));
  ASSERT_EQ(st.tensors().size(), tensors.size());
  Index offset = 0;
  for (const SafetensorsTensor& tensor : st.tensors()) {
    EXPECT_EQ(tensor.offset, offset) << tensor.name;
    offset += tensor.bytes;
  }
  EXPECT_EQ(st.metadata().at("format"), "pt");
  EXPECT_TRUE(st.contains("scalar"));
  EXPECT_FALSE(st.contains("missing"));
  EXPECT_EQ(st.read<float>("scalar", {}), std::vector<float>{2.5f});
  EXPECT_TRUE(st.read<float>("empty", {0, 7}).empty());
  EXPECT_EQ(st.tensor("tokens").dtype, SafetensorsDtype::kI64);
  EXPECT_EQ(st.tensor("tokens").num_elements(), 2);
  std::int64_t stored[2];
  std::memcpy(stored, st.data(st.tensor("tokens")), sizeof stored);
  EXPECT_EQ(stored[1], 4);
}

TEST(SafetensorsTest, OpensFilesFromDisk) {
  const std::vector<float> values = random_values(15, 3);
  const std::string path =
      (std::filesystem::temp_directory_path() / "headroom_safetensors_test.safetensors").string();
  testing::write_file(path, safetensors_file(every_float_dtype(values)));
  {
    const SafetensorsFile st(path);
    EXPECT_EQ(st.path(), path);
    expect_same_bits(st.read<float>("f32", {3, 5}), values, "f32 from disk");
  }
  std::remove(path.c_str());
  expect_error([&] { SafetensorsFile{path}; }, "SafetensorsFile: path (\"" + path + "\"): cannot open");
  const std::string directory = std::filesystem::temp_directory_path().string();
  expect_error([&] { SafetensorsFile{directory}; }, "is not a regular file");
#if HEADROOM_HAS_MMAP
  // A FIFO without a writer: refused at once, not waited on.
  const std::string fifo =
      (std::filesystem::temp_directory_path() / "headroom_safetensors_test.fifo").string();
  std::remove(fifo.c_str());
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  expect_error([&] { SafetensorsFile{fifo}; }, "is not a regular file");
  std::remove(fifo.c_str());
#endif
}

TEST(SafetensorsTest, RefusesReadsOfAnotherShapeOrDtypeWithoutWriting) {
  const std::vector<float> values = random_values(15, 4);
  auto tensors = every_float_dtype(values);
  tensors.push_back({"ids", "I32", {2}, bytes_of(std::vector<std::int32_t>{7, 8})});
  const SafetensorsFile st = SafetensorsFile::from_bytes(safetensors_file(tensors), "m.st");
  std::vector<float> out(15, -1.0f);
  expect_error([&] { st.read("f32", {5, 3}, out.data()); },
               "SafetensorsFile: m.st: tensor \"f32\" has shape [3, 5], expected [5, 3]");
  expect_error([&] { st.read("ids", {2}, out.data()); },
               "tensor \"ids\" has dtype I32, expected a floating-point one");
  expect_error([&] { st.read("nope", {3, 5}, out.data()); }, "m.st: no tensor named \"nope\"");
  expect_error([&] { st.read<float>("f32", {15}); }, "has shape [3, 5], expected [15]");
  for (float value : out) EXPECT_EQ(value, -1.0f);
}

// A header and data as given, refused with `message`.
struct Malformed {
  const char* what;
  std::vector<unsigned char> file;
  std::string message;
};

std::vector<unsigned char> with_length(std::uint64_t length, const std::string& rest) {
  return file_of(length, rest, {});
}


TEST(SafetensorsTest, RefusesEveryMalformedHeaderByName) {
  const std::string one = R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  const std::vector<Malformed> cases = {
      {"empty file", {}, "file size (0 bytes) is shorter than the 8-byte header length"},
      {"short file", {1, 2, 3}, "file size (3 bytes)"},
      {"length past the end", with_length(100, "{}"), "header length (100) runs past the end"},
      {"length over the limit", with_length(100'000'001, "{}"), "over the format's limit"},
      {"length 2^64 - 1", with_length(~std::uint64_t{0}, "{}"), "over the format's limit"},
      {"not an object", file_of("[1, 2]", {}), "does not start with '{'"},
      {"leading space", file_of(" {}", {}), "does not start with '{'"},
      {"not JSON", file_of("{\"t\": ", {}), "the header is not valid JSON"},
      {"bad UTF-8", file_of("{\"\xff\": 1}", {}), "the header is not valid JSON"},
      {"trailing garbage", file_of("{} x", {}), "the header is not valid JSON"},
      {"nested too deep", file_of(R"({"t":{"shape":[[1]]}})", {}), "nests deeper"},
      {"very deep", file_of("{\"t\":" + std::string(100000, '[') + std::string(100000, ']') + "}", {}),
       "nests deeper"},
      {"tensor not an object", file_of(R"({"t":[1]})", {}), "tensor \"t\" is not an object"},
      {"no dtype", file_of(R"({"t":{"shape":[1],"data_offsets":[0,4]}})", data_bytes(4)),
       "tensor \"t\" has no \"dtype\""},
      {"no shape", file_of(R"({"t":{"dtype":"F32","data_offsets":[0,4]}})", data_bytes(4)),
       "has no \"shape\""},
      {"no offsets", file_of(R"({"t":{"dtype":"F32","shape":[1]}})", data_bytes(4)),
       "has no \"data_offsets\""},
      {"unknown dtype", file_of(R"({"t":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}})",
                                data_bytes(4)),
       "tensor \"t\" dtype (\"F33\") is not one of the format's"},
      {"dtype not a string", file_of(R"({"t":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})",
                                     data_bytes(4)),
       "dtype (4)"},
      {"shape not an array", file_of(R"({"t":{"dtype":"F32","shape":1,"data_offsets":[0,4]}})",
                                     data_bytes(4)),
       "shape (1) is not an array"},
      {"negative dim", file_of(R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})",
                               data_bytes(4)),
       "shape entry (-1) is not a non-negative integer below 2^63"},
      {"fractional dim", file_of(R"({"t":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})",
                                 data_bytes(4)),
       "shape entry (1.5) is not a non-negative integer"},
      {"dims that overflow",
       file_of(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}})",
               data_bytes(4)),
       "shape [4294967296, 4294967296]... overflows 2^63 elements"},
      {"more elements than the data holds",
       file_of(R"({"t":{"dtype":"F32","shape":[1000],"data_offsets":[0,4]}})", data_bytes(4)),
       "tensor \"t\" of shape [1000] and dtype F32 needs more bytes than the data section has (4)"},
      {"offsets not a pair", file_of(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0]}})",
                                     data_bytes(4)),
       "data_offsets ([0]) is not a pair"},
      {"offsets reversed", file_of(R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})",
                                   data_bytes(4)),
       "data_offsets [4, 0] end before they begin"},
      {"offsets past the data",
       file_of(R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[0,4]}})", data_bytes(2)),
       "tensor \"t\" data_offsets end (4) is not an integer in [0, 2]"},
      {"bytes not the shape's", file_of(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})",
                                        data_bytes(8)),
       "hold 4 bytes, but shape [2] of F32 needs 8"},
      {"overlap", file_of(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                          data_bytes(8)),
       "starts at byte 4 of the data section, expected 8 (it overlaps the tensor before)"},
      {"hole", file_of(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                       R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                       data_bytes(12)),
       "tensor \"b\" starts at byte 8 of the data section, expected 4 (the bytes between"},
      {"bytes after the last tensor", file_of(one, data_bytes(6)),
       "the tensors cover 4 bytes of the data section, which has 6"},
      {"a NUL in the header", file_of(std::string("{}\0{\"t\":1}", 10), {}),
       "the header holds a NUL byte at offset 2"},
      {"a name twice", file_of(R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)"
                               R"("t":{"dtype":"I32","shape":[0],"data_offsets":[0,0]}})",
                               {}),
       "the header names \"t\" twice"},
      {"a field twice", file_of(R"({"t":{"dtype":"F32","dtype":"I32","shape":[0],)"
                                R"("data_offsets":[0,0]}})",
                                {}),
       "an entry names field \"dtype\" twice"},
      {"a shape of rank 65", file_of(R"({"t":{"dtype":"F32","shape":[)" + ones(65) + "]}}", {}),
       "holds an array or object of more than 64 elements"},
      {"extents whose product overflows, then a zero",
       file_of(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}})",
               {}),
       "shape [4294967296, 4294967296]... overflows 2^63 elements"},
      {"half a byte of F4", file_of(R"({"t":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})",
                                    data_bytes(2)),
       "of shape [3] and dtype F4 does not fill whole bytes"},
      {"metadata not an object", file_of(R"({"__metadata__":[1]})", {}),
       "\"__metadata__\" is not an object of strings"},
      {"metadata not strings", file_of(R"({"__metadata__":{"a":1}})", {}),
       "\"__metadata__\" entry \"a\" is not a string"},
  };
  for (const Malformed& bad : cases) {
    SCOPED_TRACE(bad.what);
    try {
      SafetensorsFile::from_bytes(bad.file, "bad.st");
      ADD_FAILURE() << "opened";
    } catch (const Error& error) {
      const std::string message = error.what();
      EXPECT_EQ(message.rfind("headroom::SafetensorsFile: bad.st: ", 0), 0u) << message;
      EXPECT_NE(message.find(bad.message), std::string::npos) << message;
    }
  }
}

// Every header corruption and truncation either opens (and then every tensor reads) or throws
// headroom::Error: nothing else escapes, and under the sanitizers nothing reads out of bounds.
TEST(SafetensorsTest, CorruptedFilesOpenOrThrowErrorNeverAnythingElse) {
  const std::vector<float> values = random_values(15, 5);
  const auto good = safetensors_file(every_float_dtype(values), {{"format", "pt"}});
  std::mt19937 rng(6);
  int opened = 0, refused = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<unsigned char> file = good;
    const int kind = trial % 3;
    if (kind == 0) {  // bytes of the length and header replaced
      const int flips = 1 + static_cast<int>(rng() % 4);
      const size_t header_end = 8 + 200 < file.size() ? 8 + 200 : file.size();
      for (int i = 0; i < flips; ++i) {
        file[rng() % header_end] = static_cast<unsigned char>(rng());
      }
    } else if (kind == 1) {  // a digit of the header replaced by another
      std::vector<size_t> digits;
      for (size_t i = 8; i < file.size(); ++i) {
        if (file[i] >= '0' && file[i] <= '9') digits.push_back(i);
      }
      file[digits[rng() % digits.size()]] = static_cast<unsigned char>('0' + rng() % 10);
    } else {  // truncated anywhere
      file.resize(rng() % file.size());
    }
    try {
      const SafetensorsFile st = SafetensorsFile::from_bytes(file);
      for (const SafetensorsTensor& tensor : st.tensors()) {
        if (tensor.dtype == SafetensorsDtype::kF32 || tensor.dtype == SafetensorsDtype::kF64 ||
            tensor.dtype == SafetensorsDtype::kBF16 || tensor.dtype == SafetensorsDtype::kF16) {
          const std::vector<float> read = st.read<float>(tensor.name, tensor.shape);
          EXPECT_EQ(static_cast<Index>(read.size()), tensor.num_elements());
        }
      }
      ++opened;
    } catch (const Error&) {
      ++refused;
    }
  }
  // Both outcomes occur: the corruptions reach past the first checks.
  EXPECT_GT(opened, 100);
  EXPECT_GT(refused, 1000);
}

}  // namespace
}  // namespace headroom
