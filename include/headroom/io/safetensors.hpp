// SPDX-License-Identifier: MIT
// Reads Hugging Face safetensors files: the whole header is validated when the file is opened,
// before any tensor is read, and tensors are copied out converted to the element type asked for.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <new>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include "headroom/core/error.hpp"
#include "headroom/core/tensor_view.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define HEADROOM_HAS_MMAP 1
#else
#define HEADROOM_HAS_MMAP 0
#endif

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "headroom's safetensors reader copies little-endian values as they are stored: it "
              "needs a little-endian processor.");
#endif

namespace headroom {

/// The element types a safetensors header names in its `dtype` fields (the format's list, from
/// the safetensors repository's specification, including the sub-byte and microscaling types).
enum class SafetensorsDtype {
  kBool, kU8, kI8, kF8E5M2, kF8E4M3, kF8E8M0, kF4, kF6E2M3, kF6E3M2, kI16, kU16, kF16, kBF16,
  kI32, kU32, kF32, kF64, kC64, kI64, kU64
};

namespace detail {

struct SafetensorsDtypeInfo {
  SafetensorsDtype dtype;
  const char* name;  // as written in the header
  Index bits;        // per element
};

inline constexpr SafetensorsDtypeInfo kSafetensorsDtypes[] = {
    {SafetensorsDtype::kBool, "BOOL", 8},       {SafetensorsDtype::kU8, "U8", 8},
    {SafetensorsDtype::kI8, "I8", 8},           {SafetensorsDtype::kF8E5M2, "F8_E5M2", 8},
    {SafetensorsDtype::kF8E4M3, "F8_E4M3", 8},  {SafetensorsDtype::kF8E8M0, "F8_E8M0", 8},
    {SafetensorsDtype::kF4, "F4", 4},           {SafetensorsDtype::kF6E2M3, "F6_E2M3", 6},
    {SafetensorsDtype::kF6E3M2, "F6_E3M2", 6},  {SafetensorsDtype::kI16, "I16", 16},
    {SafetensorsDtype::kU16, "U16", 16},        {SafetensorsDtype::kF16, "F16", 16},
    {SafetensorsDtype::kBF16, "BF16", 16},      {SafetensorsDtype::kI32, "I32", 32},
    {SafetensorsDtype::kU32, "U32", 32},        {SafetensorsDtype::kF32, "F32", 32},
    {SafetensorsDtype::kF64, "F64", 64},        {SafetensorsDtype::kC64, "C64", 64},
    {SafetensorsDtype::kI64, "I64", 64},        {SafetensorsDtype::kU64, "U64", 64},
};

inline const SafetensorsDtypeInfo& dtype_info(SafetensorsDtype dtype) {
  for (const SafetensorsDtypeInfo& info : kSafetensorsDtypes) {
    if (info.dtype == dtype) return info;
  }
  throw Error("headroom::safetensors: unknown SafetensorsDtype value");
}

}  // namespace detail

/// Returns the header's name of `dtype` ("F32", "BF16", ...).
inline const char* safetensors_dtype_name(SafetensorsDtype dtype) {
  return detail::dtype_info(dtype).name;
}

/// Returns the bits one element of `dtype` takes (4 and 6 for the sub-byte types, whose tensors
/// must hold whole bytes).
inline Index safetensors_dtype_bits(SafetensorsDtype dtype) {
  return detail::dtype_info(dtype).bits;
}

/// One tensor of a safetensors file, as its header describes it.
struct SafetensorsTensor {
  std::string name;
  SafetensorsDtype dtype = SafetensorsDtype::kF32;
  std::vector<Index> shape;  // row-major; empty for a scalar
  Index offset = 0;          // bytes from the start of the data section
  Index bytes = 0;

  /// Returns the number of elements, the product of the shape (1 for a scalar). (A file's
  /// shapes are checked at opening: their products fit an Index.)
  Index num_elements() const {
    if (std::find(shape.begin(), shape.end(), Index{0}) != shape.end()) return 0;
    Index count = 1;
    for (Index dim : shape) count *= dim;
    return count;
  }
};

namespace detail {

/// Returns `value` as JSON text for messages, cut after 64 characters.
inline std::string json_excerpt(const nlohmann::json& value) {
  std::string text = value.dump();
  if (text.size() > 64) text = text.substr(0, 64) + "...";
  return text;
}

/// Formats a shape as "[2, 3]" for messages.
inline std::string shape_string(const std::vector<Index>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(shape[i]);
  }
  return text + "]";
}

/// The bytes of a whole file: mapped read-only where the system can map files, else read into
/// memory; or bytes handed over by the caller. Move-only.
class FileBytes {
 public:
  FileBytes() = default;
  FileBytes(const FileBytes&) = delete;
  FileBytes& operator=(const FileBytes&) = delete;
  FileBytes(FileBytes&& other) noexcept { *this = std::move(other); }
  FileBytes& operator=(FileBytes&& other) noexcept {
    if (this != &other) {
      release();
      owned_ = std::move(other.owned_);
      mapped_ = std::exchange(other.mapped_, nullptr);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  ~FileBytes() { release(); }

  /// Maps (or reads) the file at `path`; throws headroom::Error naming `where` and the path.
  static FileBytes open(const std::string& path, const char* where) {
    FileBytes file;
#if HEADROOM_HAS_MMAP
    // O_NONBLOCK: opening a FIFO would otherwise wait for a writer before the checks below.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    HEADROOM_CHECK(fd >= 0, where, "path (\"", path, "\"): cannot open: ", std::strerror(errno));
    struct stat status {};
    const bool stat_ok = ::fstat(fd, &status) == 0;
    const int stat_errno = errno;
    if (!stat_ok || !S_ISREG(status.st_mode)) {
      ::close(fd);
      HEADROOM_CHECK(stat_ok, where, "path (\"", path, "\"): cannot stat: ",
                     std::strerror(stat_errno));
      HEADROOM_CHECK(false, where, "path (\"", path, "\") is not a regular file");
    }
    file.size_ = static_cast<Index>(status.st_size);
    if (file.size_ > 0) {
      void* at = ::mmap(nullptr, static_cast<size_t>(file.size_), PROT_READ, MAP_PRIVATE, fd, 0);
      const int map_errno = errno;
      ::close(fd);
      HEADROOM_CHECK(at != MAP_FAILED, where, "path (\"", path, "\"): cannot map ", file.size_,
                     " bytes: ", std::strerror(map_errno));
      file.mapped_ = at;
      file.data_ = static_cast<const unsigned char*>(at);
    } else {
      ::close(fd);
    }
#else
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> stream(std::fopen(path.c_str(), "rb"),
                                                           &std::fclose);
    HEADROOM_CHECK(stream != nullptr, where, "path (\"", path, "\"): cannot open");
    std::vector<unsigned char> bytes;
    unsigned char buffer[1 << 16];
    for (size_t got; (got = std::fread(buffer, 1, sizeof buffer, stream.get())) > 0;) {
      bytes.insert(bytes.end(), buffer, buffer + got);
    }
    HEADROOM_CHECK(!std::ferror(stream.get()), where, "path (\"", path, "\"): read error");
    file = own(std::move(bytes));
#endif
    return file;
  }

  /// Keeps `bytes` as the file's contents.
  static FileBytes own(std::vector<unsigned char> bytes) {
    FileBytes file;
    file.owned_ = std::move(bytes);
    file.data_ = file.owned_.data();
    file.size_ = static_cast<Index>(file.owned_.size());
    return file;
  }

  const unsigned char* data() const { return data_; }
  Index size() const { return size_; }

 private:
  void release() {
#if HEADROOM_HAS_MMAP
    if (mapped_ != nullptr) ::munmap(mapped_, static_cast<size_t>(size_));
#endif
    mapped_ = nullptr;
  }

  std::vector<unsigned char> owned_;
  void* mapped_ = nullptr;
  const unsigned char* data_ = nullptr;
  Index size_ = 0;
};

/// Returns element i of a little-endian array of T stored at `bytes`, which may be unaligned.
template <class T>
T load_unaligned(const unsigned char* bytes, Index i) {
  T value;
  std::memcpy(&value, bytes + i * static_cast<Index>(sizeof(T)), sizeof(T));
  return value;
}

/// Converts `count` stored floating-point elements of `dtype` at `bytes` to T (float,
/// Eigen::bfloat16 or Eigen::half) at `out`: a plain copy when the types match, else through f32:
/// exact from bf16 and f16, one rounding to nearest even from f32, and from f64 one to f32 (values
/// beyond f32's range become infinities) then one to T.
template <class T>
void convert_elements(SafetensorsDtype dtype, const unsigned char* bytes, Index count, T* out) {
  const auto to_out = [](float value) {
    if constexpr (std::is_same_v<T, float>) {
      return value;
    } else {
      return T(value);
    }
  };
  const bool same = (dtype == SafetensorsDtype::kF32 && std::is_same_v<T, float>) ||
                    (dtype == SafetensorsDtype::kBF16 && std::is_same_v<T, Eigen::bfloat16>) ||
                    (dtype == SafetensorsDtype::kF16 && std::is_same_v<T, Eigen::half>);
  if (same) {
    if (count > 0) std::memcpy(out, bytes, static_cast<size_t>(count) * sizeof(T));
    return;
  }
  switch (dtype) {
    case SafetensorsDtype::kF32:
      for (Index i = 0; i < count; ++i) out[i] = to_out(load_unaligned<float>(bytes, i));
      break;
    case SafetensorsDtype::kF64:
      for (Index i = 0; i < count; ++i) {
        const double value = load_unaligned<double>(bytes, i);
        // Out of f32's range the cast is undefined in C++; the infinities are what IEEE gives.
        // Below kOverflow (f32's largest value plus half its last unit) values round to it.
        constexpr double kMax = std::numeric_limits<float>::max(), kOverflow = 0x1.ffffffp127;
        constexpr float kInf = std::numeric_limits<float>::infinity();
        const double magnitude = std::abs(value);
        const float narrowed =
            magnitude >= kOverflow ? std::copysign(kInf, static_cast<float>(value > 0 ? 1 : -1))
            : magnitude > kMax     ? std::copysign(static_cast<float>(kMax), value > 0 ? 1.0f : -1.0f)
                                   : static_cast<float>(value);
        out[i] = to_out(narrowed);
      }
      break;
    case SafetensorsDtype::kBF16:
      for (Index i = 0; i < count; ++i) {
        const std::uint32_t bits = std::uint32_t{load_unaligned<std::uint16_t>(bytes, i)} << 16;
        float value;
        std::memcpy(&value, &bits, sizeof value);
        out[i] = to_out(value);
      }
      break;
    case SafetensorsDtype::kF16:
      for (Index i = 0; i < count; ++i) {
        const float value = static_cast<float>(
            Eigen::numext::bit_cast<Eigen::half>(load_unaligned<std::uint16_t>(bytes, i)));
        out[i] = to_out(value);
      }
      break;
    default:
      throw Error("headroom::detail::convert_elements: not a floating-point dtype");
  }
}

}  // namespace detail

/// A safetensors file (https://github.com/huggingface/safetensors, "Format"): an 8-byte
/// little-endian header length N, N bytes of JSON header, then the data section. The header maps
/// each tensor name to {"dtype", "shape", "data_offsets": [begin, end)} (offsets into the data
/// section) and may hold "__metadata__", a map of strings.
///
/// The constructor checks everything the format promises before any tensor is read: the header
/// fits the file and is at most 100 MB (the limit of the format's own reader), it is a JSON object
/// nested no deeper than the format needs, each tensor's dtype is known, its shape is of
/// non-negative integers, its byte range holds exactly shape x dtype bytes, and the ranges cover
/// the data section without overlap or holes (the format forbids both). A file that breaks any of
/// these throws headroom::Error naming the file, the tensor and the field; nothing is read out
/// of bounds.
///
/// Files are mapped read-only (POSIX) and stay mapped while the object lives; tensors are read by
/// copying, converted, so the stored alignment does not matter. A mapped file that another process
/// truncates while it is mapped makes reads fault (SIGBUS), as with any mapped file.
class SafetensorsFile {
 public:
  /// The format reader's limit on the header length (safetensors' MAX_HEADER_SIZE).
  static constexpr Index kMaxHeaderBytes = 100'000'000;

  /// Opens and validates the file at `path`.
  explicit SafetensorsFile(const std::string& path)
      : SafetensorsFile(detail::FileBytes::open(path, kWhere), path) {}

  /// Validates `bytes` as a whole safetensors file and keeps them; `name` stands for the path
  /// in messages.
  static SafetensorsFile from_bytes(std::vector<unsigned char> bytes,
                                    const std::string& name = "<memory>") {
    return SafetensorsFile(detail::FileBytes::own(std::move(bytes)), name);
  }

  /// The path given at opening (or the name given to from_bytes).
  const std::string& path() const { return path_; }
  /// Every tensor, in the order of their bytes in the data section.
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  /// The header's "__metadata__" (empty without one).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  /// Returns whether the file holds a tensor called `name`.
  bool contains(const std::string& name) const { return index_.count(name) != 0; }

  /// Returns the tensor called `name`; throws headroom::Error if there is none.
  const SafetensorsTensor& tensor(const std::string& name) const {
    const auto found = index_.find(name);
    HEADROOM_CHECK(found != index_.end(), kWhere, path_, ": no tensor named \"", name, "\"");
    return tensors_[found->second];
  }

  /// Returns the stored bytes of `tensor` (one of tensors()): little-endian, maybe unaligned.
  const unsigned char* data(const SafetensorsTensor& tensor) const {
    return bytes_.data() + data_start_ + tensor.offset;
  }

  /// Copies the tensor called `name` to `out` (num_elements() of them) converted to T: float,
  /// Eigen::bfloat16 or Eigen::half, from a stored F32, F64, BF16 or F16 tensor. Its shape must
  /// be `shape`. Throws headroom::Error, writing nothing, for a missing tensor, another shape or
  /// a dtype that is not floating-point.
  template <class T>
  void read(const std::string& name, const std::vector<Index>& shape, T* out) const {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, Eigen::bfloat16> ||
                      std::is_same_v<T, Eigen::half>,
                  "SafetensorsFile::read converts to float, Eigen::bfloat16 or Eigen::half.");
    const SafetensorsTensor& stored = tensor(name);
    HEADROOM_CHECK(stored.shape == shape, kWhere, path_, ": tensor \"", name, "\" has shape ",
                   detail::shape_string(stored.shape), ", expected ", detail::shape_string(shape));
    const SafetensorsDtype dtype = stored.dtype;
    HEADROOM_CHECK(dtype == SafetensorsDtype::kF32 || dtype == SafetensorsDtype::kF64 ||
                       dtype == SafetensorsDtype::kBF16 || dtype == SafetensorsDtype::kF16,
                   kWhere, path_, ": tensor \"", name, "\" has dtype ",
                   safetensors_dtype_name(dtype),
                   ", expected a floating-point one (F32, F64, BF16 or F16)");
    detail::convert_elements(dtype, data(stored), stored.num_elements(), out);
  }

  /// Returns the tensor called `name`, of shape `shape`, converted to T (see read above).
  template <class T>
  std::vector<T> read(const std::string& name, const std::vector<Index>& shape) const {
    const SafetensorsTensor& stored = tensor(name);
    std::vector<T> values(static_cast<size_t>(stored.shape == shape ? stored.num_elements() : 0));
    read(name, shape, values.data());
    return values;
  }

 private:
  static constexpr const char* kWhere = "SafetensorsFile";
  // The deepest a header nests, as nlohmann::json's parser callback counts: the top object's
  // members are at depth 1, a tensor's fields at 2, the entries of its shape and offsets at 3.
  static constexpr int kMaxHeaderDepth = 3;
  // The most entries a shape (or any array or object inside an entry) may hold: far above any
  // tensor's rank, and a bound on what the parsed header costs beyond its text.
  static constexpr Index kMaxRank = 64;

  SafetensorsFile(detail::FileBytes bytes, std::string path)
      : bytes_(std::move(bytes)), path_(std::move(path)) {
    parse_header();
  }

  void parse_header() {
    const Index size = bytes_.size();
    HEADROOM_CHECK(size >= 8, kWhere, path_, ": file size (", size,
                   " bytes) is shorter than the 8-byte header length");
    const auto header_len = detail::load_unaligned<std::uint64_t>(bytes_.data(), 0);
    HEADROOM_CHECK(header_len <= static_cast<std::uint64_t>(kMaxHeaderBytes), kWhere, path_,
                   ": header length (", header_len, ") is over the format's limit of ",
                   kMaxHeaderBytes, " bytes");
    HEADROOM_CHECK(header_len <= static_cast<std::uint64_t>(size - 8), kWhere, path_,
                   ": header length (", header_len, ") runs past the end of the file (",
                   size - 8, " bytes after the length)");
    HEADROOM_CHECK(header_len >= 2 && bytes_.data()[8] == '{', kWhere, path_,
                   ": the header (", header_len, " bytes) does not start with '{'");
    data_start_ = 8 + static_cast<Index>(header_len);
    const Index data_size = size - data_start_;

    const char* text = reinterpret_cast<const char*>(bytes_.data() + 8);
    // nlohmann::json stops at a NUL as at the end of its input: a header with one could read
    // differently here than in other readers.
    const void* nul = std::memchr(text, 0, static_cast<size_t>(header_len));
    HEADROOM_CHECK(nul == nullptr, kWhere, path_, ": the header holds a NUL byte at offset ",
                   nul == nullptr ? 0 : static_cast<const char*>(nul) - text);
    nlohmann::json header;
    try {
      // The callback refuses, before they are built, nesting deeper than the format's, arrays
      // longer than a shape, and names or fields given twice (which JSON leaves to the reader).
      std::set<std::string> names, fields;
      Index entries = 0;
      using Event = nlohmann::json::parse_event_t;
      header = nlohmann::json::parse(
          text, text + header_len, [&](int depth, Event event, nlohmann::json& parsed) {
            HEADROOM_CHECK(depth <= kMaxHeaderDepth, kWhere, path_,
                           ": the header nests deeper (", depth,
                           ") than a safetensors header");
            if ((event == Event::object_start || event == Event::array_start) && depth == 1) {
              fields.clear();
            }
            if ((event == Event::object_start || event == Event::array_start) && depth == 2) {
              entries = 0;
            }
            if ((event == Event::value || event == Event::key) && depth == 3) {
              HEADROOM_CHECK(++entries <= kMaxRank, kWhere, path_,
                             ": an entry of the header holds an array or object of more than ",
                             kMaxRank, " elements");
            }
            if (event == Event::key && (depth == 1 || depth == 2)) {
              const std::string& key = parsed.get_ref<const std::string&>();
              HEADROOM_CHECK((depth == 1 ? names : fields).insert(key).second, kWhere, path_,
                             depth == 1 ? ": the header names \"" : ": an entry names field \"",
                             key, "\" twice");
            }
            return true;
          });
    } catch (const nlohmann::json::exception& e) {
      detail::throw_error(kWhere, path_, ": the header is not valid JSON: ", e.what());
    } catch (const std::bad_alloc&) {
      detail::throw_error(kWhere, path_, ": the header (", header_len,
                          " bytes) does not fit in memory once parsed");
    }
    HEADROOM_CHECK(header.is_object(), kWhere, path_, ": the header is not a JSON object");

    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") {
        parse_metadata(entry);
        continue;
      }
      tensors_.push_back(parse_tensor(name, entry, data_size));
    }
    // The byte ranges, in order, must tile the data section: no overlap, no hole.
    std::stable_sort(tensors_.begin(), tensors_.end(),
                     [](const SafetensorsTensor& a, const SafetensorsTensor& b) {
                       return a.offset != b.offset ? a.offset < b.offset : a.bytes < b.bytes;
                     });
    Index covered = 0;
    for (const SafetensorsTensor& tensor : tensors_) {
      HEADROOM_CHECK(tensor.offset == covered, kWhere, path_, ": tensor \"", tensor.name,
                     "\" starts at byte ", tensor.offset, " of the data section, expected ",
                     covered, tensor.offset < covered ? " (it overlaps the tensor before)"
                                                      : " (the bytes between belong to no tensor)");
      covered += tensor.bytes;
    }
    HEADROOM_CHECK(covered == data_size, kWhere, path_, ": the tensors cover ", covered,
                   " bytes of the data section, which has ", data_size);
    for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
  }

  void parse_metadata(const nlohmann::json& entry) {
    if (entry.is_null()) return;  // as the format's reader: no metadata
    HEADROOM_CHECK(entry.is_object(), kWhere, path_,
                   ": \"__metadata__\" is not an object of strings");
    for (const auto& [key, value] : entry.items()) {
      HEADROOM_CHECK(value.is_string(), kWhere, path_, ": \"__metadata__\" entry \"", key,
                     "\" is not a string");
      metadata_.emplace(key, value.get<std::string>());
    }
  }

  // Returns `value` as an Index if it is a JSON integer in [0, limit], else throws naming `field`.
  Index parse_count(const nlohmann::json& value, const std::string& name, const char* field,
                    Index limit) const {
    const bool bounded = limit < std::numeric_limits<Index>::max();
    // Parsed text holds non-negative integers as unsigned; a header built in code may hold them
    // signed.
    const bool in_range =
        value.is_number_unsigned()
            ? value.get<std::uint64_t>() <= static_cast<std::uint64_t>(limit)
            : value.is_number_integer() && value.get<std::int64_t>() >= 0 &&
                  value.get<std::int64_t>() <= limit;
    HEADROOM_CHECK(in_range,
                   kWhere, path_, ": tensor \"", name, "\" ", field, " (", detail::json_excerpt(value),
                   ") is not ",
                   bounded ? "an integer in [0, " + std::to_string(limit) + "]"
                           : std::string("a non-negative integer below 2^63"));
    return static_cast<Index>(value.get<std::int64_t>());
  }

  SafetensorsTensor parse_tensor(const std::string& name, const nlohmann::json& entry,
                                 Index data_size) const {
    HEADROOM_CHECK(entry.is_object(), kWhere, path_, ": tensor \"", name,
                   "\" is not an object with dtype, shape and data_offsets");
    for (const char* field : {"dtype", "shape", "data_offsets"}) {
      HEADROOM_CHECK(entry.contains(field), kWhere, path_, ": tensor \"", name, "\" has no \"",
                     field, "\"");
    }
    SafetensorsTensor tensor;
    tensor.name = name;

    const nlohmann::json& dtype = entry["dtype"];
    const detail::SafetensorsDtypeInfo* info = nullptr;
    for (const detail::SafetensorsDtypeInfo& known : detail::kSafetensorsDtypes) {
      if (dtype.is_string() && dtype.get_ref<const std::string&>() == known.name) info = &known;
    }
    HEADROOM_CHECK(info != nullptr, kWhere, path_, ": tensor \"", name, "\" dtype (",
                   detail::json_excerpt(dtype), ") is not one of the format's (F32, BF16, F16, I8, ...)");
    tensor.dtype = info->dtype;

    // Elements count against what the data section can hold, so no product overflows; the
    // product of the nonzero extents must fit an Index too (as the format's reader requires).
    const nlohmann::json& shape = entry["shape"];
    HEADROOM_CHECK(shape.is_array(), kWhere, path_, ": tensor \"", name, "\" shape (",
                   detail::json_excerpt(shape), ") is not an array");
    const Index bits = info->bits;
    const Index max_elements = data_size / bits * 8 + data_size % bits * 8 / bits;
    constexpr Index kMaxIndex = std::numeric_limits<Index>::max();
    Index nonzero_product = 1;
    for (const nlohmann::json& dim : shape) {
      const Index extent = parse_count(dim, name, "shape entry", kMaxIndex);
      tensor.shape.push_back(extent);
      if (extent == 0) continue;
      HEADROOM_CHECK(nonzero_product <= kMaxIndex / extent, kWhere, path_, ": tensor \"", name,
                     "\" shape ", detail::shape_string(tensor.shape), "... overflows 2^63 elements");
      nonzero_product *= extent;
    }
    const bool empty = std::find(tensor.shape.begin(), tensor.shape.end(), Index{0}) !=
                       tensor.shape.end();
    const Index elements = empty ? 0 : nonzero_product;
    HEADROOM_CHECK(elements <= max_elements, kWhere, path_, ": tensor \"", name, "\" of shape ",
                   detail::shape_string(tensor.shape), " and dtype ", info->name,
                   " needs more bytes than the data section has (", data_size, ")");
    HEADROOM_CHECK(elements * bits % 8 == 0, kWhere, path_, ": tensor \"", name, "\" of shape ",
                   detail::shape_string(tensor.shape), " and dtype ", info->name,
                   " does not fill whole bytes");
    const Index needed = elements * bits / 8;

    const nlohmann::json& offsets = entry["data_offsets"];
    HEADROOM_CHECK(offsets.is_array() && offsets.size() == 2, kWhere, path_, ": tensor \"", name,
                   "\" data_offsets (", detail::json_excerpt(offsets), ") is not a pair [begin, end]");
    const Index begin = parse_count(offsets[0], name, "data_offsets begin", data_size);
    const Index end = parse_count(offsets[1], name, "data_offsets end", data_size);
    HEADROOM_CHECK(begin <= end, kWhere, path_, ": tensor \"", name, "\" data_offsets [", begin,
                   ", ", end, "] end before they begin");
    HEADROOM_CHECK(end - begin == needed, kWhere, path_, ": tensor \"", name,
                   "\" data_offsets [", begin, ", ", end, "] hold ", end - begin,
                   " bytes, but shape ", detail::shape_string(tensor.shape), " of ", info->name,
                   " needs ", needed);
    tensor.offset = begin;
    tensor.bytes = end - begin;
    return tensor;
  }

  detail::FileBytes bytes_;
  std::string path_;
  Index data_start_ = 0;  // 8 + the header length
  std::vector<SafetensorsTensor> tensors_;                 // by offset
  std::unordered_map<std::string, size_t> index_;          // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

}  // namespace headroom
