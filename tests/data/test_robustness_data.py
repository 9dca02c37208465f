"""Bad inputs in data loading and graph building (issue 17): a clear error or the right result.

* a search box vesin cannot grid (a structure spanning ~5e5 Å) used to kill the interpreter
  with SIGFPE: it is searched with the KD-tree instead.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from allegro_jax.data.neighborlist import neighbor_list, vesin_grid_is_safe

# Runs in a subprocess: before the guard, vesin's SIGFPE killed the interpreter.
_FAR_FLUNG = """
import numpy as np
from allegro_jax.data.neighborlist import neighbor_list
from allegro_jax.data.graph import Structure
from allegro_jax.data.padding import build_graph

rng = np.random.default_rng(0)
molecule = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
cases = {
    # two water molecules 5e5 A apart along x, and along x and y (elongated boxes)
    "line": (np.concatenate([molecule, molecule + [5e5, 0, 0]]), np.zeros((3, 3)), False),
    "plane": (np.concatenate([molecule, molecule + [1e5, 1e5, 0]]), np.zeros((3, 3)), False),
    # a slab (periodic in x, y) with an atom 1e6 A out in the vacuum
    "slab": (
        np.concatenate([rng.uniform(0, 3, size=(4, 3)), [[1.0, 1.0, 1e6]]]),
        np.diag([3.0, 3.0, 0.0]),
        [True, True, False],
    ),
}
for name, (positions, cell, pbc) in cases.items():
    got = neighbor_list(positions, cell, pbc, 5.0)
    expected = neighbor_list(positions, cell, pbc, 5.0, backend="brute")
    assert all(np.array_equal(a, b) for a, b in zip(got, expected)), name
    print(name, len(got[0]), flush=True)
numbers = [8, 1, 1, 8, 1, 1]
graph = build_graph([Structure(numbers, cases["line"][0])], ("H", "O"), 5.0)
print("graph", int(graph.edge_mask.sum()), flush=True)
"""


def test_a_structure_spanning_5e5_angstrom_does_not_crash_the_neighbour_list():
    proc = subprocess.run(
        [sys.executable, "-c", _FAR_FLUNG], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    words = proc.stdout.split()
    assert words[::2] == ["line", "plane", "slab", "graph"]
    assert words[1] == words[3] == words[7] == "12"  # two separate waters: 2 x 6 edges


@pytest.mark.parametrize(
    "lengths, safe",
    [
        ((5e5, 5.0, 5.0), True),  # 1e5 cells: vesin's cap, not above it
        ((5.0e5 + 10.0, 5.0, 5.0), False),  # 1e5 + 2 cells: rescaled to 0 along y, z
        ((1600.0, 1600.0, 5.0), False),
        ((300.0, 300.0, 300.0), True),  # many cells, but a cube: rescaled evenly
        ((1e6, 1e6, 1e6), True),
    ],
)
def test_vesin_grid_guard(lengths, safe):
    assert vesin_grid_is_safe(np.diag(lengths), 5.0) is safe


def test_kdtree_backend_matches_brute_force_far_apart():
    positions = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [3e5, 0.0, 0.0], [3e5, 1.5, 0.0]])
    got = neighbor_list(positions, np.zeros((3, 3)), False, 2.0, backend="kdtree")
    expected = neighbor_list(positions, np.zeros((3, 3)), False, 2.0, backend="brute")
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
