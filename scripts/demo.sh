#!/usr/bin/env bash
# The demo: installs missing dependencies, builds in Release (preset `default`) and runs the main
# job. Until the reference trainer exists the main job is examples/preset_tour.cpp: one training
# step of each preset (Switch Transformer, GLaM, ST-MoE) and its routing statistics.
# Extra arguments go to the program (moe-preset-tour [tokens]). Runs from any directory.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/install_deps.sh
source scripts/install_deps.sh

moe_install_deps
moe_find_nvcc
cmake --preset default
cmake --build --preset default -j "$(nproc)" --target moe-preset-tour
echo
exec build/default/examples/moe-preset-tour "$@"
