# SPDX-License-Identifier: MIT
# Runs one packaging test step as a script (cmake -P); tests/packaging/CMakeLists.txt passes:
#   STEP        install: configure, build and install headroom from SOURCE_DIR into PREFIX;
#               consumer: configure, build and run the consumer project in SOURCE_DIR
#   SOURCE_DIR, BINARY_DIR, GENERATOR, CXX_COMPILER, BUILD_TYPE, and ARGS (extra -D options, '|'-separated)
#   PREFIX      the install prefix (install), or the prefix to find headroom in (consumer, optional)
cmake_minimum_required(VERSION 3.16)

# Runs a command, echoing it; stops the test with its output when it fails. The output goes to `out_var`.
function(run out_var)
  string(REPLACE ";" " " _shown "${ARGN}")
  message(STATUS "run: ${_shown}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE _result OUTPUT_VARIABLE _output
                  ERROR_VARIABLE _output)
  if(NOT _result EQUAL 0)
    message(FATAL_ERROR "failed (${_result}): ${_shown}\n${_output}")
  endif()
  set(${out_var} "${_output}" PARENT_SCOPE)
endfunction()

string(REPLACE "|" ";" ARGS "${ARGS}")
file(REMOVE_RECURSE "${BINARY_DIR}")
set(_configure "${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${BINARY_DIR}" -G "${GENERATOR}"
               "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}" ${ARGS})
if(MAKE_PROGRAM)
  list(APPEND _configure "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
set(_build "${CMAKE_COMMAND}" --build "${BINARY_DIR}" --config "${BUILD_TYPE}" --verbose)

if(STEP STREQUAL "install")
  file(REMOVE_RECURSE "${PREFIX}")
  run(_out ${_configure} "-DCMAKE_INSTALL_PREFIX=${PREFIX}")
  run(_out ${_build})
  run(_out "${CMAKE_COMMAND}" --install "${BINARY_DIR}" --config "${BUILD_TYPE}")
  message("${_out}")
elseif(STEP STREQUAL "consumer")
  if(PREFIX)
    list(APPEND _configure "-DCMAKE_PREFIX_PATH=${PREFIX}" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
  endif()
  run(_out ${_configure})
  if(PREFIX)  # the package must come from the install prefix, not from the source or build tree
    file(STRINGS "${BINARY_DIR}/CMakeCache.txt" _dir REGEX "^headroom_DIR:")
    string(REGEX REPLACE "^headroom_DIR:[A-Z]+=" "" _dir "${_dir}")
    file(REAL_PATH "${PREFIX}" _prefix)
    file(REAL_PATH "${_dir}" _dir)
    string(FIND "${_dir}/" "${_prefix}/" _at)
    if(NOT _at EQUAL 0)
      message(FATAL_ERROR "headroom was found in ${_dir}, not in the install prefix ${_prefix}")
    endif()
  endif()
  run(_out ${_build})
  # headroom::headroom must never force -march=native (or any -march) on the code that links it.
  string(REGEX MATCH "[^\n]*-march=[^\n]*" _march "${_out}")
  if(_march)
    message(FATAL_ERROR "the consumer was compiled with -march:\n${_march}")
  endif()
  set(_exe "${BINARY_DIR}/headroom_consumer")
  if(NOT EXISTS "${_exe}")  # multi-config generators put it in a folder per configuration
    set(_exe "${BINARY_DIR}/${BUILD_TYPE}/headroom_consumer")
  endif()
  run(_out "${_exe}")
  message("${_out}")
else()
  message(FATAL_ERROR "STEP must be install or consumer, not '${STEP}'")
endif()
