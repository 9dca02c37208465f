"""``allegro_jax.io.runlock``: one process per run directory, released by the kernel on kill -9."""

from __future__ import annotations

import json
import os
import time

import pytest
from faults import kill_group, start_lock_holder

from allegro_jax.io.runlock import HOLDER_FILE, RunLock, RunLockedError, read_holder


def test_a_second_lock_is_refused_with_a_message_naming_the_holder(tmp_path):
    with RunLock(tmp_path / "run", purpose="training") as first:
        assert first.locked
        holder = read_holder(tmp_path / "run")
        assert holder["pid"] == os.getpid() and holder["purpose"] == "training"
        with pytest.raises(RunLockedError, match=r"in use by another training \(pid \d+") as err:
            RunLock(tmp_path / "run", purpose="MD").acquire()
        assert err.value.holder["pid"] == os.getpid()
        assert str(tmp_path / "run") in str(err.value) and "another directory" in str(err.value)
    assert not first.locked and read_holder(tmp_path / "run") is None
    with RunLock(tmp_path / "run"):  # free again
        pass


def test_kill_9_of_the_holder_releases_the_lock(tmp_path):
    run = tmp_path / "run"
    proc = start_lock_holder(run, "MD")
    try:
        with pytest.raises(RunLockedError, match=rf"another MD \(pid {proc.pid} "):
            RunLock(run).acquire()
    finally:
        kill_group(proc)
    # the holder record of the dead process is left behind; it does not block
    assert json.loads((run / HOLDER_FILE).read_text())["pid"] == proc.pid
    deadline = time.time() + 10
    while True:
        try:
            lock = RunLock(run, purpose="training").acquire()
            break
        except RunLockedError:
            assert time.time() < deadline, "the lock of a killed process was not released"
            time.sleep(0.05)
    assert read_holder(run)["pid"] == os.getpid()
    lock.release()
