"""Sharded results equal single-device results on 8 virtual CPU devices.

The device count is fixed when JAX starts (``XLA_FLAGS`` must be set before it is
imported), so the checks run in a subprocess: ``python tests/parallel/multidevice_checks.py``
(spatial energy/forces/stress for a periodic crystal and a free cluster; one data-parallel
training step on 2, 4 and 8 devices against one device; sharded NVE against jax-md; the
training loop with ``data_parallel: true`` for one epoch).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from systems import REPO

CHECKS = Path(__file__).with_name("multidevice_checks.py")


@pytest.mark.slow
def test_sharded_equals_single_device_on_8_virtual_devices():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        # this checkout's package, as `python -m` from the repository root would import
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, str(CHECKS), "--devices", "2", "4", "8"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = proc.stdout[-4000:] + "\n" + proc.stderr[-4000:]
    assert proc.returncode == 0, report
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("devices: 8 x cpu"), report
    for expected in (
        "ok spatial crystal float64 8 devices",
        "ok spatial cluster float64 4 devices",
        "ok spatial crystal float32 2 devices",
        "ok data_parallel 2 devices",
        "ok data_parallel 4 devices",
        "ok data_parallel 8 devices",
        "ok md 8 devices",
        "ok loop data_parallel 2 devices",
    ):
        assert any(line.startswith(expected) for line in lines), f"missing {expected!r}\n{report}"
    assert "all checks passed" in proc.stdout, report
