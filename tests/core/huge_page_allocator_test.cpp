// SPDX-License-Identifier: MIT
// Tests detail::HugePageAllocator: alignment on both sides of the huge-page threshold, contents
// through a vector's growth, and the refusal of sizes that overflow.
#include "headroom/core/huge_page_allocator.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <new>
#include <vector>

namespace headroom::detail {
namespace {

std::uintptr_t address(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }

TEST(HugePageAllocatorTest, SmallBuffersArePacketAlignedLargeOnesHugePageAligned) {
  HugePageAllocator<float> allocator;
  // Just below, at and above the threshold, and a size that is not a whole number of pages.
  for (std::size_t floats : {std::size_t{1}, std::size_t{1000}, kHugePageBytes / 4 - 1,
                             kHugePageBytes / 4, kHugePageBytes / 4 + 1, 3 * kHugePageBytes / 4 + 7}) {
    SCOPED_TRACE(floats);
    float* data = allocator.allocate(floats);
    ASSERT_NE(data, nullptr);
    // Eigen's packet alignment for this build: 64 bytes with AVX-512, 16 with SSE2 only.
    static_assert(EIGEN_DEFAULT_ALIGN_BYTES > 0, "the tests build with Eigen's alignment on");
    EXPECT_EQ(address(data) % EIGEN_DEFAULT_ALIGN_BYTES, 0u);
    if (floats * sizeof(float) >= kHugePageBytes) {
      EXPECT_EQ(address(data) % kHugePageBytes, 0u);
    }
    // Every element is writable (AddressSanitizer checks the bounds in CI).
    for (std::size_t i = 0; i < floats; ++i) data[i] = static_cast<float>(i);
    EXPECT_EQ(data[floats - 1], static_cast<float>(floats - 1));
    allocator.deallocate(data, floats);
  }
}

TEST(HugePageAllocatorTest, VectorKeepsItsContentsAcrossTheThreshold) {
  // Growth moves the elements from Eigen's aligned blocks into huge-page blocks and back again.
  std::vector<std::int32_t, HugePageAllocator<std::int32_t>> values;
  const std::int32_t count = static_cast<std::int32_t>(kHugePageBytes / sizeof(std::int32_t)) * 2;
  for (std::int32_t i = 0; i < count; ++i) values.push_back(i * 3);
  for (std::int32_t i = 0; i < count; ++i) ASSERT_EQ(values[static_cast<std::size_t>(i)], i * 3);
  values.resize(10);
  values.shrink_to_fit();
  for (std::int32_t i = 0; i < 10; ++i) EXPECT_EQ(values[static_cast<std::size_t>(i)], i * 3);
}

TEST(HugePageAllocatorTest, SizesThatOverflowThrowBadAlloc) {
  HugePageAllocator<double> allocator;
  EXPECT_THROW(static_cast<void>(allocator.allocate(std::numeric_limits<std::size_t>::max() / 4)),
               std::bad_alloc);
}

}  // namespace
}  // namespace headroom::detail
