#!/usr/bin/env bash
# One prepared GPU training campaign: the 10 rMD17 molecules (configs/<mol>.yaml, the
# "full" variant) and the 6 mlearn elements (experiments/mlearn/configs/mlearn.yaml), all
# trained at once on one GPU, each for MINUTES of wall clock (compilation included). No
# test file is read. The run directories come back as tarballs under $OUT (best EMA model,
# metrics, summary, statistics; no checkpoints); evaluate them on the test files here with
# `experiments/gpu/README.md`.
#
#   bash experiments/gpu/prepare.sh                    # here: .gpu-wheels/ and .gpu-data/
#   bash experiments/gpu/train.sh 7                    # on the device machine
#   bash experiments/gpu/train.sh 0.5 --cpu-smoke      # here: ethanol and Li, on the CPU
#
# The device machine has jax (CUDA), flax, optax, orbax, numpy, scipy, pyyaml, filelock;
# the other dependencies travel as wheels in .gpu-wheels/, the training files in .gpu-data/.
set -uo pipefail
cd "$(dirname "$0")/../.."
minutes="${1:-7}"
mode="${2:-}"
OUT="${OUT:-$PWD/gpu-out}"
RUNS="${RUNS:-$(mktemp -d -t allegro_gpu_runs.XXXX)}"
mkdir -p "$OUT" "$RUNS/logs"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "$mode" = "--cpu-smoke" ]; then
    export JAX_PLATFORMS=cpu
    molecules=(ethanol)
    elements=(Li)
else
    python3 -m pip install -q --no-index --no-deps --no-cache-dir --disable-pip-version-check \
        .gpu-wheels/*.whl || exit 1
    python3 -m pip install -q --no-deps --no-build-isolation --no-cache-dir \
        --disable-pip-version-check -e . || exit 1
    export ALLEGRO_JAX_CPU_KERNEL=0                 # XLA operations on the GPU anyway
    export XLA_PYTHON_CLIENT_MEM_FRACTION=0.05      # 16 processes share one device
    molecules=(aspirin azobenzene benzene ethanol malonaldehyde naphthalene paracetamol
        salicylic toluene uracil)
    elements=(Ni Cu Li Mo Si Ge)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    # 16 small trainings: with MPS their kernels share the GPU instead of time-slicing it.
    # If MPS does not come up (or a client cannot start under it), run without.
    if command -v nvidia-cuda-mps-control >/dev/null 2>&1; then
        CUDA_MPS_PIPE_DIRECTORY="$(mktemp -d -t mps-pipe.XXXX)"
        CUDA_MPS_LOG_DIRECTORY="$(mktemp -d -t mps-log.XXXX)"
        export CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
        if nvidia-cuda-mps-control -d && timeout 60 python3 -c \
            "import jax, jax.numpy as jnp; print('MPS client ok', float(jnp.ones(3).sum()), jax.devices())"; then
            echo "MPS on"
        else
            echo quit | nvidia-cuda-mps-control 2>/dev/null
            unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
            echo "MPS unavailable: time-slicing"
        fi
    fi
fi

start=$(date +%s)
for mol in "${molecules[@]}"; do
    python3 -m experiments.rmd17.run "$mol" --variant full --budget-minutes "$minutes" \
        --runs-dir "$RUNS/rmd17" --data-dir .gpu-data/rmd17 --train-only \
        >"$RUNS/logs/rmd17_$mol.log" 2>&1 &
done
for el in "${elements[@]}"; do
    python3 -m experiments.mlearn.run train "$el" --minutes "$minutes" \
        --runs-dir "$RUNS/mlearn" --data-dir .gpu-data/mlearn \
        >"$RUNS/logs/mlearn_$el.log" 2>&1 &
done

progress() {  # one line: run, epochs, best validation force MAE
    python3 - "$RUNS" <<'PY'
import json, sys
from pathlib import Path
parts = []
for f in sorted(Path(sys.argv[1]).glob("**/metrics.jsonl")):
    rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    if rows:
        key = next((k for k in rows[-1] if k.startswith("validation_force_mae")), None)
        best = min(r.get(key, float("inf")) for r in rows) if key else float("nan")
        parts.append(f"{f.parent.name}:{rows[-1]['epoch']}/{best:.3g}")
print(" ".join(parts) or "compiling")
PY
}
while [ -n "$(jobs -r)" ]; do
    sleep 60
    echo "[$(( $(date +%s) - start )) s] $(progress)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=utilization.gpu,memory.used \
        --format=csv,noheader
done
wait
echo "all done after $(( $(date +%s) - start )) s"
[ -n "${CUDA_MPS_PIPE_DIRECTORY:-}" ] && echo quit | nvidia-cuda-mps-control

for f in "$RUNS"/logs/*.log; do echo "== $f"; tail -n 3 "$f"; done | cut -c1-300
pack() {  # tarball NAME DIR...: models, metrics and summaries, no checkpoints
    local name=$1; shift
    tar -czf "$OUT/$name" -C "$RUNS" --exclude='checkpoints*' --exclude=tensorboard \
        --exclude='*.lock*' "$@"
}
mols_a=(); mols_b=()
for i in "${!molecules[@]}"; do
    d="rmd17/full/${molecules[$i]}"
    [ -d "$RUNS/$d" ] || continue
    if [ "$i" -lt 5 ]; then mols_a+=("$d"); else mols_b+=("$d"); fi
done
[ "${#mols_a[@]}" -gt 0 ] && pack rmd17_a.tgz "${mols_a[@]}"
[ "${#mols_b[@]}" -gt 0 ] && pack rmd17_b.tgz "${mols_b[@]}"
[ -d "$RUNS/mlearn" ] && pack mlearn.tgz mlearn
pack logs.tgz logs
ls -la "$OUT"
