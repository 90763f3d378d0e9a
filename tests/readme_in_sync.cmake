# Fails unless README.md contains, verbatim, the code between the markers of readme_example.cpp.
# Usage: cmake -DREADME=<README.md> -DEXAMPLE=<readme_example.cpp> -P readme_in_sync.cmake
file(READ ${EXAMPLE} example)
string(REGEX MATCH "// \\[readme-example-begin\\]\n(.*)// \\[readme-example-end\\]" _ "${example}")
set(code "${CMAKE_MATCH_1}")
if(code STREQUAL "")
  message(FATAL_ERROR "no readme-example markers in ${EXAMPLE}")
endif()
file(READ ${README} readme)
string(FIND "${readme}" "```cpp\n${code}```" found)
if(found EQUAL -1)
  message(FATAL_ERROR "README.md does not contain the example of ${EXAMPLE} verbatim (in a ```cpp block)")
endif()
message(STATUS "README example in sync")
