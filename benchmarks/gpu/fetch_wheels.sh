#!/usr/bin/env bash
# Download the wheels that benchmarks/gpu/run.sh installs on the device machine (Python
# 3.12, x86-64 Linux; jax, flax, optax, orbax, numpy, scipy, pyyaml are already there)
# into .gpu-wheels/ (git-ignored). Versions: those this project is tested with.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .gpu-wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .gpu-wheels \
    e3nn-jax==0.21.0 jax-md==0.2.29 jraph==0.0.6.dev0 ml_collections==1.1.0 ase==3.29.0 \
    vesin==0.6.2
ls -la .gpu-wheels
