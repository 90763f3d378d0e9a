# Settings for moe's own tests, examples and benchmarks (not exported).
if(NOT CMAKE_BUILD_TYPE AND NOT CMAKE_CONFIGURATION_TYPES)
  set(CMAKE_BUILD_TYPE Release CACHE STRING "Build type" FORCE)
endif()
set(CMAKE_CXX_EXTENSIONS OFF)

add_library(moe_warnings INTERFACE)
target_compile_options(moe_warnings INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow>)

if(MOE_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
endif()

# CUDA: detected, optional. MOE_CUDA is ON when CUDA targets are built.
set(MOE_CUDA OFF)
if(MOE_ENABLE_CUDA AND NOT MOE_SANITIZE)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    enable_language(CUDA)
    set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
    set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
    find_package(CUDAToolkit REQUIRED)
    set(MOE_CUDA ON)
    message(STATUS "moe: CUDA targets on (architectures ${CMAKE_CUDA_ARCHITECTURES})")
  else()
    message(STATUS "moe: no CUDA compiler found; CUDA targets off")
  endif()
endif()

# moe_cuda_options(target): flags every CUDA target of moe uses.
function(moe_cuda_options target)
  set_target_properties(${target} PROPERTIES CUDA_STANDARD 20 CUDA_STANDARD_REQUIRED ON)
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:--extended-lambda --expt-relaxed-constexpr>)
endfunction()
