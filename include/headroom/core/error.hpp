// SPDX-License-Identifier: MIT
// headroom::Error and the checks that raise it at public entry points.
#pragma once

#include <cassert>
#include <sstream>
#include <stdexcept>
#include <string>

namespace headroom {

/// Signals bad input at a public entry point. The message names the function, the offending argument,
/// its value and what was expected, e.g.
/// "headroom::attend: q.heads (12) is not a multiple of k.heads (5)".
class Error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

/// Throws headroom::Error with "headroom::<where>: " followed by the streamed parts.
template <class... Parts>
[[noreturn]] void throw_error(const char* where, const Parts&... parts) {
  std::ostringstream message;
  message << "headroom::" << where << ": ";
  (message << ... << parts);
  throw Error(message.str());
}

}  // namespace detail
}  // namespace headroom

/// Validates a public argument in every build type; on failure throws headroom::Error built from
/// `where` (the function name) and the remaining arguments streamed in order.
#define HEADROOM_CHECK(condition, where, ...)                  \
  do {                                                         \
    if (!(condition)) {                                        \
      ::headroom::detail::throw_error(where, __VA_ARGS__);     \
    }                                                          \
  } while (false)

/// Checks an internal invariant in hot code; compiled out under NDEBUG. Define HEADROOM_DASSERT before
/// including headroom to make it throw in tests.
#ifndef HEADROOM_DASSERT
#ifdef NDEBUG
#define HEADROOM_DASSERT(condition) static_cast<void>(0)
#else
#define HEADROOM_DASSERT(condition) assert(condition)
#endif
#endif
