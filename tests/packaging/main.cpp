// SPDX-License-Identifier: MIT
// A consumer of headroom, shared by the find_package and add_subdirectory packaging tests.
#include <headroom/headroom.hpp>
#include <headroom/version.hpp>

#include <cstdio>
#include <cstring>

// The consumer's CMakeLists.txt passes the version CMake saw, so the header and the package agree.
static_assert(HEADROOM_VERSION_MAJOR == HEADROOM_EXPECTED_VERSION_MAJOR &&
                  HEADROOM_VERSION_MINOR == HEADROOM_EXPECTED_VERSION_MINOR &&
                  HEADROOM_VERSION_PATCH == HEADROOM_EXPECTED_VERSION_PATCH,
              "headroom/version.hpp disagrees with the version of the CMake package.");

int main() {
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
