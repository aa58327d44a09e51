# SPDX-License-Identifier: MIT
# Fails unless README.md shows examples/usage.cpp (after its first comment line) and .ci/run runs the
# README's test command: the README's promises are checked, not trusted.
file(READ ${SOURCE_DIR}/README.md readme)
file(READ ${SOURCE_DIR}/examples/usage.cpp usage)
string(REGEX REPLACE "^//[^\n]*\n" "" usage "${usage}")
string(FIND "${readme}" "${usage}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "README.md does not contain examples/usage.cpp verbatim; copy it over")
endif()
file(READ ${SOURCE_DIR}/.ci/run ci)
string(REGEX MATCH "readme_test_command='([^']*)'" _ "${ci}")
set(command "${CMAKE_MATCH_1}")
string(FIND "${readme}" "${command}" at)
if(command STREQUAL "" OR at EQUAL -1)
  message(FATAL_ERROR "README.md does not hold .ci/run's test command: '${command}'")
endif()
