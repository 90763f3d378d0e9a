# moe_require_cuda_free(<target>): fails the configure step when the usage requirements of
# <target> (moe::moe) would put a CUDA include directory or library on a C++ consumer's command
# line. Together with the consumer's own preprocessor checks (main.cpp) this is what shows that
# <moe/moe.hpp> compiles with a plain C++ compiler and no CUDA include path.
function(moe_require_cuda_free target)
  get_target_property(includes ${target} INTERFACE_INCLUDE_DIRECTORIES)
  get_target_property(system_includes ${target} INTERFACE_SYSTEM_INCLUDE_DIRECTORIES)
  get_target_property(links ${target} INTERFACE_LINK_LIBRARIES)
  foreach(dir IN LISTS includes system_includes)
    # Build-tree usage is $<BUILD_INTERFACE:dir>; the install-tree half is not used here.
    if(dir MATCHES "^\\$<INSTALL_INTERFACE:" OR dir MATCHES "-NOTFOUND$")
      continue()
    endif()
    string(REGEX REPLACE "^\\$<BUILD_INTERFACE:(.*)>$" "\\1" dir "${dir}")
    # The compiler's own directories are searched anyway (a distribution may keep CUDA there).
    if(dir IN_LIST CMAKE_CXX_IMPLICIT_INCLUDE_DIRECTORIES)
      continue()
    endif()
    if(EXISTS "${dir}/cuda_runtime.h" OR EXISTS "${dir}/cuda_runtime_api.h")
      message(FATAL_ERROR "${target} puts the CUDA include directory ${dir} on a C++ consumer's path")
    endif()
  endforeach()
  if(links MATCHES "CUDA::|cudart|libcuda")
    message(FATAL_ERROR "${target} links CUDA into a C++ consumer: ${links}")
  endif()
  message(STATUS "${target}: no CUDA include directory or library in its usage requirements")
endfunction()
