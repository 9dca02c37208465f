"""Host-side validation of atomic structures before they become graphs.

Every check raises :class:`ValueError` with a message that names the problem and the
offending atom (and, through :func:`frame_context`, the offending frame and file, as a
:class:`~allegro_jax.data.errors.DataError`). The checks are pure functions of numpy arrays
so that the neighbour list, the batching code and data loaders can share them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
from ase.data import atomic_numbers as _ATOMIC_NUMBERS
from ase.data import chemical_symbols as _CHEMICAL_SYMBOLS

from allegro_jax.data.errors import DataError

# Atoms closer than this (Å) are an error: no bond is shorter than ~0.74 Å (H2), so such a
# pair is a damaged or mis-converted frame (e.g. coordinates in the wrong unit), which a
# model would otherwise learn from or predict on without a word.
DEFAULT_MIN_DISTANCE = 0.1

# A periodic lattice vector shorter than this (Å) counts as zero.
_MIN_LATTICE_LENGTH = 1e-8
# Periodic lattice vectors whose normalised volume |a1 x a2 . a3| / (|a1| |a2| |a3|) (or its
# 2D / 1D analogue) is below this are considered linearly dependent.
_MIN_NORMALISED_VOLUME = 1e-8


def describe_structure(index: int, source: str | None = None, frame: int | None = None) -> str:
    """``"structure {index}"``, or ``"{source}, frame {frame}"`` when the file is known."""
    if source is None:
        return f"structure {index}"
    return f"{source}, frame {index if frame is None else frame}"


@contextlib.contextmanager
def frame_context(
    index: int, *, source: str | None = None, frame: int | None = None
) -> Iterator[None]:
    """Prefix the message of any ``ValueError`` raised inside with the structure it concerns.

    Args:
        index: position of the structure in the caller's sequence.
        source: the file the structure was read from, if known.
        frame: its frame index in that file (``Structure.info["index"]`` of the readers);
            defaults to ``index``.

    Raises:
        DataError: (a ``ValueError``) ``"structure {index}: ..."``, or ``"{source}, frame
            {frame}: ..."`` when ``source`` is given.
    """
    try:
        yield
    except ValueError as err:
        raise DataError(f"{describe_structure(index, source, frame)}: {err}") from err


def check_r_max(r_max: float) -> float:
    """Check that the cutoff radius is a finite positive number.

    Args:
        r_max: cutoff radius in Å.

    Returns:
        ``r_max`` as a Python float.

    Raises:
        ValueError: if ``r_max`` is not a real scalar, not finite or not positive.
    """
    try:
        value = float(r_max)
    except (TypeError, ValueError) as err:
        raise ValueError(f"r_max must be a real number, got {r_max!r}") from err
    if not np.isfinite(value) or value <= 0.0:
        raise ValueError(f"r_max must be finite and > 0, got {value}")
    return value


def check_positions(positions: np.ndarray) -> np.ndarray:
    """Check that positions are a finite ``[n_atoms, 3]`` array.

    Args:
        positions: Cartesian positions in Å.

    Returns:
        The positions as float64, ``[n_atoms, 3]``.

    Raises:
        ValueError: on a wrong shape or a NaN/inf coordinate (naming the first bad atom).
    """
    pos = np.asarray(positions)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape [n_atoms, 3], got {pos.shape}")
    if not np.issubdtype(pos.dtype, np.number) or np.iscomplexobj(pos):
        raise ValueError(f"positions must be real numbers, got dtype {pos.dtype}")
    pos = pos.astype(np.float64, copy=False)
    bad = ~np.isfinite(pos).all(axis=1)  # [n_atoms]
    if bad.any():
        atom = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"non-finite position for atom {atom}: {pos[atom].tolist()} "
            f"({int(bad.sum())} atom(s) affected)"
        )
    return pos


def check_pbc(pbc: np.ndarray | Sequence[bool] | bool) -> np.ndarray:
    """Check periodic boundary flags and broadcast them to ``[3]`` bool.

    Args:
        pbc: a single bool or three of them.

    Returns:
        ``[3]`` bool array.

    Raises:
        ValueError: if ``pbc`` cannot be broadcast to three flags.
    """
    flags = np.asarray(pbc)
    if flags.shape not in ((), (3,)):
        raise ValueError(f"pbc must be a bool or 3 bools, got shape {flags.shape}")
    if flags.dtype != np.bool_ and not np.all(np.isin(flags, (0, 1))):
        raise ValueError(f"pbc must contain booleans, got {flags.tolist()}")
    return np.broadcast_to(flags.astype(bool), (3,)).copy()


def check_cell(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Check the cell: a finite ``[3, 3]`` matrix, non-singular along periodic directions.

    Rows are lattice vectors. Rows along non-periodic directions may be anything finite
    (zeros for a molecule or the vacuum direction of a slab). The periodic rows must be
    linearly independent: a zero-length periodic lattice vector or a zero (2D/3D) volume
    spanned by the periodic vectors is an error.

    Args:
        cell: ``[3, 3]`` lattice vectors as rows, in Å.
        pbc: ``[3]`` bool, already checked with :func:`check_pbc`.

    Returns:
        The cell as float64, ``[3, 3]``.

    Raises:
        ValueError: on a wrong shape, a non-finite entry or a singular periodic cell.
    """
    mat = np.asarray(cell)
    if mat.shape != (3, 3):
        raise ValueError(f"cell must have shape [3, 3] (lattice vectors as rows), got {mat.shape}")
    if not np.issubdtype(mat.dtype, np.number) or np.iscomplexobj(mat):
        raise ValueError(f"cell must be real numbers, got dtype {mat.dtype}")
    mat = mat.astype(np.float64, copy=False)
    if not np.isfinite(mat).all():
        raise ValueError(f"non-finite cell: {mat.tolist()}")
    periodic = np.flatnonzero(pbc)
    if periodic.size == 0:
        return mat
    rows = mat[periodic]  # [k, 3]
    lengths = np.linalg.norm(rows, axis=1)  # [k]
    for axis, length in zip(periodic, lengths, strict=True):
        if length < _MIN_LATTICE_LENGTH:
            raise ValueError(
                f"zero-length lattice vector {int(axis)} ({mat[axis].tolist()}) along a "
                f"periodic direction (pbc={pbc.tolist()}): the cell is singular"
            )
    unit = rows / lengths[:, None]
    # sqrt(det(Gram)) of unit vectors: 1 for orthogonal vectors, 0 for dependent ones.
    normalised_volume = float(np.sqrt(max(np.linalg.det(unit @ unit.T), 0.0)))
    if normalised_volume < _MIN_NORMALISED_VOLUME:
        raise ValueError(
            f"the periodic lattice vectors {periodic.tolist()} of the cell {mat.tolist()} are "
            f"linearly dependent (zero volume, normalised volume {normalised_volume:.3g}): "
            f"the cell is singular along the periodic directions (pbc={pbc.tolist()})"
        )
    return mat


def as_atomic_numbers(numbers: np.ndarray | Sequence[float]) -> np.ndarray:
    """Atomic numbers as a one-dimensional int64 array, refusing non-integer values.

    A plain ``astype(int)`` would turn ``[8.0, 1.9, 1.2]`` into O, H, H without a word.

    Raises:
        ValueError: a non-integer or non-numeric value (naming the first atom with one).
    """
    z = np.asarray(numbers).reshape(-1)
    if z.dtype == np.bool_ or not np.issubdtype(z.dtype, np.number) or np.iscomplexobj(z):
        raise ValueError(f"atomic numbers must be integers, got dtype {z.dtype}")
    if not np.issubdtype(z.dtype, np.integer):
        bad = ~np.isfinite(z) | (np.mod(z, 1) != 0)
        if bad.any():
            atom = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"atomic numbers must be integers, but atom {atom} has {float(z[atom])!r} "
                f"({int(bad.sum())} non-integer value(s)); a fractional atomic number is a "
                "damaged or mis-converted file"
            )
    return z.astype(np.int64)


def check_numbers(numbers: np.ndarray, n_atoms: int) -> np.ndarray:
    """Check that atomic numbers are ``n_atoms`` integers in 1..118.

    Args:
        numbers: atomic numbers, ``[n_atoms]``.
        n_atoms: number of atoms (rows of the positions).

    Returns:
        ``[n_atoms]`` int64.

    Raises:
        ValueError: on a length mismatch, a non-integer or an out-of-range number.
    """
    z = np.asarray(numbers)
    if z.ndim != 1:
        raise ValueError(f"numbers must be one-dimensional [n_atoms], got shape {z.shape}")
    if z.shape[0] != n_atoms:
        raise ValueError(f"numbers has length {z.shape[0]} but positions has {n_atoms} atoms")
    if z.size and not np.issubdtype(z.dtype, np.integer):
        as_atomic_numbers(z)
    z = z.astype(np.int64)
    bad = (z < 1) | (z >= len(_CHEMICAL_SYMBOLS))
    if bad.any():
        atom = int(np.flatnonzero(bad)[0])
        raise ValueError(f"atom {atom} has invalid atomic number {int(z[atom])}")
    return z


def check_type_names(type_names: Sequence[str]) -> tuple[str, ...]:
    """Check that the model's type names are distinct chemical symbols.

    Args:
        type_names: chemical symbols, e.g. ``("H", "C", "O")``; position = type index.

    Returns:
        The names as a tuple.

    Raises:
        ValueError: if empty, not symbols, or repeated.
    """
    if isinstance(type_names, str):
        raise ValueError(f"type_names must be a sequence of symbols, got the string {type_names!r}")
    names = tuple(type_names)
    if not names:
        raise ValueError("type_names is empty")
    unknown = [name for name in names if name not in _ATOMIC_NUMBERS or name == "X"]
    if unknown:
        raise ValueError(f"type_names contains unknown chemical symbols {unknown}")
    if len(set(names)) != len(names):
        raise ValueError(f"type_names contains duplicates: {list(names)}")
    return names


def types_from_numbers(numbers: np.ndarray, type_names: Sequence[str]) -> np.ndarray:
    """Map atomic numbers to model type indices.

    Args:
        numbers: atomic numbers, ``[n_atoms]`` int.
        type_names: the model's chemical symbols; type ``t`` is ``type_names[t]``.

    Returns:
        ``[n_atoms]`` int32 type indices.

    Raises:
        ValueError: if an atomic number has no type (naming the element, the first atom
            with it and the allowed elements), or if ``type_names`` is invalid.
    """
    names = check_type_names(type_names)
    z = np.asarray(numbers)
    z = check_numbers(z, z.shape[0] if z.ndim == 1 else 0)
    lookup = np.full(len(_CHEMICAL_SYMBOLS), -1, dtype=np.int32)
    for index, name in enumerate(names):
        lookup[_ATOMIC_NUMBERS[name]] = index
    types = lookup[z]  # [n_atoms]
    missing = types < 0
    if missing.any():
        atom = int(np.flatnonzero(missing)[0])
        symbols = sorted({_CHEMICAL_SYMBOLS[int(n)] for n in z[missing]})
        raise ValueError(
            f"unknown element {_CHEMICAL_SYMBOLS[int(z[atom])]} (Z={int(z[atom])}, first at "
            f"atom {atom}; all unknown: {symbols}); the model's type_names are {list(names)}"
        )
    return types


def check_coincident_atoms(
    centers: np.ndarray,
    neighbors: np.ndarray,
    shifts: np.ndarray,
    distances: np.ndarray,
    min_distance: float,
) -> None:
    """Raise if any pair (including an atom and its own periodic image) is too close.

    The pairs are the candidates of a neighbour search (with the trivial ``i == j``, zero
    shift pairs already removed), so coincidences through periodic images are covered.

    Args:
        centers: ``[n_pairs]`` int, atom ``i``.
        neighbors: ``[n_pairs]`` int, atom ``j``.
        shifts: ``[n_pairs, 3]`` int image offsets.
        distances: ``[n_pairs]`` ``|r_ij|`` in Å.
        min_distance: smallest allowed distance in Å.

    Raises:
        ValueError: naming the offending pair with the smallest ``(i, j)``, its distance and
            its shift.
    """
    close = distances < min_distance  # [n_pairs]
    if not close.any():
        return
    candidates = np.flatnonzero(close)
    k = int(candidates[np.lexsort((neighbors[candidates], centers[candidates]))[0]])
    i, j, shift = int(centers[k]), int(neighbors[k]), shifts[k].tolist()
    what = (
        f"atom {i} is only {float(distances[k]):.3g} Å from its own periodic image (shift "
        f"{shift}; a lattice vector that short is unphysical)"
        if i == j
        else f"atoms {i} and {j} are only {float(distances[k]):.3g} Å apart (image shift {shift})"
    )
    raise ValueError(
        f"{what}, closer than min_distance {min_distance:g} Å ({int(close.sum())} ordered "
        f"pair(s) affected): overlapping atoms mean a damaged or mis-converted structure "
        f"(e.g. coordinates in the wrong unit); fix or remove it"
    )
