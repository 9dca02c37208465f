"""``allegro-jax md`` faults: killed for real (SIGKILL to its process group) at the worst moments:
the restart must give exactly the rows and frames of an uninterrupted run, readable by ASE.

The child process stops at a chosen point (halfway through writing a frame, or just after a
checkpoint) and waits there to be killed, so the kill lands where the write order matters.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
from md_helpers import random_params, si_o_crystal, small_config

from allegro_jax.cli import main
from allegro_jax.io.model import save_model

pytestmark = pytest.mark.slow

# a child that runs `allegro-jax md` and waits to be killed at a chosen point
CHILD = textwrap.dedent(
    """
    import io, os, sys, time
    from pathlib import Path

    import ase.io

    import allegro_jax.md.cli as md_cli
    from allegro_jax.cli import main

    where, step, marker = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])


    def wait_to_be_killed():
        marker.write_text("ready")
        while True:
            time.sleep(1)


    if where == "mid-frame":
        write = ase.io.write

        def half_write(f, images, *args, **kwargs):
            if getattr(images, "info", {}).get("step") == step and hasattr(f, "write"):
                buf = io.StringIO()
                write(buf, images, *args, **kwargs)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                os.fsync(f.fileno())
                wait_to_be_killed()
            return write(f, images, *args, **kwargs)

        ase.io.write = half_write
    elif where == "after-checkpoint":
        save = md_cli._save_checkpoint

        def save_then_wait(path, meta, arrays):
            save(path, meta, arrays)
            if int(arrays["step"]) == step:
                wait_to_be_killed()

        md_cli._save_checkpoint = save_then_wait
    sys.exit(main(sys.argv[4:]))
    """
)


def _args(setup: dict, out: Path, *extra: str) -> list[str]:
    return [
        "md",
        "--model",
        str(setup["model"]),
        "--structure",
        str(setup["structure"]),
        "--out",
        str(out),
        "--ensemble",
        "nvt_langevin",
        "--dt",
        "1.0",
        "--friction",
        "0.05",
        "--log-every",
        "5",
        "--logs-per-chunk",
        "2",
        "--skin",
        "0.3",
        "--until-step",
        "50",
        "--progress",
        "none",
        *extra,
    ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("md_kill")
    config = small_config(r_max=3.0)
    save_model(root / "model", config, random_params(config))
    ase.io.write(root / "start.extxyz", si_o_crystal())
    setup = {"root": root, "model": root / "model", "structure": root / "start.extxyz"}
    assert main(_args(setup, root / "reference")) == 0
    return setup


def _run_and_kill(setup: dict, out: Path, where: str, step: int) -> None:
    script = setup["root"] / "child.py"
    script.write_text(CHILD)
    marker = out.with_name(out.name + ".ready")
    proc = subprocess.Popen(
        [sys.executable, str(script), where, str(step), str(marker), *_args(setup, out)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 900
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"the child ended ({proc.returncode}): {proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail("the child never reached the kill point")
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def _assert_same_as_reference(setup: dict, out: Path) -> None:
    ref = setup["root"] / "reference"
    assert (out / "thermo.csv").read_text() == (ref / "thermo.csv").read_text()
    a = ase.io.read(ref / "trajectory.extxyz", index=":")
    b = ase.io.read(out / "trajectory.extxyz", index=":")  # must parse, no partial frame
    assert [f.info["step"] for f in b] == [f.info["step"] for f in a]
    for fa, fb in zip(a, b, strict=True):
        np.testing.assert_array_equal(fa.positions, fb.positions)


@pytest.mark.parametrize(
    "where",
    [
        "mid-frame",  # half of the frame of step 30 on disk
        "after-checkpoint",  # the checkpoint of step 30 just written
    ],
)
def test_killed_md_restarts_without_losing_or_repeating_output(setup, where):
    out = setup["root"] / where
    _run_and_kill(setup, out, where, 30)
    assert main([*_args(setup, out), "--restart"]) == 0
    _assert_same_as_reference(setup, out)


def _corrupt(path: Path) -> None:
    """Flip a byte in the middle (array data: the zip CRC no longer matches)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_checkpoint_falls_back_to_the_previous_one(setup, capsys):
    import shutil

    out = setup["root"] / "damaged"
    shutil.copytree(setup["root"] / "reference", out)
    _corrupt(out / "checkpoint.npz")  # step 50; checkpoint.prev.npz holds step 40
    assert main([*_args(setup, out), "--restart"]) == 0
    err = capsys.readouterr().err
    assert "checkpoint.npz cannot be read" in err and "checkpoint.prev.npz (step 40)" in err
    _assert_same_as_reference(setup, out)  # steps 45 and 50 cut and run again

    _corrupt(out / "checkpoint.npz")
    _corrupt(out / "checkpoint.prev.npz")
    assert main([*_args(setup, out), "--restart"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "checkpoint.prev.npz cannot be read" in err and "--index -1" in err


def test_rerun_without_restart_refuses_and_changes_nothing(setup, capsys):
    ref = setup["root"] / "reference"
    before = {p.name: p.read_bytes() for p in ref.iterdir() if p.is_file()}
    assert main(_args(setup, ref)) == 2
    err = capsys.readouterr().err
    assert "already holds an MD run" in err and "--restart" in err and "step 50" in err
    assert {p.name: p.read_bytes() for p in ref.iterdir() if p.is_file()} == before


def test_a_second_process_on_a_locked_directory_is_refused(setup, capsys):
    out = setup["root"] / "locked"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from allegro_jax.io.runlock import run_lock\n"
            "with run_lock(sys.argv[1], 'MD run'):\n"
            "    print('locked', flush=True)\n"
            "    time.sleep(600)\n",
            str(out),
        ],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert holder.stdout.readline().strip() == b"locked"
        assert main(_args(setup, out)) == 2
        err = capsys.readouterr().err
        assert "is in use by another" in err
        assert not (out / "thermo.csv").exists()
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    # the lock died with its holder (kill -9): the directory is usable at once
    assert main([*_args(setup, out), "--until-step", "10"]) == 0


def test_runaway_md_stops_with_exit_code_3_and_restarts_from_the_last_good_state(tmp_path, capsys):
    import ase

    config = small_config(
        type_names=("H", "C", "O"), r_max=3.0, per_type_energy_shifts=(-0.5, -2.0, -3.0)
    )
    save_model(tmp_path / "model", config, random_params(config))
    mol = ase.build.molecule("CH3CH2OH")
    lost = ase.Atoms("H", positions=[[12.0, 0.0, 0.0]])  # far beyond r_max = 3 Å
    ase.io.write(tmp_path / "mol.extxyz", mol + lost)
    out = tmp_path / "md"
    args = ["md", "--model", str(tmp_path / "model"), "--structure", str(tmp_path / "mol.extxyz")]
    args += ["--out", str(out), "--ensemble", "nve", "--steps", "20", "--log-every", "5"]
    args += ["--logs-per-chunk", "2", "--progress", "none"]
    assert main([*args, "--max-temperature", "1"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: the simulation ran away") and "Traceback" not in err
    assert "above --max-temperature 1 K" in err
    assert "atom 9 (H) has no other atom within 3 Å" in err
    assert "checkpoint at step 0" in err
    rows = np.genfromtxt(out / "thermo.csv", delimiter=",", names=True)
    assert list(rows["step"]) == [5, 10]  # the rows of the blown-up chunk stay to be seen
    assert int(np.load(out / "checkpoint.npz")["step"]) == 0

    # going on regardless: warnings, exit 0, and the restart redoes steps 5 and 10
    more = ["--max-temperature", "1", "--on-blowup", "warn", "--restart"]
    assert main([*args, *more]) == 0
    err = capsys.readouterr().err
    assert err.count("WARNING") == 2  # once per kind: temperature, detached atom
    rows = np.genfromtxt(out / "thermo.csv", delimiter=",", names=True)
    assert list(rows["step"]) == [5, 10, 15, 20]
