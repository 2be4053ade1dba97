#!/usr/bin/env bash
# Download exactly the wheels bench/gpu-wheels.lock pins, for the GPU machine (Python 3.12, x86-64 Linux), into .whl/
# (git-ignored). Run where PyPI is reachable; carry .whl to the GPU machine; bench/gpu.sh installs them.
#
#   scripts/fetch_gpu_wheels.sh          # everything bench/gpu.sh needs (about 51 MB)
#   scripts/fetch_gpu_wheels.sh --quick  # only what bench/gpu.sh --quick needs (about 6.5 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
group=full
[ "${1:-}" = "--quick" ] && group=quick
mapfile -t wanted < <(python3 -m bench.gpu_plan requirements --group "$group")
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_34_x86_64 \
    -d .whl "${wanted[@]}"
python3 -m bench.gpu_plan check --group "$group" --folder .whl
