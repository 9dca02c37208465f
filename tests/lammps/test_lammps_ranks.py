"""1, 2 and 3 MPI ranks under LAMMPS give the single-process model's energy, forces and
virial: a periodic water box (types from the data file's type labels) and a skewed
triclinic O/Si cell smaller than the ghost cutoff (elements named in pair_coeff), in float64
(<= 1e-10 relative) and float32 (<= 1e-5). Relative errors: |ΔE|/|E|, max|ΔF|/max|F|,
max|ΔW|/max|W| (W the 3x3 virial, from LAMMPS's virial-only pressure)."""

from __future__ import annotations

import numpy as np
import pytest
from lammps_helpers import (
    lammps_virial,
    make_model_dir,
    reference,
    run_worker,
    tiny_config,
    triclinic_cell,
    water,
)

from allegro_jax.data.padding import Budget
from allegro_jax.lammps.data import write_lammps_data

pytestmark = [pytest.mark.lammps, pytest.mark.usefixtures("requires_lammps")]

TOL = {"float64": 1e-10, "float32": 1e-5}
TYPES = ("H", "O", "Si")  # one model for both systems
SYSTEMS = {
    # name: (structure, LAMMPS types, elements on the pair_coeff line)
    "water": (water, ("O", "H"), False),
    "triclinic": (triclinic_cell, ("Si", "O"), True),
}
# one padded shape for every rank and case: one compilation per dtype, shared by all runs
# through the JAX compilation cache
INPUT = """units metal
atom_style atomic
read_data {data}
pair_style allegro/jax nodes 512 edges 4096
pair_coeff * * {model}{elements}
neighbor 0.5 bin
"""
REF_BUDGET = Budget(n_nodes=128, n_edges=2048, n_graphs=2)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranks")
    jobs, refs = [], []
    models = {}
    for dtype in ("float64", "float32"):
        config = tiny_config(TYPES, dtype)
        models[dtype] = (config, *make_model_dir(root / f"model_{dtype}", config, seed=1))
    for name, (make, types, explicit) in SYSTEMS.items():
        structure = make()
        data = root / f"{name}.data"
        framed = write_lammps_data(data, structure, types, type_labels=not explicit)
        for dtype in ("float64", "float32"):
            config, model, params = models[dtype]
            inp = root / f"in.{name}_{dtype}"
            elements = " " + " ".join(types) if explicit else ""
            inp.write_text(INPUT.format(data=data, model=model, elements=elements))
            jobs.append({"name": f"{name}/{dtype}", "input": str(inp)})
            refs.append((dtype, reference(config, params, framed, REF_BUDGET)))
    return root, jobs, refs


def relative_errors(result, ref) -> tuple[float, float, float]:
    w = lammps_virial(result["pressure_virial"], result["volume"])
    return (
        abs(result["pe"] - ref["energy"]) / abs(ref["energy"]),
        float(np.abs(result["forces"] - ref["forces"]).max() / np.abs(ref["forces"]).max()),
        float(np.abs(w - ref["virial"]).max() / np.abs(ref["virial"]).max()),
    )


@pytest.mark.parametrize("n_ranks", [1, 2, 3])
def test_ranks_equal_single_process_model(cases, n_ranks, jax_cache):
    root, jobs, refs = cases
    results = run_worker(jobs, n_ranks, root, cache_dir=jax_cache)
    lines = []
    for job, result, (dtype, ref) in zip(jobs, results, refs, strict=True):
        assert "error" not in result, result.get("error")
        de, df, dw = relative_errors(result, ref)
        lines.append(f"{n_ranks} rank(s) {job['name']:18s} dE {de:.1e} dF {df:.1e} dW {dw:.1e}")
        assert max(de, df, dw) <= TOL[dtype], lines[-1]
        stats = [s[0] for s in result["stats_per_rank"]]
        assert len(stats) == n_ranks
        # one rank folds all ghosts (its own images); several evaluate ghost centres too
        ghost_centres = min(s["last"]["n_ghost_centres"] for s in stats)
        assert ghost_centres == 0 if n_ranks == 1 else ghost_centres > 0
        assert all(s["distinct_budgets"] == 1 for s in stats)
    print("\n" + "\n".join(lines))
