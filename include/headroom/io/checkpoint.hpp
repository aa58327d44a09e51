// SPDX-License-Identifier: MIT
// The weights of a Hugging Face checkpoint directory: model.safetensors, or the shards that
// model.safetensors.index.json assigns each tensor to.
#pragma once

#include <algorithm>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include "headroom/core/error.hpp"
#include "headroom/io/safetensors.hpp"

namespace headroom {

namespace detail {

/// Returns the path of `file` in `directory`.
inline std::string path_in(const std::string& directory, const std::string& file) {
  return directory.empty() || directory.back() == '/' ? directory + file : directory + "/" + file;
}

/// Returns whether a file can be opened for reading at `path`.
inline bool file_exists(const std::string& path) { return std::ifstream(path).good(); }

/// Parses the JSON file at `path` (at most `max_bytes` long); throws headroom::Error naming
/// `where` and the path if it cannot be read or is not JSON.
inline nlohmann::json read_json_file(const std::string& path, const char* where,
                                     Index max_bytes = 100'000'000) {
  std::ifstream in(path, std::ios::binary);
  HEADROOM_CHECK(in.good(), where, "path (\"", path, "\"): cannot open");
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  HEADROOM_CHECK(size >= 0 && size <= max_bytes, where, path, ": size (", size,
                 " bytes) is not in [0, ", max_bytes, "]");
  in.seekg(0, std::ios::beg);
  std::string text(static_cast<size_t>(size), '\0');
  in.read(text.data(), size);
  HEADROOM_CHECK(in.gcount() == size, where, path, ": read ", in.gcount(), " of ", size,
                 " bytes");
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    detail::throw_error(where, path, ": not valid JSON: ", e.what());
  }
}

}  // namespace detail

/// The safetensors weights of a Hugging Face checkpoint directory, looked up by tensor name
/// across its files. With model.safetensors.index.json present, its "weight_map" names the shard
/// of every tensor (transformers' sharded save); otherwise the directory holds model.safetensors.
/// Every shard is opened and validated (see SafetensorsFile) and every tensor the index lists is
/// checked to be in its shard, before any tensor is read.
class SafetensorsCheckpoint {
 public:
  static constexpr const char* kIndexFile = "model.safetensors.index.json";
  static constexpr const char* kSingleFile = "model.safetensors";

  /// Opens the checkpoint in `directory`.
  explicit SafetensorsCheckpoint(const std::string& directory) : directory_(directory) {
    const std::string index_path = path_of(kIndexFile);
    if (detail::file_exists(index_path)) {
      open_shards(index_path);
    } else {
      const std::string single_path = path_of(kSingleFile);
      HEADROOM_CHECK(detail::file_exists(single_path), kWhere, "directory (\"", directory_,
                     "\") holds neither ", kIndexFile, " nor ", kSingleFile);
      files_.emplace_back(single_path);
      for (const SafetensorsTensor& tensor : files_.back().tensors()) {
        file_of_.emplace(tensor.name, 0);
      }
    }
  }

  /// The directory given at opening.
  const std::string& directory() const { return directory_; }
  /// The opened files: model.safetensors, or the shards in the order the index first names them.
  const std::vector<SafetensorsFile>& files() const { return files_; }

  /// Returns whether the checkpoint holds a tensor called `name`.
  bool contains(const std::string& name) const { return file_of_.count(name) != 0; }

  /// Returns the names of every tensor, sorted.
  std::vector<std::string> tensor_names() const {
    std::vector<std::string> names;
    for (const auto& entry : file_of_) names.push_back(entry.first);
    std::sort(names.begin(), names.end());
    return names;
  }

  /// Returns the file that holds the tensor called `name`; throws headroom::Error if none does.
  const SafetensorsFile& file_of(const std::string& name) const {
    const auto found = file_of_.find(name);
    HEADROOM_CHECK(found != file_of_.end(), kWhere, directory_, ": no tensor named \"", name,
                   "\"");
    return files_[found->second];
  }

  /// Returns the tensor called `name` as its file's header describes it.
  const SafetensorsTensor& tensor(const std::string& name) const {
    return file_of(name).tensor(name);
  }

  /// Copies the tensor called `name`, of shape `shape`, to `out` converted to T (see
  /// SafetensorsFile::read).
  template <class T>
  void read(const std::string& name, const std::vector<Index>& shape, T* out) const {
    file_of(name).read(name, shape, out);
  }

  /// Returns the tensor called `name`, of shape `shape`, converted to T.
  template <class T>
  std::vector<T> read(const std::string& name, const std::vector<Index>& shape) const {
    return file_of(name).template read<T>(name, shape);
  }

 private:
  static constexpr const char* kWhere = "SafetensorsCheckpoint";

  std::string path_of(const std::string& file) const { return detail::path_in(directory_, file); }

  void open_shards(const std::string& index_path) {
    const nlohmann::json index = detail::read_json_file(index_path, kWhere);
    HEADROOM_CHECK(index.is_object() && index.contains("weight_map") &&
                       index["weight_map"].is_object(),
                   kWhere, index_path, ": has no \"weight_map\" object");
    std::map<std::string, size_t> shard_index;  // file name -> position in files_
    for (const auto& [name, shard] : index["weight_map"].items()) {
      HEADROOM_CHECK(shard.is_string(), kWhere, index_path, ": weight_map entry \"", name,
                     "\" (", shard.dump(), ") is not a file name");
      const std::string& file = shard.get_ref<const std::string&>();
      // Shards are files of the checkpoint's own directory, never paths out of it.
      HEADROOM_CHECK(!file.empty() && file != "." && file != ".." &&
                         file.find('/') == std::string::npos &&
                         file.find('\\') == std::string::npos &&
                         file.find('\0') == std::string::npos,
                     kWhere, index_path, ": weight_map entry \"", name, "\" names \"", file,
                     "\", not a file name of the checkpoint's directory");
      auto [at, added] = shard_index.emplace(file, files_.size());
      if (added) files_.emplace_back(path_of(file));
      const SafetensorsFile& opened = files_[at->second];
      HEADROOM_CHECK(opened.contains(name), kWhere, index_path, ": tensor \"", name,
                     "\" is mapped to ", file, ", which does not hold it");
      file_of_.emplace(name, at->second);
    }
  }

  std::string directory_;
  std::vector<SafetensorsFile> files_;
  std::unordered_map<std::string, size_t> file_of_;  // tensor name -> position in files_
};

/// Returns the tensor `name` of `checkpoint`, of shape [rows, cols], as a row-major matrix of T
/// (float by default; see SafetensorsFile::read for the conversions) in torch's layout: a linear
/// weight [out_features, in_features] copies in unchanged.
template <class T = float>
Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> read_matrix(
    const SafetensorsCheckpoint& checkpoint, const std::string& name, Index rows, Index cols) {
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> matrix(rows, cols);
  checkpoint.read(name, {rows, cols}, matrix.data());
  return matrix;
}

/// Returns the tensor `name` of `checkpoint`, of shape [size], as an f32 vector.
inline Eigen::VectorXf read_vector(const SafetensorsCheckpoint& checkpoint,
                                   const std::string& name, Index size) {
  Eigen::VectorXf vector(size);
  checkpoint.read(name, {size}, vector.data());
  return vector;
}

}  // namespace headroom
