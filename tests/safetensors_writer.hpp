// SPDX-License-Identifier: MIT
// Builds safetensors files for tests: well-formed ones from tensors, and malformed ones from any
// header text and data.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "headroom/core/tensor_view.hpp"

namespace headroom::testing {

/// One tensor to write: its header fields and its stored bytes.
struct StoredTensor {
  std::string name;
  std::string dtype;          // "F32", "BF16", ...
  std::vector<Index> shape;
  std::vector<unsigned char> bytes;
};

/// Returns `values` as stored bytes of their own type (little-endian, as the processor holds them).
template <class T>
std::vector<unsigned char> bytes_of(const std::vector<T>& values) {
  std::vector<unsigned char> bytes(values.size() * sizeof(T));
  if (!values.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

/// Appends `values` (of `shape`; none if it holds no element) to `tensors` as a BF16 tensor
/// called `name`, and rounds them in place to what is stored, so callers hold what a reader gets.
inline void add_bf16(std::vector<StoredTensor>& tensors, const std::string& name, float* values,
                     std::vector<Index> shape) {
  Index count = 1;
  for (Index dim : shape) count *= dim;
  if (count == 0) return;
  std::vector<Eigen::bfloat16> stored(static_cast<size_t>(count));
  for (Index i = 0; i < count; ++i) {
    stored[static_cast<size_t>(i)] = Eigen::bfloat16(values[i]);
    values[i] = static_cast<float>(stored[static_cast<size_t>(i)]);
  }
  tensors.push_back({name, "BF16", std::move(shape), bytes_of(stored)});
}

/// Returns a file of the 8-byte little-endian `length`, then `header` and `data` as they are.
inline std::vector<unsigned char> file_of(std::uint64_t length, const std::string& header,
                                          const std::vector<unsigned char>& data) {
  // Sized once and copied into: GCC 12 warns falsely (array-bounds) on inserts after the length.
  std::vector<unsigned char> file(8 + header.size() + data.size());
  std::memcpy(file.data(), &length, 8);
  if (!header.empty()) std::memcpy(file.data() + 8, header.data(), header.size());
  if (!data.empty()) std::memcpy(file.data() + 8 + header.size(), data.data(), data.size());
  return file;
}

/// Returns a file of an 8-byte little-endian length, `header` and `data`, as they are.
inline std::vector<unsigned char> file_of(const std::string& header,
                                          const std::vector<unsigned char>& data) {
  return file_of(header.size(), header, data);
}

/// Returns a well-formed file holding `tensors` in order and `metadata`. With `pad`, the header is
/// padded with spaces to a multiple of 8 bytes, as the format's writer does; without, the data
/// (and every tensor) may start at an odd address.
inline std::vector<unsigned char> safetensors_file(
    const std::vector<StoredTensor>& tensors,
    const std::map<std::string, std::string>& metadata = {}, bool pad = true) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<unsigned char> data;
  for (const StoredTensor& tensor : tensors) {
    header[tensor.name] = {{"dtype", tensor.dtype},
                           {"shape", tensor.shape},
                           {"data_offsets", {data.size(), data.size() + tensor.bytes.size()}}};
    data.insert(data.end(), tensor.bytes.begin(), tensor.bytes.end());
  }
  std::string text = header.dump();
  if (pad) text.append((8 - text.size() % 8) % 8, ' ');
  return file_of(text, data);
}

/// Writes `bytes` to the file at `path`.
inline void write_file(const std::string& path, const std::vector<unsigned char>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

/// A fresh, empty directory under the system's temporary one, removed with the object.
class ScratchDirectory {
 public:
  explicit ScratchDirectory(const std::string& name)
      : path_(std::filesystem::temp_directory_path() / ("headroom_" + name)) {
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ScratchDirectory(const ScratchDirectory&) = delete;
  ScratchDirectory& operator=(const ScratchDirectory&) = delete;
  ~ScratchDirectory() { std::filesystem::remove_all(path_); }

  std::string path() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace headroom::testing
