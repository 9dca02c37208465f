"""Host-side neighbour lists with integer image shifts.

For a structure with positions ``pos``, lattice vectors ``cell`` (rows) and periodicity
``pbc``, :func:`neighbor_list` returns every ordered pair ``(i, j, S)`` with

    r_ij = pos[j] - pos[i] + S @ cell,        0 < |r_ij| < r_max,

in both directions, including an atom paired with its own periodic images (``i == j``,
``S != 0``) and several images of the same pair when ``r_max`` exceeds the cell. ``S`` is
zero along non-periodic directions. Atoms may lie outside the cell: the shifts refer to
the positions as given (they are never wrapped).

Backends:
  * ``"vesin"`` (default): vesin's cell list, the fastest (see ``benchmarks/neighborlist.py``).
    vesin caps its grid at 1e5 cells by shrinking every axis in proportion; for an elongated
    search box (a molecule spanning ~5e5 Å along one axis, a slab with an atom far out in
    the vacuum) an axis then gets no cell and the library divides by zero, which kills the
    interpreter with SIGFPE. Such boxes are detected beforehand (:func:`vesin_grid_is_safe`)
    and searched with ``"kdtree"`` instead.
  * ``"kdtree"``: scipy's KD-tree over the periodic images (O(n log n) for any extent).
  * ``"matscipy"``: matscipy's cell list (needs the ``dev`` extra).
  * ``"brute"``: an O(n_atoms^2 * n_images) numpy enumeration of lattice images; the test
    oracle.

Both libraries get the same canonical search frame: rows of the cell along non-periodic
directions (zeros for a molecule, anything for the vacuum direction of a slab) are replaced
by unit vectors orthogonal to the periodic rows, scaled to span the atoms, and the atoms
are translated into that span. This changes neither the periodic lattice nor any ``r_ij``
and makes every case well-posed for both libraries (matscipy needs an invertible cell).
The libraries search slightly beyond ``r_max``; the final selection ``0 < |r_ij| < r_max``
is made here in float64 with the formula above, so every backend returns the same pairs in
the same order (sorted by centre, neighbour, then shift).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Literal

import numpy as np
import vesin
from scipy.spatial import cKDTree

from allegro_jax.data import validate

Backend = Literal["vesin", "kdtree", "matscipy", "brute"]
BACKENDS: tuple[str, ...] = ("vesin", "kdtree", "matscipy", "brute")

# The libraries search up to r_max * (1 + _SEARCH_SLACK) so that pairs right at the cutoff
# are decided by this module's float64 distance, identically for every backend.
_SEARCH_SLACK = 1e-8

PairArrays = tuple[np.ndarray, np.ndarray, np.ndarray]


def neighbor_list(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    r_max: float,
    *,
    backend: Backend = "vesin",
    min_distance: float | None = validate.DEFAULT_MIN_DISTANCE,
) -> PairArrays:
    """All ordered pairs closer than ``r_max``, with their integer image shifts.

    Args:
        positions: ``[n_atoms, 3]`` Cartesian positions in Å (need not be wrapped).
        cell: ``[3, 3]`` lattice vectors as rows (anything finite along non-periodic
            directions, e.g. zeros for a molecule).
        pbc: ``[3]`` bool (or one bool) periodicity along each lattice vector.
        r_max: cutoff radius in Å; pairs with ``|r_ij| < r_max`` are kept.
        backend: ``"vesin"``, ``"kdtree"``, ``"matscipy"`` or ``"brute"``.
        min_distance: raise if two atoms (or an atom and its own image) are closer than
            this (Å; default :data:`~allegro_jax.data.validate.DEFAULT_MIN_DISTANCE`, 0.1 Å);
            ``None`` or ``0`` disables the check (exactly coincident pairs are then dropped
            silently).

    Returns:
        ``(centers, neighbors, shifts)``: ``[n_edges]`` int64 ``i``, ``[n_edges]`` int64
        ``j`` and ``[n_edges, 3]`` int64 ``S``, sorted by ``i``, then ``j``, then ``S``.

    Raises:
        ValueError: on invalid inputs (see :mod:`allegro_jax.data.validate`), coincident
            atoms or an unknown backend.
    """
    pbc = validate.check_pbc(pbc)
    pos = validate.check_positions(positions)
    cell = validate.check_cell(cell, pbc)
    r_max = validate.check_r_max(r_max)
    min_distance = _check_min_distance(min_distance, r_max)
    if backend not in _SEARCH_FNS:
        raise ValueError(f"unknown neighbour-list backend {backend!r}; choose from {BACKENDS}")
    if pos.shape[0] == 0:
        return _empty_pairs()
    r_search = r_max * (1.0 + _SEARCH_SLACK)
    centers, neighbors, shifts = _SEARCH_FNS[backend](pos, cell, pbc, r_search)
    return _select_and_sort(pos, cell, pbc, r_max, min_distance, centers, neighbors, shifts)


def edge_vectors(
    positions: np.ndarray,
    cell: np.ndarray,
    centers: np.ndarray,
    neighbors: np.ndarray,
    shifts: np.ndarray,
) -> np.ndarray:
    """Edge vectors ``r_ij = pos[j] - pos[i] + S @ cell`` on the host.

    Args:
        positions: ``[n_atoms, 3]``.
        cell: ``[3, 3]`` lattice vectors as rows.
        centers: ``[n_edges]`` int, ``i``.
        neighbors: ``[n_edges]`` int, ``j``.
        shifts: ``[n_edges, 3]`` integer image offsets.

    Returns:
        ``[n_edges, 3]`` float64 edge vectors.
    """
    pos = np.asarray(positions, dtype=np.float64)
    lattice = np.asarray(cell, dtype=np.float64)
    shifts = np.asarray(shifts)
    vectors = np.take(pos, neighbors, axis=0) - np.take(pos, centers, axis=0)  # [n_edges, 3]
    for axis in range(3):  # S @ cell, written out: much faster than a [E, 3] x [3, 3] matmul
        if shifts[:, axis].any():
            vectors += shifts[:, axis, None] * lattice[axis]
    return vectors


def _check_min_distance(min_distance: float | None, r_max: float) -> float:
    if min_distance is None:
        return 0.0
    value = float(min_distance)
    if not np.isfinite(value) or value < 0.0:
        raise ValueError(f"min_distance must be finite and >= 0, got {min_distance}")
    if value >= r_max:
        raise ValueError(f"min_distance ({value}) must be smaller than r_max ({r_max})")
    return value


def _empty_pairs() -> PairArrays:
    empty = np.zeros(0, dtype=np.int64)
    return empty, empty.copy(), np.zeros((0, 3), dtype=np.int64)


def _select_and_sort(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    r_max: float,
    min_distance: float,
    centers: np.ndarray,
    neighbors: np.ndarray,
    shifts: np.ndarray,
) -> PairArrays:
    """Check coincidences, keep ``0 < d < r_max`` (dropping ``i == j, S == 0``), then sort."""
    centers = np.asarray(centers, dtype=np.int64)  # [n_candidates]
    neighbors = np.asarray(neighbors, dtype=np.int64)  # [n_candidates]
    shifts = np.asarray(shifts, dtype=np.int64).reshape(-1, 3)  # [n_candidates, 3]
    # Column-wise loops below: numpy reductions over the short axis of [E, 3] are slow.
    if any(shifts[:, axis].any() for axis in np.flatnonzero(~pbc)):
        raise RuntimeError("neighbour-list backend returned a shift along a non-periodic axis")
    vectors = edge_vectors(positions, cell, centers, neighbors, shifts)  # [n_candidates, 3]
    distances = np.sqrt(np.einsum("ed,ed->e", vectors, vectors))  # [n_candidates]
    if min_distance > 0.0:
        # Trivial self pairs (i == j, S == 0) have exactly d == 0 and are not coincidences.
        close = np.flatnonzero(distances < min_distance)
        close_shifts = shifts[close]  # [n_close, 3]
        nontrivial = (centers[close] != neighbors[close]) | (close_shifts != 0).any(axis=1)
        close = close[nontrivial]
        validate.check_coincident_atoms(
            centers[close], neighbors[close], shifts[close], distances[close], min_distance
        )
    kept = np.flatnonzero((distances > 0.0) & (distances < r_max))  # trivial pairs have d == 0
    kept = kept[_pair_order(centers[kept], neighbors[kept], shifts[kept], positions.shape[0])]
    return centers[kept], neighbors[kept], np.take(shifts, kept, axis=0)


def _pair_order(
    centers: np.ndarray, neighbors: np.ndarray, shifts: np.ndarray, n_atoms: int
) -> np.ndarray:
    """Permutation sorting pairs by centre, neighbour, then shift (lexicographically)."""
    if centers.size == 0:
        return np.zeros(0, dtype=np.int64)
    low = np.array([shifts[:, axis].min() for axis in range(3)])  # [3]
    widths = np.array([shifts[:, axis].max() for axis in range(3)]) - low + 1  # [3]
    n_keys = float(n_atoms) ** 2 * float(np.prod(widths))
    if n_keys < 2.0**62:
        # One int64 key: ((i * n_atoms + j) * w0 + s0) * w1 + s1) * w2 + s2, unique per pair.
        key = centers * n_atoms + neighbors
        for axis in range(3):
            key *= int(widths[axis])
            key += shifts[:, axis] - low[axis]
        return np.argsort(key, kind="stable")  # fast on runs
    return np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], neighbors, centers))


def _search_frame(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, margin: float
) -> tuple[np.ndarray, np.ndarray]:
    """A well-posed (positions, box) for a cell-list library.

    Non-periodic rows of the cell become orthonormal complements of the periodic rows,
    scaled to the extent of the atoms plus ``margin``; the atoms are translated along
    those directions so that they lie inside the box. Periodic rows are unchanged, so the
    image lattice, every ``r_ij`` and every shift are unchanged.

    Returns:
        ``(positions [n_atoms, 3], box [3, 3])``; the box is right-handed unless all three
        directions are periodic (then it is the given cell).
    """
    n_periodic = int(pbc.sum())
    if n_periodic == 3:
        return positions, cell
    if n_periodic == 0:
        complement = np.eye(3)
    else:
        _, _, vt = np.linalg.svd(cell[pbc])  # full [3, 3]; rows k.. span the complement
        complement = vt[n_periodic:].copy()  # [3 - k, 3], orthonormal
    box = cell.copy()
    box[~pbc] = complement
    if np.linalg.det(box) < 0.0:
        complement[0] *= -1.0
    projections = positions @ complement.T  # [n_atoms, 3 - k]
    low = projections.min(axis=0)  # [3 - k]
    extent = projections.max(axis=0) - low  # [3 - k]
    box[~pbc] = complement * (extent + margin)[:, None]
    return positions - low @ complement, box


# vesin's cap on the number of cells of its grid (MAX_NUMBER_OF_CELLS in cpu_cell_list.cpp)
_VESIN_MAX_CELLS = 1e5


def vesin_grid_is_safe(box: np.ndarray, cutoff: float) -> bool:
    """Whether vesin's cell list can search ``box`` (rows: the box vectors) at ``cutoff``.

    vesin (0.6) divides each axis into ``trunc(d / cutoff)`` cells (``d``: the distance
    between the box's faces), and when the total exceeds 1e5 it rescales every axis keeping
    the ratios, truncating each: an elongated box then gets 0 cells along a short axis, and
    vesin divides by zero (SIGFPE). This repeats the computation and asks for at least two
    cells per axis after the rescaling (a margin over vesin's arithmetic; checked against
    crashes in subprocesses for boxes from 1 to 1e6 Å).
    """
    box = np.asarray(box, dtype=np.float64)
    volume = abs(float(np.linalg.det(box)))
    if not volume > 0.0:
        return False
    faces = [np.linalg.norm(np.cross(box[(k + 1) % 3], box[(k + 2) % 3])) for k in range(3)]
    cells = [max(np.trunc(volume / face / cutoff), 1.0) for face in faces]
    if cells[0] * cells[1] * cells[2] <= _VESIN_MAX_CELLS:
        return True
    ratio_xy, ratio_yz = cells[0] / cells[1], cells[1] / cells[2]
    n_z = np.cbrt(_VESIN_MAX_CELLS / (ratio_xy * ratio_yz * ratio_yz))
    n_y = ratio_yz * np.trunc(n_z)
    n_x = ratio_xy * np.trunc(n_y)
    return bool(min(n_z, n_y, n_x) >= 2.0)


def _vesin_pairs(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, r: float) -> PairArrays:
    points, box = _search_frame(positions, cell, pbc, r)
    if not vesin_grid_is_safe(box, r):  # vesin would crash the interpreter (SIGFPE)
        return _kdtree_pairs(positions, cell, pbc, r)
    calculator = vesin.NeighborList(cutoff=r, full_list=True)
    centers, neighbors, shifts = calculator.compute(
        points=points, box=box, periodic=pbc, quantities="ijS", copy=True
    )
    return centers, neighbors, shifts


def _matscipy_pairs(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, r: float
) -> PairArrays:
    try:
        from matscipy.neighbours import neighbour_list as matscipy_neighbour_list
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the 'matscipy' neighbour-list backend needs matscipy (pip install matscipy)"
        ) from err
    points, box = _search_frame(positions, cell, pbc, r)
    centers, neighbors, shifts = matscipy_neighbour_list(
        "ijS", positions=points, cell=box, pbc=pbc, cutoff=r
    )
    return centers, neighbors, shifts


def _wrapped_images(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, r: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[range]]:
    """Atoms wrapped along the periodic directions and the images a pair within ``r`` needs.

    With ``P`` the periodic rows and ``B = (P P^T)^{-1} P`` their dual vectors (``B P^T = 1``),
    the fractional coordinate of a vector along periodic axis ``a`` is ``f_a = r . B_a`` and
    ``|f_a| <= |r| |B_a|``. After wrapping every atom to ``f in [0, 1)``, a pair within ``r``
    therefore needs ``|S_a| <= ceil(r |B_a|) + 1``.

    Returns:
        ``(wraps [n_atoms, k] int64, wrapped [n_atoms, 3], P [k, 3], images)``, with
        ``wrapped = positions - wraps @ P`` and ``images`` one range per periodic axis.
    """
    periodic_rows = cell[pbc]  # [k, 3]
    if not periodic_rows.shape[0]:
        return np.zeros((positions.shape[0], 0), dtype=np.int64), positions, periodic_rows, []
    dual = np.linalg.solve(periodic_rows @ periodic_rows.T, periodic_rows)  # [k, 3]
    wraps = np.floor(positions @ dual.T).astype(np.int64)  # [n_atoms, k]
    wrapped = positions - wraps @ periodic_rows  # [n_atoms, 3]
    bounds = np.ceil(r * np.linalg.norm(dual, axis=1)).astype(np.int64) + 1  # [k]
    return wraps, wrapped, periodic_rows, [range(-int(b), int(b) + 1) for b in bounds]


def _kdtree_pairs(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, r: float) -> PairArrays:
    """scipy's KD-tree over the images of :func:`_wrapped_images` (any extent, no grid)."""
    wraps, wrapped, periodic_rows, images = _wrapped_images(positions, cell, pbc, r)
    tree = cKDTree(wrapped)
    found_i, found_j, found_s = [], [], []
    for image in itertools.product(*images):
        image = np.asarray(image, dtype=np.int64)  # [k]
        # j within r of wrapped[i] - image @ P: r_ij = wrapped[j] - wrapped[i] + image @ P
        hits = tree.query_ball_point(wrapped - image @ periodic_rows, r, return_sorted=False)
        counts = np.fromiter((len(h) for h in hits), dtype=np.int64, count=len(hits))
        if not counts.sum():
            continue
        i = np.repeat(np.arange(len(hits)), counts)
        j = np.concatenate([np.asarray(h, dtype=np.int64) for h in hits])
        shift = np.zeros((i.size, 3), dtype=np.int64)
        shift[:, pbc] = image[None, :] - wraps[j] + wraps[i]
        found_i.append(i)
        found_j.append(j)
        found_s.append(shift)
    if not found_i:
        return _empty_pairs()
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)


def _brute_pairs(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, r: float) -> PairArrays:
    """Reference search: wrap along the periodic directions, then try every image.

    The images are those of :func:`_wrapped_images`; the shifts are then translated back to
    the unwrapped positions.
    """
    wraps, wrapped, periodic_rows, images = _wrapped_images(positions, cell, pbc, r)
    deltas = wrapped[None, :, :] - wrapped[:, None, :]  # [n_atoms, n_atoms, 3]
    found_i, found_j, found_s = [], [], []
    for image in itertools.product(*images):
        image = np.asarray(image, dtype=np.int64)  # [k]
        vectors = deltas + image @ periodic_rows  # [n_atoms, n_atoms, 3]
        i, j = np.nonzero(np.einsum("ijd,ijd->ij", vectors, vectors) < r * r)
        shift = np.zeros((i.size, 3), dtype=np.int64)
        # r_ij = wrapped[j] - wrapped[i] + image @ P, with wrapped = pos - wraps @ P.
        shift[:, pbc] = image[None, :] - wraps[j] + wraps[i]
        found_i.append(i)
        found_j.append(j)
        found_s.append(shift)
    if not found_i:
        return _empty_pairs()
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)


_SEARCH_FNS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray, float], PairArrays]] = {
    "vesin": _vesin_pairs,
    "kdtree": _kdtree_pairs,
    "matscipy": _matscipy_pairs,
    "brute": _brute_pairs,
}
