"""Small generated systems and paths shared by the tests (import as ``systems``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def load_script(name: str, path: Path):
    """Import a script that is not part of a package (e.g. ``experiments/*/run.py``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_molecule(rng: np.random.Generator, n: int = 8, numbers=(1, 6, 8), min_dist=0.9):
    """Random non-overlapping cluster of ``n`` atoms in a ~3.5 Å box."""
    from allegro_jax.data.graph import Structure

    pos = []
    while len(pos) < n:
        p = rng.uniform(0, 3.5, size=3)
        if all(np.linalg.norm(p - q) > min_dist for q in pos):
            pos.append(p)
    return Structure(numbers=rng.choice(numbers, size=n), positions=np.array(pos))


def random_periodic(rng: np.random.Generator, n: int = 5, numbers=(14, 8), min_dist=1.2):
    """Small skewed triclinic cell (edges ~3.3–4 Å) with ``n`` atoms of two species."""
    from allegro_jax.data.graph import Structure

    cell = np.array([[3.6, 0.0, 0.0], [1.1, 3.3, 0.0], [0.7, -0.6, 3.9]])
    cell = cell + rng.normal(scale=0.1, size=(3, 3))
    frac = []
    while len(frac) < n:
        f = rng.uniform(size=3)
        ok = True
        for g in frac:
            d = f - g
            d -= np.round(d)
            if np.linalg.norm(d @ cell) < min_dist:
                ok = False
        if ok:
            frac.append(f)
    numbers = np.array([numbers[i % len(numbers)] for i in range(n)])
    return Structure(numbers=numbers, positions=np.array(frac) @ cell, cell=cell, pbc=True)


ASPIRIN = SHARED_DATA / "rmd17" / "rmd17_aspirin_train_01.npz"
# metrics columns that differ between two runs of the same training
TIME_COLUMNS = frozenset({"wall_time_s", "epoch_time_s", "cpu_time_s"})


def write_aspirin_subset(path: Path, start: int = 0, n: int = 20) -> Path:
    """Frames ``start:start+n`` of rMD17 aspirin as an rMD17-style npz at ``path``
    (the caller checks that ``ASPIRIN`` exists)."""
    with np.load(ASPIRIN) as d:
        np.savez(
            path,
            nuclear_charges=d["nuclear_charges"],
            coords=d["coords"][start : start + n],
            energies=d["energies"][start : start + n],
            forces=d["forces"][start : start + n],
        )
    return path


def metrics_curve(run_dir: Path) -> list[dict]:
    """A run's ``metrics.jsonl`` rows without the wall-clock columns."""
    import json

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in rows]
