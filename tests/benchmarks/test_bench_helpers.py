"""The fairness machinery of benchmarks/run.py: interleaving, caps, the mlip graph."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_workers  # noqa: E402
import run as bench_run  # noqa: E402


def test_interleave_alternates_and_rotates():
    calls_made = []
    calls = {n: (lambda n=n: calls_made.append(n)) for n in "ABC"}
    job = {"solo_calls": 2, "min_rounds": 7, "max_rounds": 9, "budget_s": 0.0}
    res = bench_workers.interleave(calls, job)
    assert res["rounds"] == 7
    solo, rounds = calls_made[:6], calls_made[6:]
    assert solo == ["A", "A", "B", "B", "C", "C"]
    assert [rounds[3 * r : 3 * r + 3] for r in range(3)] == [
        ["A", "B", "C"],
        ["B", "C", "A"],
        ["C", "A", "B"],
    ]
    for n in "ABC":
        assert len(res["sides"][n]["ms_all"]) == 7
        assert res["sides"][n]["ms"] >= res["sides"][n]["ms_min"] >= 0


def test_capped_sides_extrapolates_per_side():
    prev = {"atoms": 1000, "sides": {"ours": {"ms": 150.0}, "ref_eager": {"ms": 2000.0}}}
    caps = {"ours": 20.0, "ref": 10.0}
    keep, skipped = bench_run.capped_sides(["ours", "ref_eager", "ref_aot_t1"], prev, 8000, caps)
    assert keep == ["ours"]
    assert "16.0 s per call > 10.0 s" in skipped["ref_eager"]
    assert "ref_aot_t1" in skipped  # not measured at the smaller size: stays skipped


@pytest.mark.slow  # mlip's first eager calls take minutes on a loaded 2-core box
@pytest.mark.parametrize("n_frames", [1, 2])
def test_mlip_graph_has_our_edges(n_frames):
    pytest.importorskip("mlip")
    from allegro_jax import Structure
    from allegro_jax.data.padding import build_graph

    structs = []
    for k in range(n_frames):
        atoms = bench_workers.si_atoms(2)
        atoms.rattle(0.1, seed=k)
        structs.append(Structure.from_ase(atoms))
    g = build_graph(structs, bench_workers.TYPE_NAMES, 5.0)
    mg = bench_workers.mlip_graph(g)
    em, nm = np.asarray(g.edge_mask), np.asarray(g.node_mask)
    pos, cell = np.asarray(g.positions, np.float64), np.asarray(g.cell, np.float64)
    i, j = np.asarray(g.edge_center)[em], np.asarray(g.edge_neighbor)[em]
    shift = np.asarray(g.edge_shift)[em]
    ours = pos[j] - pos[i] + np.einsum("ek,ekl->el", shift, cell[np.asarray(g.node_graph)[i]])
    theirs = np.asarray(mg.edge_vectors())
    assert theirs.shape == ours.shape
    key = lambda v: np.lexsort(np.round(v, 4).T)  # noqa: E731  (same edge set, any order)
    np.testing.assert_allclose(theirs[key(theirs)], ours[key(ours)], atol=1e-4)
    assert int(np.asarray(mg.node_mask()).sum()) == int(nm.sum())
    assert mg.n_node.shape[0] == (1 if n_frames == 1 else n_frames + 1)  # + mlip's padding graph
