"""Training-set statistics: energy shifts, force RMS, average number of neighbours."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from allegro_jax.data.graph import Structure
from allegro_jax.data.statistics import (
    DatasetStatistics,
    atom_types,
    compute_statistics,
    fit_per_type_energy_shifts,
    neighbor_counts,
    per_atom_energy_mean,
    type_numbers,
)

DATA = Path(__file__).parents[2].parent / "shared" / "data"


def brute_force_neighbor_list(positions, cell, pbc, r_max):
    """All ordered pairs (i, j, image) with 0 < |r_ij| < r_max, by looping over images."""
    positions = np.asarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    reps = [0, 0, 0]
    if np.any(pbc):
        volume = abs(np.linalg.det(cell))
        for k in range(3):
            if pbc[k]:
                spacing = volume / np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3]))
                reps[k] = int(np.ceil(r_max / spacing)) + 1
    centers, neighbors, shifts = [], [], []
    for shift in itertools.product(*(range(-r, r + 1) for r in reps)):
        shift = np.array(shift, dtype=np.float64)
        vectors = positions[None, :, :] + shift @ cell - positions[:, None, :]  # [n, n, 3]
        distance = np.linalg.norm(vectors, axis=-1)
        mask = distance < r_max
        if not shift.any():
            np.fill_diagonal(mask, False)
        i, j = np.nonzero(mask)
        centers.append(i)
        neighbors.append(j)
        shifts.append(np.tile(shift, (len(i), 1)))
    return np.concatenate(centers), np.concatenate(neighbors), np.concatenate(shifts)


# --- types ----------------------------------------------------------------------------------


def test_type_mapping():
    z = type_numbers(["H", "C", "O"])
    np.testing.assert_array_equal(z, [1, 6, 8])
    np.testing.assert_array_equal(atom_types(np.array([8, 1, 6, 1]), z), [2, 0, 1, 0])
    with pytest.raises(ValueError, match=r"atomic numbers \[7\] are not among the types"):
        atom_types(np.array([1, 7]), z)
    with pytest.raises(ValueError, match="not chemical symbols"):
        type_numbers(["H", "Xx"])
    with pytest.raises(ValueError, match="repeat"):
        type_numbers(["H", "H"])


# --- energy shifts --------------------------------------------------------------------------


def test_least_squares_recovers_known_shifts():
    rng = np.random.default_rng(0)
    true_shifts = np.array([-13.6, -1029.5, -1485.0, -2042.0])
    counts = rng.integers(0, 12, size=(40, 4))
    counts[:, 0] += 1  # no empty frames
    energies = counts @ true_shifts
    shifts, rank = fit_per_type_energy_shifts(counts, energies)
    assert rank == 4
    np.testing.assert_allclose(shifts, true_shifts, rtol=0, atol=1e-9)


def test_single_composition_falls_back_to_mean_per_atom_energy():
    rng = np.random.default_rng(1)
    counts = np.tile([6, 2, 1], (50, 1))  # ethanol-like: every frame C2H6O
    energies = -4209.78 + 0.05 * rng.normal(size=50)
    shifts, rank = fit_per_type_energy_shifts(counts, energies)
    assert rank == 1
    mean = per_atom_energy_mean(energies, counts.sum(axis=1))
    assert mean == pytest.approx(np.mean(energies) / 9)
    np.testing.assert_allclose(shifts, mean, rtol=0, atol=1e-9)


def test_rank_deficient_is_still_least_squares():
    # Types 0 and 1 always appear 2:1 (water molecules) and type 3 never appears.
    rng = np.random.default_rng(2)
    n_water = rng.integers(1, 9, size=30)
    n_other = rng.integers(0, 4, size=30)
    counts = np.stack([2 * n_water, n_water, n_other, np.zeros(30, int)], axis=1)
    energies = counts @ np.array([-10.0, -400.0, -50.0, 0.0]) + 0.01 * rng.normal(size=30)
    shifts, rank = fit_per_type_energy_shifts(counts, energies)
    assert rank == 2
    reference, *_ = np.linalg.lstsq(counts.astype(float), energies, rcond=None)
    residual = np.linalg.norm(counts @ shifts - energies)
    assert residual == pytest.approx(np.linalg.norm(counts @ reference - energies), rel=1e-9)
    mean = per_atom_energy_mean(energies, counts.sum(axis=1))
    assert shifts[3] == pytest.approx(mean)  # absent type: the mean per-atom energy
    assert shifts[2] == pytest.approx(-50.0, abs=0.05)  # identifiable type is recovered


# --- neighbours -----------------------------------------------------------------------------


def _structure(numbers, positions, cell=None, pbc=False, **labels) -> Structure:
    cell = np.zeros((3, 3)) if cell is None else cell
    return Structure(numbers=numbers, positions=positions, cell=cell, pbc=pbc, **labels)


def test_neighbor_counts_hand_countable():
    # H-O-H on a line, 1 Å apart: with r_max 1.5 the ends see one atom, the middle two.
    water_line = _structure([1, 8, 1], [[0, 0, 0], [1, 0, 0], [2, 0, 0]])
    counts = neighbor_counts(water_line, 1.5, brute_force_neighbor_list)
    np.testing.assert_array_equal(counts, [1, 2, 1])
    np.testing.assert_array_equal(
        neighbor_counts(water_line, 2.5, brute_force_neighbor_list), [2, 2, 2]
    )
    # Simple cubic, a = 1, one atom per cell: 6 faces, +12 edges (√2), +8 corners (√3).
    cubic = _structure([29], [[0.2, 0.3, 0.4]], cell=np.eye(3), pbc=True)
    for r_max, expected in ((1.1, 6), (1.5, 18), (1.8, 26)):
        assert neighbor_counts(cubic, r_max, brute_force_neighbor_list).tolist() == [expected]
    # Periodic along x only: a chain with 2 neighbours per atom at r_max 1.1.
    chain = _structure([29], [[0, 0, 0]], cell=np.eye(3), pbc=[True, False, False])
    assert neighbor_counts(chain, 1.1, brute_force_neighbor_list).tolist() == [2]


def test_compute_statistics_hand_values():
    structures = [
        _structure(
            [1, 8, 1],
            [[0, 0, 0], [1, 0, 0], [2, 0, 0]],
            energy=-3.0,
            forces=[[1.0, 0, 0], [0, 2.0, 0], [0, 0, -1.0]],
        ),
        _structure(
            [8, 8],
            [[0, 0, 0], [5, 0, 0]],
            energy=-8.0,
            forces=[[0, 0, 3.0], [0, 0, 0]],
        ),
        _structure([1], [[0, 0, 0]]),  # unlabelled
    ]
    stats = compute_statistics(
        structures, ["H", "O", "C"], 1.5, neighbor_list_fn=brute_force_neighbor_list
    )
    assert stats.n_structures == 3 and stats.n_atoms == 6
    assert stats.per_type_n_atoms == (3, 3, 0)
    # Edges: 4 in the chain, none in O2 (5 Å) or the single atom; 6 atoms.
    assert stats.avg_num_neighbors == pytest.approx(4 / 6)
    assert stats.per_type_avg_num_neighbors == pytest.approx((2 / 3, 2 / 3, None))
    assert stats.per_type_avg_num_neighbors[2] is None
    # Forces: components 1, 2, -1, 3 among 5 atoms x 3 components.
    assert stats.forces_rms == pytest.approx(np.sqrt((1 + 4 + 1 + 9) / 15))
    assert stats.per_type_forces_rms[0] == pytest.approx(np.sqrt(2 / 6))  # two H atoms
    assert stats.per_type_forces_rms[1] == pytest.approx(np.sqrt(13 / 9))  # three O atoms
    assert stats.per_type_forces_rms[2] is None
    # Energies: E/N = -1 and -4.
    assert stats.per_atom_energy_mean == pytest.approx(-2.5)
    assert stats.per_atom_energy_std == pytest.approx(1.5)
    # counts [[2, 1, 0], [0, 2, 0]] has rank 2: 2H + O = -3, 2O = -8 fit exactly; C is absent.
    assert stats.energy_shifts_rank == 2
    assert stats.per_type_energy_shifts == pytest.approx((0.5, -4.0, -2.5))
    assert stats.per_atom_energy_residual_rms == pytest.approx(0.0, abs=1e-12)


def test_statistics_without_labels_and_errors():
    structures = [_structure([1, 1], [[0, 0, 0], [0, 0, 0.7]])]
    stats = compute_statistics(structures, ["H"], 1.0, neighbor_list_fn=brute_force_neighbor_list)
    assert stats.avg_num_neighbors == 1.0
    assert stats.per_atom_energy_mean is None and stats.per_type_energy_shifts is None
    assert stats.forces_rms is None and stats.per_type_forces_rms is None
    with pytest.raises(ValueError, match="at least one structure"):
        compute_statistics([], ["H"], 1.0, neighbor_list_fn=brute_force_neighbor_list)
    with pytest.raises(ValueError, match="not among the types"):
        compute_statistics(structures, ["C"], 1.0, neighbor_list_fn=brute_force_neighbor_list)


def test_statistics_json_roundtrip():
    structures = [
        _structure([1, 8], [[0, 0, 0], [1, 0, 0]], energy=-5.0, forces=np.ones((2, 3))),
        _structure([8, 8], [[0, 0, 0], [1.2, 0, 0]], energy=-9.0, forces=np.ones((2, 3))),
    ]
    stats = compute_statistics(
        structures, ["H", "O", "N"], 2.0, neighbor_list_fn=brute_force_neighbor_list
    )
    text = stats.to_json(indent=2)
    assert json.loads(text)["type_names"] == ["H", "O", "N"]
    assert json.loads(text)["per_type_forces_rms"][2] is None
    assert DatasetStatistics.from_json(text) == stats
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.r_max = 3.0


def test_rmd17_statistics():
    path = DATA / "rmd17" / "rmd17_ethanol_train_01.npz"
    if not path.exists():
        pytest.skip(f"{path} not present")
    from allegro_jax.data.datasets import read_rmd17

    structures = read_rmd17(path)[:100]
    stats = compute_statistics(
        structures, ["H", "C", "O"], 5.0, neighbor_list_fn=brute_force_neighbor_list
    )
    mean = np.mean([s.energy / 9 for s in structures])
    assert stats.energy_shifts_rank == 1
    np.testing.assert_allclose(stats.per_type_energy_shifts, mean, rtol=1e-13)
    forces = np.stack([s.forces for s in structures])
    assert stats.forces_rms == pytest.approx(np.sqrt(np.mean(forces**2)))
    # Ethanol spans less than 5 Å: every atom sees the other 8.
    assert stats.avg_num_neighbors == pytest.approx(8.0)


def test_default_neighbor_list_agrees_with_brute_force():
    neighborlist = pytest.importorskip("allegro_jax.data.neighborlist")
    rng = np.random.default_rng(3)
    cell = np.array([[5.0, 0.0, 0.0], [1.0, 4.5, 0.0], [0.5, 0.7, 6.0]])
    structures = [
        _structure([14] * 12, rng.uniform(0, 1, (12, 3)) @ cell, cell=cell, pbc=True),
        _structure([6, 1, 1, 8], rng.uniform(-1.5, 1.5, (4, 3))),
    ]
    for s in structures:
        for r_max in (2.0, 3.7):
            np.testing.assert_array_equal(
                neighbor_counts(s, r_max),
                neighbor_counts(s, r_max, brute_force_neighbor_list),
            )
            np.testing.assert_array_equal(
                neighbor_counts(s, r_max, neighborlist.neighbor_list),
                neighbor_counts(s, r_max, brute_force_neighbor_list),
            )
