#!/usr/bin/env bash
# Builds the GPU test and benchmark binaries and moe-train here (x86-64, nvcc, sm_90) and packs them into DIR
# (default .gpu) for a GPU machine that lacks doctest and Google Benchmark: then, there,
#   MOE_GPU_BIN=.gpu/bin scripts/gpu-check.sh OUT
# The host reference inside the tests uses the portable GEMM (MOE_USE_BLAS=OFF), so nothing but the
# CUDA libraries (cudart, cuBLAS, NCCL: present on the GPU machine) and libbenchmark is needed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir=${1:-.gpu}
build=build/gpu
targets=(cuda_primitives_test cuda_layer_test cuda_layer_modes_test cuda_expert_parallel_test moe_bench_cuda moe-train)
cmake --preset cuda -B "$build" -DMOE_USE_BLAS=OFF -DMOE_BUILD_EXAMPLES=ON >/dev/null
cmake --build "$build" -j "$(nproc)" --target "${targets[@]}"
rm -rf "$dir" && mkdir -p "$dir/bin" "$dir/lib"
for t in "${targets[@]}"; do
  f=$(find "$build" -type f -name "$t" -perm -u+x | head -n 1)
  strip -o "$dir/bin/$t" "$f"
done
# moe-train's CUDA half, which it loads from its own directory for --device cuda.
strip --strip-unneeded -o "$dir/bin/libmoe-train-cuda.so" "$build/examples/libmoe-train-cuda.so"
# Google Benchmark is a shared library on Debian; the GPU image does not have it.
for lib in $(ldd "$dir/bin/moe_bench_cuda" | awk '/libbenchmark/ {print $3}'); do cp -L "$lib" "$dir/lib/"; done
mkdir -p .git/info
grep -qx "/$dir/" .git/info/exclude 2>/dev/null || echo "/$dir/" >>.git/info/exclude
# The device tool carries at most 64 MiB: the working tree (tracked and untracked-not-ignored files)
# plus this folder. 2026-12-08: 51 MiB of binaries (libmoe-train-cuda.so 19 MiB) beside a 2 MiB tree.
pack_kib=$(du -sk "$dir" | cut -f1)
tree_kib=$(git ls-files -z --cached --others --exclude-standard | du -ck --files0-from=- 2>/dev/null | tail -n 1 | cut -f1)
echo "$dir: $((pack_kib / 1024)) MiB; with the working tree $(((pack_kib + tree_kib) / 1024)) MiB of the 64 a device call carries"
if ((pack_kib + tree_kib > 60 * 1024)); then
  echo "warning: near or over the device tool's 64 MiB: carry a compressed copy instead (tar -C $dir -czf .gpu.tar.gz . is" \
       "about a third the size; unpack it first in the device command), or leave moe-train out of the targets" >&2
fi
