"""Helpers of the fault tests (import as ``faults``): processes to hold locks and to kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

RUNLOCK_PY = Path(__file__).resolve().parents[1] / "allegro_jax" / "io" / "runlock.py"

# a separate process holding the lock; it loads runlock.py alone (no jax import: fast)
_HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("runlock", sys.argv[1])
runlock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runlock)
lock = runlock.RunLock(sys.argv[2], purpose=sys.argv[3]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def start_lock_holder(directory: Path, purpose: str = "training") -> subprocess.Popen:
    """A process (in its own process group) that holds ``directory``'s run lock on return."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(RUNLOCK_PY), str(directory), purpose],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started with ``start_new_session=True`` and its children."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
