"""Every bad input raises a ValueError whose message names the problem and the culprit."""

from __future__ import annotations

import numpy as np
import pytest

from allegro_jax.data.graph import Structure
from allegro_jax.data.neighborlist import neighbor_list
from allegro_jax.data.padding import build_graph, graph_inputs_from_structure
from allegro_jax.data.validate import check_numbers, check_type_names, types_from_numbers

CUBE = 4.0 * np.eye(3)
POSITIONS = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.2, 0.0], [0.0, 0.0, 1.5]])


def water_like(**overrides) -> Structure:
    fields = {"numbers": [8, 1, 1, 1], "positions": POSITIONS, "cell": CUBE, "pbc": True}
    fields.update(overrides)
    return Structure(**fields)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_position_names_atom(value):
    positions = POSITIONS.copy()
    positions[2, 1] = value
    with pytest.raises(ValueError, match=r"non-finite position for atom 2"):
        neighbor_list(positions, CUBE, True, 3.0)


@pytest.mark.parametrize("pbc", [True, False])
def test_non_finite_cell(pbc):
    cell = CUBE.copy()
    cell[1, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite cell"):
        neighbor_list(POSITIONS, cell, pbc, 3.0)


def test_coincident_atoms_names_both_atoms():
    positions = np.vstack([POSITIONS, POSITIONS[1] + 1e-8])
    with pytest.raises(ValueError, match=r"atoms 1 and 4 are only 1.73e-08 Å apart"):
        neighbor_list(positions, CUBE, True, 3.0)
    with pytest.raises(ValueError, match=r"atoms 1 and 4 are only 1.73e-08 Å apart"):
        neighbor_list(positions, np.zeros((3, 3)), False, 3.0, backend="matscipy")


@pytest.mark.parametrize("backend", ["vesin", "matscipy", "brute"])
def test_coincident_through_periodic_image(backend):
    positions = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 1e-9], [2.0, 2.0, 2.0]])
    with pytest.raises(
        ValueError, match=r"atoms 0 and 1 are only 1e-09 Å apart \(image shift \[-1, 0, 0\]"
    ):
        neighbor_list(positions, CUBE, True, 3.0, backend=backend)
    # Not an error without periodicity along x.
    neighbor_list(positions, CUBE, [False, True, True], 3.0, backend=backend)


def test_coincidence_threshold_is_a_parameter():
    positions = np.array([[0.0, 0.0, 0.0], [1e-3, 0.0, 0.0]])
    assert neighbor_list(positions, CUBE, False, 3.0, min_distance=1e-6)[0].size == 2
    with pytest.raises(ValueError, match=r"min_distance 0.01 Å"):
        neighbor_list(positions, CUBE, False, 3.0, min_distance=1e-2)
    far = np.array([[0.0, 0.0, 0.0], [0.11, 0.0, 0.0]])
    assert neighbor_list(far, CUBE, False, 3.0)[0].size == 2  # the default is 0.1 Å
    with pytest.raises(ValueError, match=r"only 0.09 Å apart.*min_distance 0.1 Å"):
        neighbor_list(far * 0.09 / 0.11, CUBE, False, 3.0)
    exact = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    centers, neighbors, _ = neighbor_list(exact, CUBE, False, 3.0, min_distance=None)
    assert not np.any((centers == 0) & (neighbors == 1)), "exact zero distances are dropped"
    with pytest.raises(ValueError, match="min_distance"):
        neighbor_list(positions, CUBE, False, 3.0, min_distance=3.0)


@pytest.mark.parametrize("backend", ["vesin", "matscipy", "brute"])
def test_self_image_coincidence(backend):
    """A lattice vector shorter than min_distance puts an atom too close to its own image."""
    cell = np.diag([0.5, 3.0, 3.0])
    with pytest.raises(ValueError, match=r"atom 0 is only 0.5 Å from its own periodic image"):
        neighbor_list(np.zeros((1, 3)), cell, True, 2.0, backend=backend, min_distance=0.6)


@pytest.mark.parametrize(
    "cell, pbc, message",
    [
        (np.zeros((3, 3)), True, "zero-length lattice vector 0"),
        (np.diag([3.0, 0.0, 3.0]), [True, True, False], "zero-length lattice vector 1"),
        (np.array([[3.0, 0, 0], [0, 3.0, 0], [3.0, 3.0, 0]]), True, "linearly dependent"),
        (np.array([[3.0, 0, 0], [6.0, 0, 0], [0, 0, 3.0]]), [True, True, False], "zero volume"),
    ],
)
def test_singular_periodic_cell(cell, pbc, message):
    with pytest.raises(ValueError, match=message):
        neighbor_list(POSITIONS, cell, pbc, 3.0)


def test_singular_cell_allowed_along_vacuum():
    cell = np.diag([3.0, 3.0, 0.0])
    pairs = neighbor_list(POSITIONS, cell, [True, True, False], 3.0)
    assert pairs[0].size > 0


@pytest.mark.parametrize(
    "positions, cell, pbc, message",
    [
        (np.zeros((4, 2)), CUBE, True, r"positions must have shape \[n_atoms, 3\]"),
        (np.zeros(3), CUBE, True, r"positions must have shape \[n_atoms, 3\]"),
        (POSITIONS, np.eye(2), True, r"cell must have shape \[3, 3\]"),
        (POSITIONS, np.zeros(9), True, r"cell must have shape \[3, 3\]"),
        (POSITIONS, CUBE, [True, False], "pbc must be a bool or 3 bools"),
    ],
)
def test_shapes(positions, cell, pbc, message):
    with pytest.raises(ValueError, match=message):
        neighbor_list(positions, cell, pbc, 3.0)


@pytest.mark.parametrize("r_max", [0.0, -1.0, np.nan, np.inf, "five"])
def test_bad_r_max(r_max):
    with pytest.raises(ValueError, match="r_max"):
        neighbor_list(POSITIONS, CUBE, True, r_max)


def test_numbers_length_mismatch():
    with pytest.raises(ValueError, match="numbers has length 3 but positions has 4 atoms"):
        graph_inputs_from_structure(water_like(numbers=[8, 1, 1]), ("H", "O"), 3.0)
    with pytest.raises(ValueError, match="invalid atomic number 0"):
        check_numbers(np.array([1, 0]), 2)
    with pytest.raises(ValueError, match="must be integers"):
        check_numbers(np.array([1.0, 1.5]), 2)


def test_types_from_numbers():
    types = types_from_numbers(np.array([8, 1, 6, 1]), ("H", "C", "O"))
    assert types.dtype == np.int32
    np.testing.assert_array_equal(types, [2, 0, 1, 0])


def test_unknown_element_names_symbol_and_allowed():
    with pytest.raises(ValueError, match=r"unknown element Fe \(Z=26, first at atom 2") as info:
        types_from_numbers(np.array([1, 8, 26, 26, 29]), ("H", "C", "O"))
    assert "['H', 'C', 'O']" in str(info.value)
    assert "['Cu', 'Fe']" in str(info.value)


@pytest.mark.parametrize(
    "names, message",
    [(("H", "Xx"), "unknown chemical symbols"), (("H", "H"), "duplicates"), ((), "empty")],
)
def test_bad_type_names(names, message):
    with pytest.raises(ValueError, match=message):
        check_type_names(names)


def test_batch_errors_name_the_structure():
    good = water_like()
    positions = POSITIONS.copy()
    positions[3] = np.nan
    bad = water_like(positions=positions)
    with pytest.raises(ValueError, match=r"structure 2: non-finite position for atom 3"):
        build_graph([good, good, bad], ("H", "O"), 3.0)
    with pytest.raises(ValueError, match=r"structure 1: unknown element C"):
        build_graph([good, water_like(numbers=[6, 1, 1, 1])], ("H", "O"), 3.0)
