# Fails unless a Markdown file contains, verbatim in a ```cpp block, the code between the markers
# `// [MARKER-begin]` and `// [MARKER-end]` of a source file (MARKER: readme-example by default).
# Usage: cmake -DREADME=<README.md> -DEXAMPLE=<readme_example.cpp> [-DMARKER=<name>] -P readme_in_sync.cmake
if(NOT DEFINED MARKER)
  set(MARKER readme-example)
endif()
file(READ ${EXAMPLE} example)
string(REGEX MATCH "// \\[${MARKER}-begin\\]\n(.*)// \\[${MARKER}-end\\]" _ "${example}")
set(code "${CMAKE_MATCH_1}")
if(code STREQUAL "")
  message(FATAL_ERROR "no ${MARKER} markers in ${EXAMPLE}")
endif()
file(READ ${README} readme)
string(FIND "${readme}" "```cpp\n${code}```" found)
if(found EQUAL -1)
  message(FATAL_ERROR "${README} does not contain the ${MARKER} code of ${EXAMPLE} verbatim (in a ```cpp block)")
endif()
message(STATUS "${README}: the ${MARKER} code of ${EXAMPLE} is in sync")
