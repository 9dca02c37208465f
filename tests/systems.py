"""Small generated systems and paths shared by the tests (import as ``systems``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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


def water_box(n_side: int = 3, seed: int = 0, spacing: float = 3.1):
    """``n_side**3`` randomly oriented water molecules on a cubic grid (periodic, ~1 g/cm³
    at the default spacing), O-H 0.96 Å, H-O-H 104.5°."""
    from scipy.spatial.transform import Rotation

    from allegro_jax.data.graph import Structure

    rng = np.random.default_rng(seed)
    angle = np.deg2rad(104.5)
    mol = 0.96 * np.array([[0, 0, 0], [1, 0, 0], [np.cos(angle), np.sin(angle), 0]])
    pos, numbers = [], []
    for idx in np.ndindex(n_side, n_side, n_side):
        centre = (np.array(idx) + 0.5) * spacing + rng.normal(scale=0.1, size=3)
        rot = Rotation.random(random_state=rng.integers(1 << 31)).as_matrix()
        pos.append(centre + mol @ rot.T)
        numbers += [8, 1, 1]
    cell = np.eye(3) * n_side * spacing
    return Structure(numbers=numbers, positions=np.concatenate(pos), cell=cell, pbc=True)
