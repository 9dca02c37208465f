#!/usr/bin/env bash
# Here, before experiments/gpu/train.sh runs on the device machine: the wheels it installs
# (.gpu-wheels/, benchmarks/gpu/fetch_wheels.sh) and the training files it reads
# (.gpu-data/rmd17/rmd17_<mol>_train_01.npz, .gpu-data/mlearn/<El>_train.extxyz; ~24 MB),
# copied from DATA (default ../shared/data). Both folders are git-ignored; no test file
# travels.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA="${DATA:-../shared/data}"
[ -d .gpu-wheels ] || bash benchmarks/gpu/fetch_wheels.sh
mkdir -p .gpu-data/rmd17 .gpu-data/mlearn
cp "$DATA"/rmd17/rmd17_*_train_01.npz .gpu-data/rmd17/
cp "$DATA"/mlearn/*_train.extxyz .gpu-data/mlearn/
du -sh .gpu-wheels .gpu-data
