"""benchmarks/gpu/run.sh --cpu-smoke: the GPU benchmark script end to end on tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_script_cpu_smoke(tmp_path):
    env = dict(
        os.environ, OUT=str(tmp_path), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    )
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu" / "run.sh"), "--cpu-smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads((tmp_path / "smoke_cpu.json").read_text())
    assert rep["command"] == "bash benchmarks/gpu/run.sh --cpu-smoke"
    for dtype in ("float32", "float64"):
        part = rep[dtype]
        assert part["backend"] == "cpu" and part["dtype"] == dtype
        ef = part["energy_forces"]
        assert ef[0]["atoms"] == 64 and ef[0]["ms"] > 0 and ef[0]["edges"] > 0
        (md,) = [r for r in part["md"] if "steps_per_s" in r]
        assert md["atoms"] == 216 and md["dtype"] == dtype
        # the trained Si model keeps the lattice near a minimum: no blow-up
        assert md["max_temperature_K"] < 600 and md["rebuilds_per_100_steps"] < 10
        (train,) = part["train_step"]
        assert train["ms"] > 0 and train["batch"] == 2
