// SPDX-License-Identifier: MIT
// A consumer of headroom, shared by the find_package and add_subdirectory packaging tests.
#include <headroom/headroom.hpp>
#include <headroom/io/safetensors.hpp>
#include <headroom/version.hpp>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

// The consumer's CMakeLists.txt passes the version CMake saw, so the header and the package agree.
static_assert(HEADROOM_VERSION_MAJOR == HEADROOM_EXPECTED_VERSION_MAJOR &&
                  HEADROOM_VERSION_MINOR == HEADROOM_EXPECTED_VERSION_MINOR &&
                  HEADROOM_VERSION_PATCH == HEADROOM_EXPECTED_VERSION_PATCH,
              "headroom/version.hpp disagrees with the version of the CMake package.");

// Reads a one-scalar safetensors file from memory: the io/ headers find nlohmann/json through the
// package's dependencies.
static bool reads_safetensors() {
  const std::string header = R"({"x":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})";
  const std::uint64_t length = header.size();
  const float value = 1.5f;
  std::vector<unsigned char> file(8 + header.size() + sizeof value);
  std::memcpy(file.data(), &length, 8);
  std::memcpy(file.data() + 8, header.data(), header.size());
  std::memcpy(file.data() + 8 + header.size(), &value, sizeof value);
  const auto st = headroom::SafetensorsFile::from_bytes(file);
  return st.read<float>("x", {}) == std::vector<float>{1.5f};
}

int main() {
  if (!reads_safetensors()) {
    std::fprintf(stderr, "the safetensors scalar did not read back\n");
    return 1;
  }
  const char* expected = "headroom::consumer: num_heads (12) is not a multiple of num_kv_heads (5)";
  try {
    const int num_heads = 12;
    const int num_kv_heads = 5;
    HEADROOM_CHECK(num_heads % num_kv_heads == 0, "consumer", "num_heads (", num_heads,
                   ") is not a multiple of num_kv_heads (", num_kv_heads, ")");
  } catch (const headroom::Error& error) {
    if (std::strcmp(error.what(), expected) != 0) {
      std::fprintf(stderr, "unexpected message: %s\n", error.what());
      return 1;
    }
    std::printf("headroom %d.%d.%d consumer ok\n", HEADROOM_VERSION_MAJOR, HEADROOM_VERSION_MINOR,
                HEADROOM_VERSION_PATCH);
    return 0;
  }
  std::fprintf(stderr, "HEADROOM_CHECK did not throw\n");
  return 1;
}
