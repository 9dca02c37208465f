#!/usr/bin/env bash
# One prepared GPU benchmark: installs the project from carried wheels, then energy+forces
# and MD on a Si ladder from 1000 atoms up to the largest that fits, and a training step,
# in float32 and float64; JSON under $OUT. About 8 minutes in all (budgets below).
#
#   bash benchmarks/gpu/run.sh               # on the device machine (see README.md here)
#   bash benchmarks/gpu/run.sh --cpu-smoke   # tiny sizes on this CPU, in the current env
#
# The device machine has jax (CUDA), flax, optax, orbax, numpy, scipy, pyyaml; the other
# dependencies travel as wheels in .gpu-wheels/ (benchmarks/gpu/fetch_wheels.sh).
set -uo pipefail
cd "$(dirname "$0")/../.."
mode="${1:-}"
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
t_start=$(date +%s)

if [ "$mode" = "--cpu-smoke" ]; then
    export JAX_PLATFORMS=cpu
    budget32=60
    budget64=60
    prefix=smoke
else
    python3 -m pip install -q --no-index --no-deps --no-cache-dir --disable-pip-version-check \
        .gpu-wheels/*.whl || exit 1
    python3 -m pip install -q --no-deps --no-build-isolation --no-cache-dir \
        --disable-pip-version-check -e . || exit 1
    budget32=230
    budget64=170
    prefix=gpu
fi
# The CPU tensor-product kernel is built on first use with the system C++ compiler; GPUs
# use XLA operations anyway. Without a compiler, say so rather than warn.
if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1; then
    export ALLEGRO_JAX_CPU_KERNEL=0
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's allegro_jax

python3 - <<'EOF' >"$OUT/${prefix}_env.json" || true
import json, platform, subprocess
import jax
info = {"python": platform.python_version(), "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()], "backend": jax.default_backend()}
try:
    info["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=20).stdout.strip()
except (OSError, subprocess.SubprocessError):
    info["nvidia_smi"] = None
print(json.dumps(info, indent=1))
EOF
cat "$OUT/${prefix}_env.json"

smoke_flag=()
[ "$mode" = "--cpu-smoke" ] && smoke_flag=(--cpu-smoke)
rc=0
python3 benchmarks/gpu/bench.py --dtype float32 --budget-s "$budget32" "${smoke_flag[@]}" \
    --out "$OUT/${prefix}_float32.json" || rc=1
python3 benchmarks/gpu/bench.py --dtype float64 --budget-s "$budget64" "${smoke_flag[@]}" \
    --out "$OUT/${prefix}_float64.json" || rc=1
python3 benchmarks/gpu/collect.py "$OUT" "$prefix" --wall-s $(($(date +%s) - t_start)) || rc=1
echo "total $(($(date +%s) - t_start)) s, rc $rc"
exit $rc
