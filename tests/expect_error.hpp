// SPDX-License-Identifier: MIT
// The check every error-path test makes: a call throws headroom::Error with a given message.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "headroom/core/error.hpp"

namespace headroom::testing {

/// Runs `call` and checks that it throws headroom::Error whose message contains `message`.
template <class Call>
void expect_error(Call&& call, const std::string& message) {
  try {
    call();
    ADD_FAILURE() << "no headroom::Error; expected one containing: " << message;
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find(message), std::string::npos)
        << "message: " << error.what() << "\nexpected: " << message;
  }
}

}  // namespace headroom::testing
