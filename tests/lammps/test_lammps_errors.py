"""Errors under MPI: a clear one-paragraph message, exit status != 0 on every rank, no
traceback, no hang (every launch has a timeout)."""

from __future__ import annotations

import sys

import pytest
from lammps_helpers import make_model_dir, run_mpi, run_worker, tiny_config, water

from allegro_jax.lammps.data import write_lammps_data

pytestmark = [pytest.mark.lammps, pytest.mark.usefixtures("requires_lammps")]

INPUT = """units {units}
atom_style atomic
read_data {data}
pair_style allegro/jax{style_args}
pair_coeff * * {model}{elements}
run 0
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    make_model_dir(root / "model", tiny_config(("H", "O", "Si"), "float64"))
    write_lammps_data(root / "xe.data", water(), ("O", "H", "Xe"))  # labels O, H, Xe
    write_lammps_data(root / "water.data", water(), ("O", "H"), type_labels=False)
    return root


def write_input(
    root, name, *, units="metal", data="water.data", model="model", elements="", style_args=""
):
    path = root / f"in.{name}"
    path.write_text(
        INPUT.format(
            units=units,
            data=root / data,
            model=root / model,
            elements=elements,
            style_args=style_args,
        )
    )
    return path


@pytest.mark.parametrize(
    ("case", "kwargs", "message"),
    [
        ("label", {"data": "xe.data"}, "type 3 is 'Xe'"),
        ("coeff", {"elements": " O Cl"}, "type 2 is 'Cl'"),
    ],
)
def test_unknown_element_stops_every_rank(root, case, kwargs, message, jax_cache):
    path = write_input(root, case, **kwargs)
    proc = run_mpi(
        [sys.executable, "-m", "allegro_jax.cli", "lammps", "-in", path, "-log", "none"],
        2,
        root,
        timeout=180,
        cache_dir=jax_cache,
    )
    print(proc.stderr)
    assert proc.returncode != 0
    assert proc.stderr.count("ERROR (allegro-jax)") == 1  # once, from rank 0
    assert message in proc.stderr and "['H', 'O', 'Si']" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_setup_and_runtime_errors_reach_every_rank(root, jax_cache):
    runtime = write_input(root, "runtime", elements=" O H")
    runtime.write_text(
        runtime.read_text().replace("run 0", "velocity all create 300 1\nfix 1 all nve\nrun 10")
    )
    jobs = [
        {"name": "units", "input": str(write_input(root, "units", units="real"))},
        {"name": "no_model", "input": str(write_input(root, "nomodel", model="missing"))},
        {"name": "count", "input": str(write_input(root, "count", elements=" O"))},
        {"name": "no_labels", "input": str(write_input(root, "nolabels"))},
        {"name": "style", "input": str(write_input(root, "style", style_args=" nodes x"))},
        {"name": "runtime", "input": str(runtime), "fail_rank": 1, "fail_step": 3},
    ]
    results = {r["name"]: r["error"] for r in run_worker(jobs, 2, root, cache_dir=jax_cache)}
    print("\n" + "\n".join(f"{k}: {v}" for k, v in results.items()))
    assert "'units metal'" in results["units"] and "'units real'" in results["units"]
    assert "cannot load the Allegro model" in results["no_model"]
    assert "1 element(s) (O) but the system has 2 atom type(s)" in results["count"]
    assert "have no element" in results["no_labels"]
    assert "usage: pair_style allegro/jax" in results["style"]
    assert "on MPI rank 1 at step 3" in results["runtime"]
    assert "injected failure" in results["runtime"]
