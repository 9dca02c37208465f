"""Neighbour lists: library backends against the brute-force oracle and known counts."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from allegro_jax.data.neighborlist import BACKENDS, edge_vectors, neighbor_list

LIBRARIES = ("vesin", "matscipy", "kdtree")
KINDS = ("cubic", "triclinic", "skewed", "left_handed", "mixed")

SKEWED = np.array([[2.0, 0.0, 0.0], [1.9, 0.5, 0.0], [1.9, 0.45, 0.5]])  # angles ~15 deg
LEFT_HANDED = np.array([[3.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 3.0, 0.5]])


def assert_same_pairs(got, expected):
    for a, b, name in zip(got, expected, ("centers", "neighbors", "shifts"), strict=True):
        assert a.shape == b.shape, f"{name}: {a.shape} != {b.shape}"
        np.testing.assert_array_equal(a, b, err_msg=name)


def assert_valid_pairs(positions, cell, pbc, r_max, pairs):
    """Properties every neighbour list must have, recomputed independently."""
    centers, neighbors, shifts = pairs
    assert centers.dtype == neighbors.dtype == shifts.dtype == np.int64
    assert shifts.shape == (centers.shape[0], 3)
    pbc = np.broadcast_to(pbc, (3,))
    assert not shifts[:, ~pbc].any(), "shift along a non-periodic axis"
    # r_ij recomputed with an explicit loop-free formula (not edge_vectors).
    vectors = positions[neighbors] - positions[centers] + np.einsum("ea,ab->eb", shifts, cell)
    lengths = np.linalg.norm(vectors, axis=1)
    assert np.all(lengths > 0) and np.all(lengths < r_max)
    np.testing.assert_allclose(
        edge_vectors(positions, cell, centers, neighbors, shifts), vectors, atol=1e-12
    )
    # Sorted by (i, j, S), no duplicates.
    keys = np.column_stack([centers, neighbors, shifts])
    order = np.lexsort(keys.T[::-1])
    np.testing.assert_array_equal(order, np.arange(len(order)))
    assert len(np.unique(keys, axis=0)) == len(keys)
    # Both directions: (i, j, S) <-> (j, i, -S).
    reverse = np.column_stack([neighbors, centers, -shifts])
    assert set(map(tuple, reverse.tolist())) == set(map(tuple, keys.tolist()))


def random_case(rng: np.random.Generator, kind: str):
    n_atoms = int(rng.integers(1, 5))
    if kind == "cubic":
        cell = np.eye(3) * rng.uniform(2.0, 4.0)
        pbc = np.ones(3, dtype=bool)
    elif kind == "triclinic":
        cell = np.eye(3) * rng.uniform(2.0, 4.0) + rng.uniform(-1.0, 1.0, size=(3, 3))
        pbc = np.ones(3, dtype=bool)
    elif kind == "skewed":
        cell = SKEWED * rng.uniform(1.0, 1.5)
        pbc = np.ones(3, dtype=bool)
    elif kind == "left_handed":
        cell = LEFT_HANDED
        pbc = np.ones(3, dtype=bool)
    elif kind == "mixed":
        cell = np.eye(3) * rng.uniform(2.0, 4.0) + rng.uniform(-1.0, 1.0, size=(3, 3))
        pbc = np.zeros(3, dtype=bool)
        while pbc.all() or not pbc.any():
            pbc = rng.random(3) < 0.5
        if rng.random() < 0.5:
            cell[~pbc] = 0.0  # vacuum directions given as zero rows
    else:
        raise AssertionError(kind)
    # Fractional coordinates well outside [0, 1): the atoms are NOT wrapped.
    positions = rng.uniform(-2.0, 3.0, size=(n_atoms, 3)) @ (cell + 3.0 * np.diag(~pbc))
    r_max = float(rng.uniform(5.0, 6.0))
    return positions, cell, pbc, r_max


@pytest.mark.parametrize("backend", LIBRARIES)
@pytest.mark.parametrize("kind", KINDS)
def test_small_cells_match_brute_force(backend, kind):
    rng = np.random.default_rng([KINDS.index(kind), LIBRARIES.index(backend)])
    n_multi_image = 0
    for _ in range(8):
        positions, cell, pbc, r_max = random_case(rng, kind)
        # random atoms may come closer than the default min_distance: only pairs matter here
        args = (positions, cell, pbc, r_max)
        expected = neighbor_list(*args, backend="brute", min_distance=1e-6)
        got = neighbor_list(*args, backend=backend, min_distance=1e-6)
        assert_same_pairs(got, expected)
        assert_valid_pairs(positions, cell, pbc, r_max, got)
        centers, neighbors, _ = got
        pairs = np.column_stack([centers, neighbors])
        n_multi_image += len(pairs) - len(np.unique(pairs, axis=0))
    assert n_multi_image > 0, "cases must exercise several images of the same pair"


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_atom_cubic_counts(backend):
    """Self-images of one atom in a 3 Å cube: shells of 6, 12 and 8 at 3, 4.24, 5.20 Å."""
    positions, cell = np.array([[0.3, -7.1, 2.2]]), 3.0 * np.eye(3)
    counts = {3.5: 6, 4.5: 18, 5.5: 26, 6.1: 32}
    for r_max, count in counts.items():
        centers, neighbors, shifts = neighbor_list(positions, cell, True, r_max, backend=backend)
        assert len(centers) == count
        assert np.all(centers == 0) and np.all(neighbors == 0)
        assert np.all(np.abs(shifts).max(axis=1) >= 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_silicon_coordination(backend):
    """Diamond Si: 4 + 12 + 12 neighbours within 5 Å (shells 2.35, 3.84, 4.50, 5.43 Å)."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 2, 2) if backend == "brute" else 5)
    centers, _, _ = neighbor_list(atoms.positions, atoms.cell[:], atoms.pbc, 5.0, backend=backend)
    np.testing.assert_array_equal(np.bincount(centers, minlength=len(atoms)), 28)


def test_libraries_agree_on_large_cell():
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((5, 5, 5))
    rng = np.random.default_rng(3)
    positions = atoms.positions + rng.normal(scale=0.1, size=atoms.positions.shape)
    positions[::7] += 5.43 * 5 * rng.integers(-2, 3, size=(len(positions[::7]), 3))  # unwrap
    pairs = [neighbor_list(positions, atoms.cell[:], True, 5.0, backend=b) for b in LIBRARIES]
    for other in pairs[1:]:
        assert_same_pairs(pairs[0], other)
    assert_valid_pairs(positions, atoms.cell[:], True, 5.0, pairs[0])


@pytest.mark.parametrize("backend", LIBRARIES)
def test_molecules(backend, aspirin_structures):
    for structure in aspirin_structures[:5]:
        for cell in (np.zeros((3, 3)), np.eye(3) * 1.5, np.full((3, 3), 7.0)):  # ignored
            args = (structure.positions, cell, False, 5.0)
            got = neighbor_list(*args, backend=backend)
            assert_same_pairs(got, neighbor_list(*args, backend="brute"))
            assert_valid_pairs(structure.positions, cell, False, 5.0, got)


@pytest.mark.parametrize("backend", LIBRARIES)
def test_water_box(backend, water_structures):
    structure = water_structures[0]
    args = (structure.positions, structure.cell, structure.pbc, 5.0)
    got = neighbor_list(*args, backend=backend)
    assert_same_pairs(got, neighbor_list(*args, backend="brute"))


@pytest.mark.parametrize("backend", LIBRARIES)
@pytest.mark.parametrize(
    "pbc", [(True, True, False), (True, False, False), (False, True, False), (False, False, True)]
)
def test_mixed_pbc_slab_with_far_atoms(backend, pbc):
    """Non-periodic directions: atoms far outside the cell, tilted vacuum vector."""
    rng = np.random.default_rng(7)
    cell = np.array([[2.6, 0.0, 0.0], [1.3, 2.25, 0.0], [0.7, -0.4, 3.1]])
    positions = rng.uniform(-1.0, 2.0, size=(6, 3)) @ cell
    positions[0] += [0.0, 0.0, 40.0]  # far along the vacuum direction
    positions[1] += 4 * cell[0] - 3 * cell[1]
    expected = neighbor_list(positions, cell, pbc, 5.5, backend="brute")
    got = neighbor_list(positions, cell, pbc, 5.5, backend=backend)
    assert_same_pairs(got, expected)
    assert_valid_pairs(positions, cell, pbc, 5.5, got)


@pytest.mark.parametrize("backend", LIBRARIES)
def test_wrapping_changes_shifts_not_vectors(backend):
    rng = np.random.default_rng(11)
    cell = SKEWED * 1.3
    wrapped = rng.uniform(0.0, 1.0, size=(4, 3)) @ cell
    offsets = rng.integers(-50, 50, size=(4, 3))
    unwrapped = wrapped + offsets @ cell
    vectors = []
    for positions in (wrapped, unwrapped):
        centers, neighbors, shifts = neighbor_list(positions, cell, True, 5.0, backend=backend)
        v = edge_vectors(positions, cell, centers, neighbors, shifts)
        vectors.append(v[np.lexsort(np.round(v, 6).T)])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cutoff_is_strict_and_deterministic(backend):
    positions = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    cell = np.eye(3) * 10.0
    assert neighbor_list(positions, cell, True, 2.0, backend=backend)[0].size == 0
    centers, neighbors, shifts = neighbor_list(positions, cell, True, 2.0 + 1e-9, backend=backend)
    np.testing.assert_array_equal(centers, [0, 1])
    np.testing.assert_array_equal(neighbors, [1, 0])
    np.testing.assert_array_equal(shifts, np.zeros((2, 3)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_isolated(backend):
    pairs = neighbor_list(np.zeros((0, 3)), np.zeros((3, 3)), False, 5.0, backend=backend)
    assert [p.shape for p in pairs] == [(0,), (0,), (0, 3)]
    pairs = neighbor_list(np.zeros((1, 3)), np.zeros((3, 3)), False, 5.0, backend=backend)
    assert pairs[0].size == 0


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown neighbour-list backend 'ase'"):
        neighbor_list(np.zeros((2, 3)), np.eye(3), False, 5.0, backend="ase")
