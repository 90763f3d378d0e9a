#!/usr/bin/env bash
# The demo: installs missing dependencies, builds in Release (preset `default`) and runs the main
# job, the reference trainer: a Switch Transformer language model trained on the embedded synthetic
# corpus for 3000 steps (about 5 minutes on 2 CPU cores), with a JSONL log in build/demo/.
# Extra arguments go to moe-train (e.g. `bash scripts/demo.sh --preset glam --steps 500`).
# Runs from any directory.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/install_deps.sh
source scripts/install_deps.sh

moe_install_deps
moe_find_nvcc
cmake --preset default
cmake --build --preset default -j "$(nproc)" --target moe-train
mkdir -p build/demo
echo
exec build/default/examples/moe-train --log build/demo/train.jsonl "$@"
