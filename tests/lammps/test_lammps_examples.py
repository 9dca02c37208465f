"""The examples/lammps inputs run under ``mpiexec -n 2 allegro-jax lammps -in ...`` (the
command users type), briefly: a quick make_models.py (few Stillinger-Weber frames, seconds
of training), then 20 steps of each input (and 10 of the Si minimisation)."""

from __future__ import annotations

import shutil
import sys

import pytest
from lammps_helpers import run_mpi, subprocess_env
from systems import REPO

pytestmark = [pytest.mark.lammps, pytest.mark.usefixtures("requires_lammps")]

EXAMPLES = REPO / "examples" / "lammps"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    import subprocess

    work = tmp_path_factory.mktemp("examples")
    for path in EXAMPLES.glob("in.*"):
        shutil.copy(path, work)
    proc = subprocess.run(
        [
            sys.executable,
            EXAMPLES / "make_models.py",
            "--out",
            work,
            "--train-seconds",
            "3",
            "--frames",
            "6",
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return work


@pytest.mark.parametrize("name", ["in.water_nvt", "in.si_npt"])
def test_example_runs_under_mpi(workdir, name, jax_cache):
    proc = run_mpi(
        [
            shutil.which("allegro-jax") or "allegro-jax",
            "lammps",
            "-in",
            name,
            "-var",
            "steps",
            "20",
        ],
        2,
        workdir,
        timeout=600,
        cache_dir=jax_cache,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "allegro-jax: models/" in out and "force calls on 2 rank(s)" in out
    assert "Loop time of" in out and "ERROR" not in out
