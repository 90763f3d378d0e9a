# Test-time steps of the packaging tests, run by ctest as `cmake -DSETTINGS=... -DACTION=... -P driver.cmake`.
#
#   ACTION=install            fresh `cmake --install` of the parent build into INSTALL_PREFIX
#   ACTION=consumer           configure, build and ctest a consumer project (MODE=find_package|add_subdirectory)
#   ACTION=build              `cmake --build` the parent build's TARGETS (comma-separated); expect success,
#                             or with EXPECT_ERROR=<text> a failure whose static_assert diagnostic has <text>
#                             (OBJECT_DIR: the TARGETS' objects, removed first so that the compiler runs)
#   ACTION=compare            run executables A and B; both must succeed and print the same bytes
#
# SETTINGS is written by tests/packaging/CMakeLists.txt at configure time (generator, compilers,
# flags, paths), so that every step uses what the parent build uses; CONFIG is the ctest config.
cmake_minimum_required(VERSION 3.25)

if(NOT SETTINGS OR NOT EXISTS "${SETTINGS}")
  message(FATAL_ERROR "driver.cmake: SETTINGS='${SETTINGS}' is not a file")
endif()
include("${SETTINGS}")
if(NOT DEFINED CONFIG OR CONFIG STREQUAL "")
  set(CONFIG "${MOE_PKG_DEFAULT_CONFIG}")
endif()

# run(<description> COMMAND...): runs a command (echoed), fails the test when it fails.
function(run description)
  execute_process(COMMAND ${ARGN} COMMAND_ECHO STDOUT RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${description} failed (exit ${rc})")
  endif()
endfunction()

if(ACTION STREQUAL "install")
  # A stale prefix could hide a file the install rules no longer produce: start empty.
  file(REMOVE_RECURSE "${MOE_PKG_INSTALL_PREFIX}")
  set(config_args)
  if(CONFIG)
    set(config_args --config "${CONFIG}")
  endif()
  run("cmake --install" "${CMAKE_COMMAND}" --install "${MOE_PKG_PARENT_BINARY_DIR}" --prefix
      "${MOE_PKG_INSTALL_PREFIX}" ${config_args})
  foreach(expected IN ITEMS "${MOE_PKG_INCLUDEDIR}/moe/moe.hpp" "${MOE_PKG_INCLUDEDIR}/moe/layer/layer.hpp"
                            "${MOE_PKG_LIBDIR}/cmake/moe/moeConfig.cmake"
                            "${MOE_PKG_LIBDIR}/cmake/moe/moeConfigVersion.cmake"
                            "${MOE_PKG_LIBDIR}/cmake/moe/moeTargets.cmake")
    if(NOT EXISTS "${MOE_PKG_INSTALL_PREFIX}/${expected}")
      message(FATAL_ERROR "the install did not produce ${expected}")
    endif()
  endforeach()

elseif(ACTION STREQUAL "consumer")
  set(build_dir "${MOE_PKG_WORK_DIR}/consumer-${MODE}")
  file(REMOVE_RECURSE "${build_dir}")
  set(configure_args -G "${MOE_PKG_GENERATOR}" "-DCMAKE_CXX_COMPILER=${MOE_PKG_CXX_COMPILER}"
                     "-DCMAKE_CXX_FLAGS=${MOE_PKG_CXX_FLAGS}" "-DCMAKE_EXE_LINKER_FLAGS=${MOE_PKG_EXE_LINKER_FLAGS}")
  if(MOE_PKG_GENERATOR_PLATFORM)
    list(APPEND configure_args -A "${MOE_PKG_GENERATOR_PLATFORM}")
  endif()
  if(MOE_PKG_GENERATOR_TOOLSET)
    list(APPEND configure_args -T "${MOE_PKG_GENERATOR_TOOLSET}")
  endif()
  if(MOE_PKG_MAKE_PROGRAM)
    list(APPEND configure_args "-DCMAKE_MAKE_PROGRAM=${MOE_PKG_MAKE_PROGRAM}")
  endif()
  if(MOE_PKG_CXX_COMPILER_LAUNCHER)
    list(APPEND configure_args "-DCMAKE_CXX_COMPILER_LAUNCHER=${MOE_PKG_CXX_COMPILER_LAUNCHER}")
  endif()
  if(CONFIG)
    list(APPEND configure_args "-DCMAKE_BUILD_TYPE=${CONFIG}")
  endif()
  if(MODE STREQUAL "find_package")
    set(source_dir "${MOE_PKG_SOURCE_DIR}/consumer")
    # Only the fresh install may satisfy find_package: not the user package registry, not a moe
    # installed system-wide.
    list(APPEND configure_args "-DCMAKE_PREFIX_PATH=${MOE_PKG_INSTALL_PREFIX}" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
         -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
  elseif(MODE STREQUAL "add_subdirectory")
    set(source_dir "${MOE_PKG_SOURCE_DIR}/consumer_subdir")
    list(APPEND configure_args "-DMOE_SOURCE_DIR=${MOE_PKG_MOE_SOURCE_DIR}" "-DMOE_USE_BLAS=${MOE_PKG_USE_BLAS}")
  else()
    message(FATAL_ERROR "driver.cmake: unknown MODE '${MODE}'")
  endif()

  run("configuring the ${MODE} consumer" "${CMAKE_COMMAND}" -S "${source_dir}" -B "${build_dir}" ${configure_args})
  if(MODE STREQUAL "find_package")
    # Guard against a moe found anywhere but in the prefix this test installed.
    file(STRINGS "${build_dir}/CMakeCache.txt" moe_dir_line REGEX "^moe_DIR:")
    string(REGEX REPLACE "^moe_DIR:[A-Z]+=" "" moe_dir "${moe_dir_line}")
    file(REAL_PATH "${moe_dir}" moe_dir)
    file(REAL_PATH "${MOE_PKG_INSTALL_PREFIX}" prefix)
    string(FIND "${moe_dir}/" "${prefix}/" at)
    if(NOT at EQUAL 0)
      message(FATAL_ERROR "find_package(moe) used ${moe_dir}, not the test install in ${prefix}")
    endif()
  endif()
  set(config_args)
  set(ctest_config_args)
  if(CONFIG)
    set(config_args --config "${CONFIG}")
    set(ctest_config_args -C "${CONFIG}")
  endif()
  run("building the ${MODE} consumer" "${CMAKE_COMMAND}" --build "${build_dir}" ${config_args})
  run("running the ${MODE} consumer" "${CMAKE_CTEST_COMMAND}" --test-dir "${build_dir}" --output-on-failure
      --no-tests=error ${ctest_config_args})

elseif(ACTION STREQUAL "build")
  set(config_args)
  if(CONFIG)
    set(config_args --config "${CONFIG}")
  endif()
  string(REPLACE "," ";" TARGETS "${TARGETS}")
  if(DEFINED OBJECT_DIR)
    file(REMOVE_RECURSE "${OBJECT_DIR}")
  endif()
  execute_process(COMMAND "${CMAKE_COMMAND}" --build "${MOE_PKG_PARENT_BINARY_DIR}" --target ${TARGETS} ${config_args}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  message("${out}")
  if(NOT DEFINED EXPECT_ERROR)
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR "building ${TARGETS} failed (exit ${rc}); it must compile")
    endif()
  else()
    if(rc EQUAL 0)
      message(FATAL_ERROR "building ${TARGETS} succeeded; it must be rejected with \"${EXPECT_ERROR}\"")
    endif()
    # The diagnostic itself must carry the message: "static assertion failed: ... <text>" (GCC,
    # Clang) or "static_assert failed: ... <text>" (MSVC), on one line.
    string(REGEX REPLACE "([][+*.?^$(){}|\\\\])" "\\\\\\1" expected_regex "${EXPECT_ERROR}")
    if(NOT out MATCHES "static.assert[^\n]*${expected_regex}")
      message(FATAL_ERROR "building ${TARGETS} failed, but without a static_assert saying \"${EXPECT_ERROR}\"")
    endif()
    message(STATUS "rejected as expected: static_assert \"... ${EXPECT_ERROR} ...\"")
  endif()

elseif(ACTION STREQUAL "compare")
  execute_process(COMMAND "${A}" RESULT_VARIABLE rc_a OUTPUT_VARIABLE out_a ERROR_VARIABLE err_a)
  execute_process(COMMAND "${B}" RESULT_VARIABLE rc_b OUTPUT_VARIABLE out_b ERROR_VARIABLE err_b)
  message("---- ${A} (exit ${rc_a})\n${out_a}${err_a}---- ${B} (exit ${rc_b})\n${out_b}${err_b}")
  if(NOT rc_a EQUAL 0 OR NOT rc_b EQUAL 0)
    message(FATAL_ERROR "a program failed its own checks (exits ${rc_a}, ${rc_b})")
  endif()
  if(out_a STREQUAL "")
    message(FATAL_ERROR "the programs printed nothing to compare")
  endif()
  if(NOT out_a STREQUAL out_b)
    message(FATAL_ERROR "the outputs differ: the two compilers disagree on the same code (lines above)")
  endif()
  message(STATUS "identical output, bit for bit")

else()
  message(FATAL_ERROR "driver.cmake: unknown ACTION '${ACTION}'")
endif()
