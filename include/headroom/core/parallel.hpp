// SPDX-License-Identifier: MIT
// parallel_for over independent work items: OpenMP when the compiler enables it, serial otherwise.
#pragma once

#include <algorithm>
#include <atomic>
#include <exception>

#include "headroom/core/error.hpp"
#include "headroom/core/tensor_view.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace headroom {

/// Returns the number of threads headroom uses when a call asks for 0 (the default): OpenMP's
/// current maximum, or 1 without OpenMP.
inline int default_num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

namespace detail {

/// Resolves a requested thread count (0 means the default) and caps it at the number of items.
inline int resolve_num_threads(int requested, Index num_items) {
  const int wanted = requested > 0 ? requested : default_num_threads();
  return static_cast<int>(std::max<Index>(1, std::min<Index>(wanted, num_items)));
}

/// Calls body(thread, item) for every item in [0, num_items) on `num_threads` threads. Items are
/// handed out dynamically, so callers list the heaviest first; each item must be computed by one
/// thread alone, which makes results independent of the thread count. Items are handed out in
/// runs of `run_length` (the runs [j * run_length, (j + 1) * run_length)), each run computed in
/// order by one thread, which may then prepare an item's successor within its run.
template <class Body>
void parallel_for(Index num_items, int num_threads, Body&& body, Index run_length = 1) {
  HEADROOM_DASSERT(run_length >= 1);
#ifdef _OPENMP
  if (num_threads > 1) {
    // No exception may leave an OpenMP region (it would terminate the program): the first one a
    // body throws (std::bad_alloc growing a thread's scratch) is kept, the items not yet started
    // are skipped, and it is rethrown on the calling thread.
    std::exception_ptr failure;
    std::atomic<bool> failed{false};
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, run_length)
    for (Index item = 0; item < num_items; ++item) {
      if (failed.load(std::memory_order_relaxed)) continue;
      try {
        body(omp_get_thread_num(), item);
      } catch (...) {
        if (!failed.exchange(true)) failure = std::current_exception();
      }
    }
    if (failure) std::rethrow_exception(failure);
    return;
  }
#else
  static_cast<void>(num_threads);
  static_cast<void>(run_length);
#endif
  for (Index item = 0; item < num_items; ++item) body(0, item);
}

}  // namespace detail
}  // namespace headroom
