#!/usr/bin/env bash
# Download the wheels bench/gpu.sh installs on a GPU machine that lacks them (run where PyPI is reachable).
# They go to .whl/ (git-ignored); the GPU machine's Python is 3.12 on x86-64 Linux.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
fetch() {
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$@"
}
# streamgen's imports that a CUDA machine image usually lacks (torch, transformers, numpy are there)
fetch diffusers av aiortc aioice pylibsrtp pyee google-crc32c dnspython ifaddr cryptography cffi pycparser pyopenssl
