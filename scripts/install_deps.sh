#!/usr/bin/env bash
# Installs, with apt-get, whatever of moe's build and test dependencies is missing on a Debian or
# Ubuntu machine. Does nothing (and needs no network) when everything is already there.
# Sourced by scripts/test.sh and scripts/demo.sh; also runnable on its own.
set -euo pipefail

moe_install_deps() {
  local -a missing=()
  # Tools: present on PATH is enough, however they were installed.
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)
  command -v ninja >/dev/null 2>&1 || missing+=(ninja-build)
  command -v g++ >/dev/null 2>&1 || missing+=(g++)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  # Libraries: asked of dpkg (headers and CMake configs have no command to look for).
  local pkg
  # python3-matplotlib: scripts/plot.py (the system python3 is the one that sees it).
  # libopenblas0-openmp: OpenBLAS's OpenMP build beside the default pthreads one (which stays the
  # default), for the test that host GEMMs stay single-threaded under it too.
  for pkg in doctest-dev libbenchmark-dev libopenblas-dev libopenblas0-openmp python3-matplotlib; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    echo "dependencies: all present"
    return 0
  fi
  echo "dependencies: installing ${missing[*]}"
  local -a sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "error: not root and no sudo; install: ${missing[*]}" >&2; return 1; }
    sudo=(sudo)
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# A CUDA toolkit in its default place but not on PATH still counts: CMake looks for nvcc on PATH.
moe_find_nvcc() {
  if ! command -v nvcc >/dev/null 2>&1 && [[ -x /usr/local/cuda/bin/nvcc ]]; then
    export PATH="/usr/local/cuda/bin:$PATH"
  fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  moe_install_deps
fi
