"""Neighbour-list backends (vesin vs matscipy) and the padding-budget ladder.

Prints two markdown tables and writes ``benchmarks/results/neighborlist.json``:

1. Wall time of the neighbour search for molecules, periodic crystals from 10^3 to ~10^5
   atoms, a slab, a non-periodic cluster and a small triclinic cell with many images.
   ``library`` is the backend call alone (on the same canonical search frame);
   ``neighbor_list`` is the full public function (validation, exact float64 selection of
   ``0 < d < r_max``, deterministic sort), which is what the data pipeline pays. vesin
   uses all cores by default (``n_threads=0``); the ``1 thread`` column pins it to one;
   matscipy is single-threaded.
2. The padding ladder of :func:`allegro_jax.data.padding.round_budget`: for 100 random
   batches (1..32 structures) of aspirin and of liquid water, the number of distinct
   budgets (= compilations) against the padding overhead, for each ``steps_per_octave``.

Usage::

    python benchmarks/neighborlist.py [--data-dir ../shared/data] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from functools import partial
from importlib import metadata
from pathlib import Path

import numpy as np
from ase.build import bulk

from allegro_jax.data import neighborlist as nl
from allegro_jax.data import padding
from allegro_jax.data.graph import Structure

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results" / "neighborlist.json"
R_MAX = 5.0


def best_time(fn: Callable[[], object], min_total: float = 0.3, min_repeats: int = 3) -> float:
    """Best-of-N wall time in seconds, repeating until ``min_total`` seconds have passed."""
    fn()  # warm-up (library loading, first allocations)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_total:
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return min(times)


def aspirin(data_dir: Path) -> tuple[Structure, str]:
    """One rMD17 aspirin frame, or a generated 21-atom molecule if the file is absent."""
    path = data_dir / "rmd17" / "rmd17_aspirin_train_01.npz"
    if path.exists():
        data = np.load(path)
        return Structure(numbers=data["nuclear_charges"], positions=data["coords"][0]), "rMD17"
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    positions = 1.4 * grid[:21] + rng.normal(scale=0.1, size=(21, 3))
    numbers = np.array([6] * 9 + [8] * 4 + [1] * 8)
    return Structure(numbers=numbers, positions=positions), "generated"


def water_frames(data_dir: Path, n_frames: int) -> tuple[list[Structure], str]:
    """Frames of the 192-atom water box, or generated boxes if the file is absent."""
    path = data_dir / "water" / "water_train.extxyz"
    if path.exists():
        import ase.io

        frames = ase.io.read(path, index=f":{n_frames}")
        return [Structure.from_ase(atoms) for atoms in frames], "DeePMD water"
    rng = np.random.default_rng(0)
    length = 12.4447
    grid = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5
    structures = []
    for _ in range(n_frames):
        oxygens = grid * length / 4 + rng.normal(scale=0.2, size=(64, 3))
        hydrogens = oxygens[:, None, :] + rng.normal(size=(64, 2, 3)) * 0.55
        positions = np.concatenate([oxygens[:, None, :], hydrogens], axis=1).reshape(-1, 3)
        structures.append(
            Structure(
                numbers=np.tile([8, 1, 1], 64),
                positions=positions,
                cell=np.eye(3) * length,
                pbc=np.ones(3, dtype=bool),
            )
        )
    return structures, "generated"


def cases(data_dir: Path, quick: bool) -> list[tuple[str, Structure, float]]:
    si_cubic = bulk("Si", "diamond", a=5.43, cubic=True)
    mol, mol_source = aspirin(data_dir)
    water, water_source = water_frames(data_dir, 1)
    slab = Structure.from_ase(si_cubic.repeat((5, 5, 5)))
    slab.pbc = np.array([True, True, False])
    cluster = Structure.from_ase(si_cubic.repeat((10, 10, 10)))
    cluster.pbc = np.zeros(3, dtype=bool)
    cluster.cell = np.zeros((3, 3))
    out = [
        (f"aspirin ({mol_source}, molecule)", mol, R_MAX),
        (f"water 192 ({water_source}, periodic)", water[0], R_MAX),
        ("Si 1000 (5x5x5 cubic)", Structure.from_ase(si_cubic.repeat((5, 5, 5))), R_MAX),
        ("Si 1000 slab pbc=TTF", slab, R_MAX),
        ("Si primitive 2 atoms, r_max 6", Structure.from_ase(bulk("Si", "diamond", a=5.43)), 6.0),
        ("Si 8000 (10x10x10)", Structure.from_ase(si_cubic.repeat((10, 10, 10))), R_MAX),
        ("Si 8000 cluster (no pbc)", cluster, R_MAX),
    ]
    if not quick:
        out.append(
            ("Si 64000 (20x20x20)", Structure.from_ase(si_cubic.repeat((20, 20, 20))), R_MAX)
        )
    return out


def vesin_single_thread(positions, cell, pbc, r):
    import vesin

    points, box = nl._search_frame(positions, cell, pbc, r)
    calculator = vesin.NeighborList(cutoff=r, full_list=True, n_threads=1)
    return calculator.compute(points=points, box=box, periodic=pbc, quantities="ijS")


def bench_neighbor_lists(data_dir: Path, quick: bool, min_time: float) -> list[dict]:
    rows = []
    for name, structure, r_max in cases(data_dir, quick):
        args = (structure.positions, structure.cell, structure.pbc)
        r_search = r_max * (1.0 + nl._SEARCH_SLACK)
        n_edges = nl.neighbor_list(*args, r_max)[0].shape[0]
        timed = {
            "vesin_library_ms": partial(nl._vesin_pairs, *args, r_search),
            "vesin_1thread_library_ms": partial(vesin_single_thread, *args, r_search),
            "matscipy_library_ms": partial(nl._matscipy_pairs, *args, r_search),
            "vesin_neighbor_list_ms": partial(nl.neighbor_list, *args, r_max, backend="vesin"),
            "matscipy_neighbor_list_ms": partial(
                nl.neighbor_list, *args, r_max, backend="matscipy"
            ),
        }
        row = {
            "case": name,
            "n_atoms": structure.n_atoms,
            "pbc": structure.pbc.tolist(),
            "r_max": r_max,
            "n_edges": int(n_edges),
            **{key: 1e3 * best_time(fn, min_total=min_time) for key, fn in timed.items()},
        }
        rows.append(row)
        print(f"  done: {name}", flush=True)
    return rows


def bench_buckets(data_dir: Path, n_batches: int = 100, seed: int = 0) -> list[dict]:
    mol, _ = aspirin(data_dir)
    path = data_dir / "rmd17" / "rmd17_aspirin_train_01.npz"
    if path.exists():
        coords = np.load(path)["coords"][:200]
        molecules = [Structure(numbers=mol.numbers, positions=x) for x in coords]
    else:
        rng = np.random.default_rng(1)
        molecules = [
            Structure(mol.numbers, mol.positions + rng.normal(scale=0.05, size=(21, 3)))
            for _ in range(200)
        ]
    waters, _ = water_frames(data_dir, 64)
    datasets = {
        "aspirin": padding.precompute_graph_inputs(molecules, ("H", "C", "O"), R_MAX),
        "water": padding.precompute_graph_inputs(waters, ("H", "O"), R_MAX),
    }
    rows = []
    for name, inputs in datasets.items():
        rng = np.random.default_rng(seed)
        sizes = rng.integers(1, 33, size=n_batches)
        counts = [
            padding.batch_counts([inputs[k] for k in rng.choice(len(inputs), b, replace=False)])
            for b in sizes
        ]
        for steps in (1, 2, 4, 8):
            budgets = [padding.round_budget(*c, steps_per_octave=steps) for c in counts]
            edge_overhead = sum(b.n_edges for b in budgets) / sum(c[1] for c in counts) - 1
            node_overhead = sum(b.n_nodes for b in budgets) / sum(c[0] for c in counts) - 1
            rows.append(
                {
                    "dataset": name,
                    "steps_per_octave": steps,
                    "distinct_budgets": len(padding.distinct_budgets(budgets)),
                    "edge_padding_overhead": edge_overhead,
                    "node_padding_overhead": node_overhead,
                }
            )
    return rows


def versions() -> dict:
    out = {"python": platform.python_version(), "cpu_count": os.cpu_count()}
    for package in ("numpy", "vesin", "matscipy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    out["machine"] = platform.processor() or platform.machine()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--quick", action="store_true", help="skip the 64000-atom case")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--min-time", type=float, default=0.3, help="seconds of repeats per timing (best of)"
    )
    args = parser.parse_args()

    print("running neighbour-list cases ...", flush=True)
    load_before = os.getloadavg()[0]
    nl_rows = bench_neighbor_lists(args.data_dir, args.quick, args.min_time)
    bucket_rows = bench_buckets(args.data_dir)

    print("\n## Neighbour lists (best wall time, ms; default backend: vesin)\n")
    print(
        "| case | atoms | edges | vesin lib | vesin lib 1 thread | matscipy lib "
        "| neighbor_list vesin | neighbor_list matscipy |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in nl_rows:
        print(
            f"| {r['case']} | {r['n_atoms']} | {r['n_edges']} | {r['vesin_library_ms']:.3f} "
            f"| {r['vesin_1thread_library_ms']:.3f} | {r['matscipy_library_ms']:.3f} "
            f"| {r['vesin_neighbor_list_ms']:.3f} | {r['matscipy_neighbor_list_ms']:.3f} |"
        )
    print("\n## Padding ladder: 100 random batches of 1..32 structures\n")
    print("| data set | steps/octave | distinct budgets | edge overhead | node overhead |")
    print("|---|---:|---:|---:|---:|")
    for r in bucket_rows:
        print(
            f"| {r['dataset']} | {r['steps_per_octave']} | {r['distinct_budgets']} "
            f"| {100 * r['edge_padding_overhead']:.1f}% | {100 * r['node_padding_overhead']:.1f}% |"
        )

    args.output.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "default_backend": "vesin",
        "default_steps_per_octave": padding.DEFAULT_STEPS_PER_OCTAVE,
        "r_max": R_MAX,
        "environment": {**versions(), "load_average_1min_before": load_before},
        "neighbor_lists": nl_rows,
        "padding_ladder": bucket_rows,
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
