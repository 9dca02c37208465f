"""Readers for the reference data sets, checked downloads and seeded index splits.

Every reader returns :class:`~allegro_jax.data.graph.Structure` objects in Å, eV, eV/Å and
eV/Å^3, with the stress in the ``(1/V) dE/dε`` convention (ASE's: positive under tension).

Unit conversions (exact SI values since 2019 unless stated otherwise):

* ``1 kcal/mol = 4184 J/mol / (N_A e) = 4184 / 96485.33212331 eV
  = 0.043364104241800934 eV`` (43.364 meV; thermochemical calorie, ``N_A = 6.02214076e23``,
  ``e = 1.602176634e-19 C``). ASE's ``units.kcal / units.mol`` (CODATA 2014) differs by
  8e-9 relative.
* ``1 Ha = 27.211386245988 eV`` (CODATA 2018; CODATA 2022 gives ...245981, 3e-13 relative).
* ``1 GPa = 1e9 J/m^3 = 1e-21 / e eV/Å^3 = 6.241509074460762e-3 eV/Å^3``
  (``1 eV/Å^3 = 160.2176634 GPa``), ``1 kbar = 0.1 GPa``.

The shipped data sets (``../shared/data``) need (:func:`read_dataset` does all of this):

=========  =======================================  =========================================
folder     reader                                   notes
=========  =======================================  =========================================
rmd17      :func:`read_rmd17`                       kcal/mol and kcal/mol/Å, converted
qm9        :func:`read_qm9`                         Hartree, converted; energies only
acac       :func:`read_ase`, defaults               eV, eV/Å; 50 Å box with ``pbc="F F F"``
                                                    (read as a zero cell)
3bpa       :func:`read_ase`, defaults               as acac
(both)     ``required=("energy",)``                 ``isolated_atoms.xyz``, ``iso_atoms.xyz``
water      :func:`read_ase`, defaults               eV, eV/Å; periodic; no stress
mlearn     :func:`read_ase` with                    stress in kbar with VASP's sign (positive
           :func:`recommended_read_kwargs`          under compression); Cu and Ni have no stress
=========  =======================================  =========================================

The mlearn stress key is ``virial_stress_kbar_xx_yy_zz_xy_yz_xz``. Its sign and unit were
checked against the energies of the ``Elastic`` strain series in the training files
(``ΔE ≈ V σ : Δε`` between neighbouring strains): with the sign flipped and 1 kbar =
0.1 GPa, the fitted slope is 0.98-0.99 for Mo, Si and Ge; with VASP's sign kept, the
residual is larger than ΔE itself. For Si, Ge and Li the component order matches the key
name; for Mo the last two columns are swapped (they hold xz, yz): a yz shear of the cell
shows up in the column labelled xz. :func:`recommended_read_kwargs` applies that order.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, overload

import ase.io
import numpy as np
from ase.io.formats import string2index

from allegro_jax.data.errors import DataError, DataFileError
from allegro_jax.data.graph import Structure
from allegro_jax.data.validate import as_atomic_numbers
from allegro_jax.units import (  # noqa: F401  (re-exported for readers' users)
    GPA_TO_EV_PER_A3,
    HARTREE_TO_EV,
    KBAR_TO_EV_PER_A3,
    KCAL_PER_MOL_TO_EV,
)

# --- unit conversions -----------------------------------------------------------------------


STRESS_UNITS: Mapping[str, float] = MappingProxyType(
    {"eV/A^3": 1.0, "GPa": GPA_TO_EV_PER_A3, "kbar": KBAR_TO_EV_PER_A3}
)

ASE_VOIGT_ORDER = "xx yy zz yz xz xy"
"""Order of a 6-component stress in ASE (``atoms.get_stress()``, extxyz ``stress``)."""

MLEARN_STRESS_KEY = "virial_stress_kbar_xx_yy_zz_xy_yz_xz"

QM9_TARGETS: Mapping[str, str] = MappingProxyType(
    {
        "U0": "InternalEnergy_0K_au",
        "U": "InternalEnergy_298K_au",
        "H": "Enthalphy_298K_au",  # sic, the key's spelling in the file
        "G": "GibbsFreeEnergy_298K_au",
    }
)

_RMD17_KEYS = ("nuclear_charges", "coords", "energies", "forces")
_QM9_KEYS = ("natoms", "offsets", "Z", "R_ang")


class DataKeyError(DataError, KeyError):
    """A key a reader needs is missing (prints its message without ``KeyError``'s quotes).

    A :class:`~allegro_jax.data.errors.DataError` (so a ``ValueError``) and a ``KeyError``.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _require_keys(path: str | os.PathLike, available: Iterable[str], needed: Iterable[str]):
    available = sorted(available)
    missing = [k for k in needed if k not in available]
    if missing:
        raise DataKeyError(f"{os.fspath(path)}: missing key(s) {missing}; the file has {available}")


def _check_finite(path: str | os.PathLike, name: str, values: np.ndarray) -> None:
    """Raise if any frame of ``values`` (frames along axis 0) holds NaN or inf."""
    values = np.asarray(values)
    bad = ~np.isfinite(values.reshape(values.shape[0], -1)).all(axis=1)
    if bad.any():
        frames = np.flatnonzero(bad)
        shown = ", ".join(str(int(f)) for f in frames[:10])
        more = f" and {len(frames) - 10} more" if len(frames) > 10 else ""
        raise DataError(f"{os.fspath(path)}: non-finite {name} in frame(s) {shown}{more}")


@contextlib.contextmanager
def _open_npz(path: str | os.PathLike) -> Iterator[Any]:
    """``np.load`` of an npz archive; an unreadable file becomes a :class:`DataFileError`.

    Reading its members inside the ``with`` block is covered too (a damaged member fails
    only when it is read).
    """
    where = os.fspath(path)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - numpy/zipfile raise many types
        raise DataFileError(_npz_problem(where, err)) from err
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DataFileError(
            f"{where}: this is a single .npy array, not an npz archive of named arrays; "
            "save the data with numpy.savez (rMD17: nuclear_charges, coords, energies, forces)"
        )
    try:
        with data:
            yield data
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001
        raise DataFileError(_npz_problem(where, err)) from err


def _npz_problem(where: str, err: Exception) -> str:
    if os.path.isfile(where) and os.path.getsize(where) == 0:
        what = "the file is empty (0 bytes)"
    elif "pickled" in str(err):
        what = "it is not an npz archive (it would need unpickling, which is never done)"
    else:
        what = f"it is truncated, damaged or not an npz archive ({type(err).__name__}: {err})"
    return (
        f"{where}: cannot read this npz file: {what}. Copy or download it again (rMD17: "
        "allegro_jax.data.datasets.download checks the SHA256), or regenerate it with numpy.savez."
    )


def _atomic_numbers(path: str | os.PathLike, key: str, values: np.ndarray) -> np.ndarray:
    try:
        return as_atomic_numbers(values)
    except ValueError as err:
        raise DataError(f"{os.fspath(path)}: {key}: {err}") from None


def _read_only(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array


# --- rMD17 ----------------------------------------------------------------------------------


def read_rmd17(path: str | os.PathLike) -> list[Structure]:
    """Read one rMD17 npz file (Christensen & von Lilienfeld 2020).

    Energies and forces are converted from kcal/mol and kcal/mol/Å to eV and eV/Å with
    :data:`KCAL_PER_MOL_TO_EV`. Molecules get a zero cell and ``pbc`` False.

    Args:
        path: an npz with ``nuclear_charges [n_atoms]``, ``coords [n_frames, n_atoms, 3]``,
            ``energies [n_frames]`` and ``forces [n_frames, n_atoms, 3]``.

    Returns:
        One structure per frame. ``info["index"]`` is the frame's index in the file and
        ``info["md17_index"]`` its index in the original MD17 trajectory (``old_indices``)
        when the file has it. The arrays are read-only views into one block per file.

    Raises:
        DataFileError: the file is empty, truncated or not an npz archive.
        DataKeyError: a key is missing.
        DataError: inconsistent shapes or non-finite values (naming the frames).
    """
    with _open_npz(path) as data:
        _require_keys(path, data.files, _RMD17_KEYS)
        numbers = _atomic_numbers(path, "nuclear_charges", data["nuclear_charges"])
        coords = np.asarray(data["coords"], dtype=np.float64)
        energies = np.asarray(data["energies"], dtype=np.float64)
        forces = np.asarray(data["forces"], dtype=np.float64)
        old = np.asarray(data["old_indices"]) if "old_indices" in data.files else None

    n_frames, n_atoms = coords.shape[0], numbers.shape[0]
    for name, arr, shape in (
        ("coords", coords, (n_frames, n_atoms, 3)),
        ("energies", energies, (n_frames,)),
        ("forces", forces, (n_frames, n_atoms, 3)),
    ):
        if arr.shape != shape:
            raise DataError(f"{os.fspath(path)}: {name} has shape {arr.shape}, expected {shape}")
    for name, arr in (("coords", coords), ("energies", energies), ("forces", forces)):
        _check_finite(path, name, arr)

    numbers = _read_only(numbers)
    coords = _read_only(coords)
    energies = energies * KCAL_PER_MOL_TO_EV
    forces = _read_only(forces * KCAL_PER_MOL_TO_EV)
    structures = []
    for f in range(n_frames):
        info: dict[str, Any] = {"index": f}
        if old is not None:
            info["md17_index"] = int(old[f])
        structures.append(
            Structure(
                numbers=numbers,
                positions=coords[f],
                energy=float(energies[f]),
                forces=forces[f],
                info=info,
            )
        )
    return structures


# --- QM9 ------------------------------------------------------------------------------------


class QM9Structures(Sequence[Structure]):
    """A lazy, indexable view of QM9 molecules: structures are built only when accessed.

    Integer indexing returns a :class:`Structure`; a slice or an integer array returns
    another (lazy) view of those molecules, so ``data[train_idx]`` is cheap.

    Attributes:
        energies: ``[n_molecules]`` target energies in eV (of this view).
        natoms: ``[n_molecules]`` atom counts (of this view).
        indices: ``[n_molecules]`` molecule indices in the file (of this view).
    """

    def __init__(
        self,
        numbers: np.ndarray,
        positions: np.ndarray,
        offsets: np.ndarray,
        energies: np.ndarray,
        indices: np.ndarray,
    ):
        """Wrap ragged arrays (all atoms of all molecules of the file) and a selection.

        Args:
            numbers: ``[n_atoms_total]`` atomic numbers.
            positions: ``[n_atoms_total, 3]`` positions in Å.
            offsets: ``[n_molecules_file + 1]`` start of each molecule in the atom arrays.
            energies: ``[n_molecules_file]`` energies in eV.
            indices: ``[n_molecules]`` the molecules of the file in this view.
        """
        self._numbers = numbers
        self._positions = positions
        self._offsets = offsets
        self._energies = energies
        self.indices = _read_only(np.asarray(indices, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def energies(self) -> np.ndarray:
        return self._energies[self.indices]

    @property
    def natoms(self) -> np.ndarray:
        return np.diff(self._offsets)[self.indices]

    def _structure(self, i: int) -> Structure:
        start, stop = self._offsets[i], self._offsets[i + 1]
        return Structure(
            numbers=self._numbers[start:stop],
            positions=self._positions[start:stop],
            energy=float(self._energies[i]),
            info={"index": int(i)},
        )

    @overload
    def __getitem__(self, item: int) -> Structure: ...

    @overload
    def __getitem__(self, item: slice | np.ndarray | Sequence[int]) -> QM9Structures: ...

    def __getitem__(self, item):
        if isinstance(item, int | np.integer):
            return self._structure(int(self.indices[item]))
        return QM9Structures(
            self._numbers, self._positions, self._offsets, self._energies, self.indices[item]
        )

    def __iter__(self) -> Iterator[Structure]:
        for i in self.indices:
            yield self._structure(int(i))


@overload
def read_qm9(
    path: str | os.PathLike, target: str = ..., *, lazy: Literal[False] = ...
) -> list[Structure]: ...


@overload
def read_qm9(
    path: str | os.PathLike, target: str = ..., *, lazy: Literal[True]
) -> QM9Structures: ...


def read_qm9(
    path: str | os.PathLike, target: str = "U0", *, lazy: bool = False
) -> list[Structure] | QM9Structures:
    """Read QM9 from the ragged npz built from qm9pack (energies only, no forces).

    Args:
        path: npz with ``natoms [n_mol]``, ``offsets [n_mol + 1]``, ``Z [n_atoms_total]``,
            ``R_ang [n_atoms_total, 3]`` and the target's energy key in Hartree.
        target: ``"U0"``, ``"U"``, ``"H"`` or ``"G"`` (see :data:`QM9_TARGETS`); converted to
            eV with :data:`HARTREE_TO_EV`.
        lazy: return a :class:`QM9Structures` view that builds each structure on access
            instead of a list of all 130,831 structures.

    Returns:
        The molecules with a zero cell, ``pbc`` False and ``info["index"]`` their index in
        the file. Arrays are read-only views into the file's ragged arrays.

    Raises:
        ValueError: unknown target.
        DataFileError: the file is empty, truncated or not an npz archive.
        DataError: inconsistent ragged arrays or non-finite values.
        DataKeyError: a key is missing.
    """
    if target not in QM9_TARGETS:
        raise ValueError(f"unknown QM9 target {target!r}; choose one of {list(QM9_TARGETS)}")
    energy_key = QM9_TARGETS[target]
    with _open_npz(path) as data:
        _require_keys(path, data.files, (*_QM9_KEYS, energy_key))
        natoms = np.asarray(data["natoms"], dtype=np.int64)
        offsets = np.asarray(data["offsets"], dtype=np.int64)
        numbers = _atomic_numbers(path, "Z", data["Z"])
        positions = np.asarray(data["R_ang"], dtype=np.float64)
        energies = np.asarray(data[energy_key], dtype=np.float64)

    n_mol = natoms.shape[0]
    where = os.fspath(path)
    if (
        offsets.shape != (n_mol + 1,)
        or offsets[0] != 0
        or not np.array_equal(np.diff(offsets), natoms)
        or offsets[-1] != numbers.shape[0]
        or positions.shape != (numbers.shape[0], 3)
        or energies.shape != (n_mol,)
    ):
        raise DataError(
            f"{where}: inconsistent ragged arrays (natoms {natoms.shape}, offsets "
            f"{offsets.shape}, Z {numbers.shape}, R_ang {positions.shape}, {energy_key} "
            f"{energies.shape}); expected offsets = [0, cumsum(natoms)]"
        )
    _check_finite(path, energy_key, energies)
    bad_atoms = ~np.isfinite(positions).all(axis=1)
    if bad_atoms.any():
        molecules = np.unique(np.searchsorted(offsets, np.flatnonzero(bad_atoms), "right") - 1)
        shown = ", ".join(str(int(m)) for m in molecules[:10])
        raise DataError(f"{where}: non-finite R_ang in molecule(s) {shown}")

    view = QM9Structures(
        _read_only(numbers),
        _read_only(positions),
        _read_only(offsets),
        _read_only(energies * HARTREE_TO_EV),
        np.arange(n_mol),
    )
    return view if lazy else list(view)


# --- ASE-readable files ---------------------------------------------------------------------


def _voigt_to_full(values: np.ndarray, order: str) -> np.ndarray:
    axes = {"x": 0, "y": 1, "z": 2}
    labels = order.split()
    pairs = {tuple(sorted(label)) for label in labels}
    valid = all(len(lb) == 2 and set(lb) <= set(axes) for lb in labels)
    if len(labels) != 6 or len(pairs) != 6 or not valid:
        raise ValueError(f"stress_voigt_order {order!r} must name the 6 components once each")
    full = np.empty((3, 3))
    for value, label in zip(values, labels, strict=True):
        a, b = axes[label[0]], axes[label[1]]
        full[a, b] = full[b, a] = value
    return full


def _source_indices(index: int | str | slice, n_read: int) -> list[int] | None:
    """Frame indices in the file for a non-negative ASE index, else None."""
    if isinstance(index, str):
        index = string2index(index)
    if isinstance(index, int):
        return [index] if index >= 0 else None
    start, step = index.start or 0, index.step or 1
    if start < 0 or step < 0:
        return None
    return [start + i * step for i in range(n_read)]


def _lookup(atoms, key: str, per_atom: bool) -> tuple[Any, bool]:
    """A label from ``atoms.arrays``/``atoms.info`` or else the calculator's results.

    Returns:
        The value (None if absent) and whether it came from the calculator.
    """
    own = atoms.arrays if per_atom else atoms.info
    if key in own:
        return own[key], False
    results = getattr(atoms.calc, "results", None) or {}
    if key in results:
        return results[key], True
    return None, False


def describe_frame_keys(path: str | os.PathLike, format: str | None = None) -> str:
    """The label keys of a file's first frame, for error messages.

    Returns:
        e.g. ``"the first frame has the keys ['dft_forces', 'energy', ...]; per-atom
        [n_atoms, 3] arrays: ['dft_forces']"``.
    """
    try:
        atoms = ase.io.read(path, index=0, format=format)
    except Exception as err:  # noqa: BLE001 - only for a message
        return f"its first frame cannot be read ({type(err).__name__})"
    vectors = sorted(
        k
        for k, v in atoms.arrays.items()
        if k not in ("positions", "numbers") and np.shape(v) == (len(atoms), 3)
    )
    vectors += sorted(
        k
        for k, v in (getattr(atoms.calc, "results", None) or {}).items()
        if np.shape(v) == (len(atoms), 3)
    )
    return (
        f"the first frame has the keys {_available_keys(atoms)}; per-atom [n_atoms, 3] "
        f"arrays: {vectors}"
    )


def _available_keys(atoms) -> list[str]:
    keys = set(atoms.info) | set(atoms.arrays)
    if atoms.calc is not None:
        keys |= set(getattr(atoms.calc, "results", {}))
    return sorted(keys)


def read_ase(
    path: str | os.PathLike,
    *,
    index: int | str | slice = ":",
    energy_key: str | None = "energy",
    forces_key: str | None = "forces",
    stress_key: str | None = "stress",
    required: Sequence[str] = ("energy", "forces"),
    stress_unit: Literal["eV/A^3", "GPa", "kbar"] = "eV/A^3",
    stress_sign: Literal[1, -1] = 1,
    stress_voigt_order: str = ASE_VOIGT_ORDER,
    format: str | None = None,
) -> list[Structure]:
    """Read any ASE-readable file (extxyz, xyz, traj, ...).

    Labels are looked up by key in ``atoms.info`` (energy, stress) or ``atoms.arrays``
    (forces), then in the results of the attached calculator (where ASE's extxyz reader
    puts ``energy``, ``forces`` and ``stress``). A non-periodic frame (``pbc`` all False)
    gets a zero cell, as in :class:`Structure`; the lattice vectors along periodic
    directions must be non-zero and linearly independent.

    Args:
        path: the file.
        index: which frames, as for ``ase.io.read`` (``":"``, ``"10:20"``, ``5``, a slice).
        energy_key: key of the total energy in eV, or None not to read it.
        forces_key: key of the forces in eV/Å, or None.
        stress_key: key of the stress (6 Voigt components, 9 or ``[3, 3]``), or None.
        required: which of ``"energy"``, ``"forces"``, ``"stress"`` every frame must have;
            the others are read where present and left None elsewhere.
        stress_unit: unit of the stored stress, one of :data:`STRESS_UNITS`.
        stress_sign: +1 if stored as ``(1/V) dE/dε`` (ASE, positive under tension), -1 if
            stored as a pressure-like tensor positive under compression (VASP's ``in kB``
            line, LAMMPS ``pxx``), which this reader flips.
        stress_voigt_order: order of a 6-component stress, e.g. ``"xx yy zz xy yz xz"``;
            ASE's order by default. A stress found in the calculator's results (where ASE's
            extxyz reader puts a ``stress`` key) is always in ASE's order.
        format: ASE format name when the suffix is not enough.

    Returns:
        One structure per frame, labels in eV, eV/Å, eV/Å^3 (``(1/V) dE/dε``). ``info``
        holds the frame's ``atoms.info`` entries other than the labels, and ``index``: the
        frame's index in the file (or in the selection, for negative indices).

    Raises:
        DataFileError: ASE cannot read the file (empty, truncated, a wrong atom count,
            undecodable bytes; for (ext)xyz the message names the frame and the line, see
            :func:`locate_xyz_problem`).
        DataKeyError: a required label is missing (naming file, frame, key and the keys
            the frame has).
        DataError: shapes, cells or non-finite values (naming the frame).
        ValueError: bad options.
    """
    unknown = set(required) - {"energy", "forces", "stress"}
    if unknown:
        raise ValueError(f"required may only name energy, forces, stress; got {sorted(unknown)}")
    if stress_unit not in STRESS_UNITS:
        raise ValueError(f"stress_unit {stress_unit!r} not in {list(STRESS_UNITS)}")
    if stress_sign not in (1, -1):
        raise ValueError(f"stress_sign must be +1 or -1, got {stress_sign!r}")
    stress_factor = stress_sign * STRESS_UNITS[stress_unit]
    keys = {"energy": energy_key, "forces": forces_key, "stress": stress_key}
    for name in required:
        if keys[name] is None:
            raise ValueError(f"{name} is required but {name}_key is None")
    _voigt_to_full(np.zeros(6), stress_voigt_order)  # validate the order up front

    where = os.fspath(path)
    if os.path.isfile(where) and os.path.getsize(where) == 0:
        raise DataFileError(f"{where}: the file is empty (0 bytes); copy or write it again")
    try:
        frames = ase.io.read(path, index=index, format=format)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - ASE's readers raise many types
        raise DataFileError(_ase_problem(where, format, err)) from err
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise DataFileError(f"{where}: no frames (selection {index!r}); check the file and index")
    ids = _source_indices(index, len(frames)) or list(range(len(frames)))

    structures = []
    for frame_id, atoms in zip(ids, frames, strict=True):
        labels: dict[str, Any] = {}
        stress_from_calc = False
        for name, key in keys.items():
            value, from_calc = (
                (None, False) if key is None else _lookup(atoms, key, name == "forces")
            )
            if name == "stress":
                stress_from_calc = from_calc
            if value is None and name in required:
                raise DataKeyError(
                    f"{where}: frame {frame_id} has no {name} under key {key!r}; "
                    f"its keys are {_available_keys(atoms)}"
                )
            labels[name] = value

        n_atoms = len(atoms)
        energy = labels["energy"]
        if energy is not None:
            energy = np.asarray(energy, dtype=np.float64)
            if energy.size != 1:
                raise DataError(f"{where}: frame {frame_id}: energy has shape {energy.shape}")
            energy = float(energy.reshape(()))
        forces = labels["forces"]
        if forces is not None:
            forces = np.array(forces, dtype=np.float64)
            if forces.shape != (n_atoms, 3):
                raise DataFileError(
                    f"{where}: frame {frame_id}: forces have shape {forces.shape}, "
                    f"expected {(n_atoms, 3)}"
                )
        stress = labels["stress"]
        if stress is not None:
            raw = np.asarray(stress, dtype=np.float64).reshape(-1)
            if raw.size == 6:
                order = ASE_VOIGT_ORDER if stress_from_calc else stress_voigt_order
                stress = _voigt_to_full(raw, order)
            elif raw.size == 9:
                stress = raw.reshape(3, 3).copy()
            else:
                raise DataError(
                    f"{where}: frame {frame_id}: stress has {raw.size} components, "
                    "expected 6 (Voigt) or 9"
                )
            stress = stress * stress_factor
        for name, value in (
            ("positions", atoms.positions),
            ("energy", energy),
            ("forces", forces),
            ("stress", stress),
        ):
            if value is not None and not np.isfinite(value).all():
                raise DataError(f"{where}: non-finite {name} in frame {frame_id}")

        pbc = np.asarray(atoms.pbc, dtype=bool)
        cell = np.array(atoms.cell, dtype=np.float64)
        if not pbc.any():
            cell = np.zeros((3, 3))
        elif np.linalg.matrix_rank(cell[pbc], tol=1e-8) < pbc.sum():
            raise DataError(
                f"{where}: frame {frame_id} is periodic along {pbc.tolist()} but those "
                f"lattice vectors are zero or linearly dependent: {cell.tolist()}"
            )

        used = {k for k in (energy_key, stress_key) if k is not None}
        info = {k: v for k, v in atoms.info.items() if k not in used}
        info["index"] = frame_id
        structures.append(
            Structure(
                numbers=atoms.numbers.copy(),
                positions=atoms.positions.copy(),
                cell=cell,
                pbc=pbc,
                energy=energy,
                forces=forces,
                stress=stress,
                info=info,
            )
        )
    return structures


def _ase_problem(where: str, format: str | None, err: Exception) -> str:
    """A one-paragraph description of why ASE could not read ``where``."""
    suffix = Path(where).suffix.lower()
    located = None
    if format in ("xyz", "extxyz") or (format is None and suffix in (".xyz", ".extxyz")):
        located = locate_xyz_problem(where)
    ase_error = f"{type(err).__name__}: {str(err).strip()[:300]}"
    if located is not None:
        return (
            f"{where}: {located}. Fix or remove that frame (an xyz frame is a line with the "
            "number of atoms N, a comment line (extxyz: its properties), then N atom lines). "
            f"(ASE: {ase_error})"
        )
    frame = _first_unreadable_frame(where, format)
    at = "" if frame is None else f" at frame {frame} (the first one it cannot parse)"
    return (
        f"{where}: ASE cannot read this file{at}: {ase_error}. Check that the file is complete "
        "and in the format its suffix says (or give the format explicitly)."
    )


def _first_unreadable_frame(where: str, format: str | None) -> int | None:
    n_read = 0
    try:
        for _ in ase.io.iread(where, index=":", format=format):
            n_read += 1
    except Exception:  # noqa: BLE001 - the same failure, now with a frame count
        return n_read
    return None


def locate_xyz_problem(path: str | os.PathLike) -> str | None:
    """The first structural problem of an (ext)xyz file, naming its frame and line.

    Walks the file frame by frame (atom count line, comment line, that many atom lines) and
    checks that every line is UTF-8 text, every count an integer and every atom line of a
    frame has as many columns as the frame's first one (a wrong atom count shows up as the
    next frame's count or comment line read as an atom). ASE's own errors say neither.

    Returns:
        The problem (e.g. ``"frame 2 (atom count 4 at line 11): line 14, its atom 3, has
        1 column(s) where the frame's first atom line has 7: the atom count 4 is probably
        wrong"``), or None if none was found.
    """
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()

    def text(k: int, frame: int) -> str:
        try:
            return lines[k].decode("utf-8")
        except UnicodeDecodeError as err:
            raise _XyzProblem(
                f"frame {frame}: line {k + 1} is not UTF-8 text (byte 0x{lines[k][err.start]:02x} "
                f"at column {err.start + 1}); the file is damaged or not an xyz file"
            ) from None

    try:
        k, frame, previous = 0, 0, ""
        while k < len(lines):
            header = text(k, frame)
            if not header.strip():
                if all(not line.strip() for line in lines[k:]):
                    return None  # trailing blank lines
                raise _XyzProblem(f"line {k + 1} is blank where frame {frame} should start")
            try:
                n_atoms = int(header.split()[0])
            except ValueError:
                raise _XyzProblem(
                    f"frame {frame} should start at line {k + 1} with its number of atoms, but "
                    f"the line reads {header.strip()[:60]!r}{previous}"
                ) from None
            where = f"frame {frame} (atom count {n_atoms} at line {k + 1})"
            previous = f" (is the atom count {n_atoms} of frame {frame} at line {k + 1} wrong?)"
            if k + 1 + n_atoms >= len(lines):
                raise _XyzProblem(
                    f"{where}: the file ends after {max(len(lines) - k - 2, 0)} atom line(s); "
                    "it is truncated or the atom count is wrong"
                )
            text(k + 1, frame)
            columns = None
            for a in range(n_atoms):
                line = text(k + 2 + a, frame)
                n_columns = len(line.split())
                if columns is None:
                    columns = n_columns
                elif n_columns != columns:
                    raise _XyzProblem(
                        f"{where}: line {k + 3 + a}, its atom {a}, has {n_columns} column(s) "
                        f"where the frame's first atom line has {columns}: the atom count "
                        f"{n_atoms} is probably wrong (or the line is cut)"
                    )
            k += n_atoms + 2
            frame += 1
    except _XyzProblem as problem:
        return str(problem)
    return None


class _XyzProblem(Exception):
    pass


_ISOLATED_ATOM_FILES = ("isolated_atoms.xyz", "iso_atoms.xyz")  # acac, 3bpa: energies only
_MLEARN_FILE = re.compile(r"^(Li|Mo|Cu|Ni|Si|Ge)_(train|test)\.extxyz$")


def recommended_read_kwargs(path: str | os.PathLike) -> dict[str, Any]:
    """Options :func:`read_ase` needs for a shipped data set, recognised by file name.

    mlearn files (``{Li,Mo,Cu,Ni,Si,Ge}_{train,test}.extxyz``) store the stress under
    :data:`MLEARN_STRESS_KEY` in kbar with VASP's sign; for Mo the last two Voigt
    columns are xz, yz (see the module docstring for how this was established). The
    isolated-atom files of acac and 3bpa (``isolated_atoms.xyz``, ``iso_atoms.xyz``) have
    energies only. Every other shipped file reads with the defaults (an empty dict).

    Args:
        path: the file.

    Returns:
        Keyword arguments for :func:`read_ase`.
    """
    name = Path(path).name
    if name in _ISOLATED_ATOM_FILES:
        return {"required": ("energy",)}
    match = _MLEARN_FILE.match(name)
    if match is None:
        return {}
    return {
        "stress_key": MLEARN_STRESS_KEY,
        "stress_unit": "kbar",
        "stress_sign": -1,
        "stress_voigt_order": "xx yy zz xy xz yz" if match[1] == "Mo" else "xx yy zz xy yz xz",
    }


def read_dataset(path: str | os.PathLike, **kwargs: Any) -> list[Structure] | QM9Structures:
    """Read a data file, choosing the reader from its type and name.

    ``.npz`` files are recognised by their keys (rMD17: ``nuclear_charges``/``coords``;
    QM9: ``natoms``/``offsets``/``Z``/``R_ang``); anything else goes to :func:`read_ase`
    with :func:`recommended_read_kwargs` for the file, overridden by ``kwargs``.

    Args:
        path: the file.
        **kwargs: passed to the reader (e.g. ``target``/``lazy`` for QM9, ``index`` for ASE).

    Returns:
        The structures.

    Raises:
        DataFileError: an unreadable file, or an npz that is neither rMD17 nor QM9.
        DataError: bad content (see the readers).
    """
    path = Path(path)
    if path.suffix == ".npz":
        with _open_npz(path) as data:
            files = set(data.files)
        if {"nuclear_charges", "coords"} <= files:
            return read_rmd17(path, **kwargs)
        if {"natoms", "offsets"} <= files:
            return read_qm9(path, **kwargs)
        raise DataError(
            f"{path}: npz is neither rMD17 (nuclear_charges, coords, ...) nor QM9 (natoms, "
            f"offsets, Z, R_ang, ...); it has {sorted(files)}"
        )
    return read_ase(path, **{**recommended_read_kwargs(path), **kwargs})


# --- downloads ------------------------------------------------------------------------------

RMD17_MOLECULES = (
    "aspirin",
    "azobenzene",
    "benzene",
    "ethanol",
    "malonaldehyde",
    "naphthalene",
    "paracetamol",
    "salicylic",
    "toluene",
    "uracil",
)
RMD17_COMMIT = "4f6bb0a186822c90d47cd98b7a27991fe0b3173b"
RMD17_URL = "https://raw.githubusercontent.com/andersx/rmd17-npz/{commit}/rmd17-npz/{filename}"
RMD17_FIGSHARE_URL = "https://figshare.com/ndownloader/files/23950376"
"""The upstream tarball (figshare article 12672038, ``rmd17.tar.bz2``: all 100k frames per
molecule and the five index splits); no checksum is registered, see :func:`download`."""

_RMD17_SHA256SUMS = """
a3c3b61e782d01e6dd649a126004903f7873e8e7ee5034135abfdb8873be711d  rmd17_aspirin_test_01.npz
d460f0e43a1a9411b55cdcd9cdbeb9466ae62851ac91392516ab88e4ebc68143  rmd17_aspirin_train_01.npz
e83c87fe541a95e7349684e47294821ada708a780b59c469d3792588213cfc05  rmd17_azobenzene_test_01.npz
7a2ce543773f6cb7a2cccecbc37fd479781e27ec2d0bb4e5f9ecff8e404e5857  rmd17_azobenzene_train_01.npz
4aad4aa2f5ae6aa78d2d9f5da7cb285c97864cfbdf054b67de12a1429b249534  rmd17_benzene_test_01.npz
6e69deb5dc8663c2d2461cc50e522c74742acea7b4185da348fc08585a15cdc7  rmd17_benzene_train_01.npz
c3594a0f93d5992e02f9eb671392fb2e5021b3fa4f902417886966d1e4f64e1e  rmd17_ethanol_test_01.npz
096946747b8d9dcfa042b44f8debbd3da387dfe1586b659e3be789cc4927316a  rmd17_ethanol_train_01.npz
147404574d4fe3204dea7eb3799426d264e36b7900012f27fd2d26a26832fdaf  rmd17_malonaldehyde_test_01.npz
95723385cdfd7f8446a84cdff607f14901e4c2b3949db7a965147dc5098d8ee1  rmd17_malonaldehyde_train_01.npz
80a19bca6aaa5cdf241007d6a7332e7b96a8e6ef362c1badcdb86a574ac3fe06  rmd17_naphthalene_test_01.npz
940f41110785fb0d3fa5feac68800cf4c68bd05fd55d563d3adacf5247d7688a  rmd17_naphthalene_train_01.npz
99e09ff10b54c55830c011c0959b643bede0512a89ae5b5b9a11e8abea9b3eaa  rmd17_paracetamol_test_01.npz
819513d42011a63773ff1baf61b06f9f0884370fbdb6539d6f11fc6cb580a0ba  rmd17_paracetamol_train_01.npz
4a03f66c719d7684f39620b2bae6842613482a86cdd4e6f95115ae4d37f03cc0  rmd17_salicylic_test_01.npz
9f96d79ec7a66dec666dbba60307c083ede80ecc919e0c9513ad9accfe43b5c0  rmd17_salicylic_train_01.npz
8a658b9bf1b7a5c1abaa03846ee6302725e02bdcd2ab720ef94da0be55625faa  rmd17_toluene_test_01.npz
24d0642f897a1da1fdc4dbdd0a9c2a7f6082dd88e02954b12896a45a7a5fbac7  rmd17_toluene_train_01.npz
ceda757f7670d97080ec3c28dfb559aeb8ca54f49e7f0da0682fa1eb5ac00907  rmd17_uracil_test_01.npz
e1d450430362e3bebdeea96b24501f5e56a5a8af1eb02d50cb763f48b51523cf  rmd17_uracil_train_01.npz
"""

RMD17_SHA256: Mapping[str, str] = MappingProxyType(
    {
        name: digest
        for digest, name in (line.split() for line in _RMD17_SHA256SUMS.splitlines() if line)
    }
)
"""SHA256 of the split-01 files of andersx/rmd17-npz at :data:`RMD17_COMMIT`."""

_RMD17_FILE = re.compile(r"^rmd17_([a-z]+)_(train|test)_(0[1-5])$")


class ChecksumError(ValueError):
    """A file's SHA256 differs from the registered one."""


def sha256sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """The hex SHA256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: str | os.PathLike, sha256: str) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has the given SHA256."""
    actual = sha256sum(path)
    if actual != sha256.lower():
        raise ChecksumError(
            f"{os.fspath(path)}: SHA256 {actual} does not match the expected {sha256}; "
            "the file is corrupt, truncated or a different version: delete it and download again"
        )


def _resolve(name: str) -> list[tuple[str, str, str | None]]:
    """``(filename, url, sha256 or None)`` for a download name."""
    if name == "rmd17":
        names = [f"rmd17_{m}_{s}_01" for m in RMD17_MOLECULES for s in ("train", "test")]
    elif name == "rmd17_figshare":
        return [("rmd17.tar.bz2", RMD17_FIGSHARE_URL, None)]
    elif name.startswith("rmd17_") and name[6:] in RMD17_MOLECULES:
        names = [f"{name}_{s}_01" for s in ("train", "test")]
    else:
        names = [name.removesuffix(".npz")]
    out = []
    for stem in names:
        match = _RMD17_FILE.match(stem)
        if match is None or match[1] not in RMD17_MOLECULES:
            raise ValueError(
                f"unknown download {name!r}: use 'rmd17', 'rmd17_<molecule>', "
                "'rmd17_<molecule>_<train|test>_<01-05>' or 'rmd17_figshare'; molecules: "
                f"{', '.join(RMD17_MOLECULES)}"
            )
        filename = f"{stem}.npz"
        url = RMD17_URL.format(commit=RMD17_COMMIT, filename=filename)
        out.append((filename, url, RMD17_SHA256.get(filename)))
    return out


def _urllib_fetch(url: str, dest: Path) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "allegro-jax"})
    with urllib.request.urlopen(request, timeout=120) as response, open(dest, "wb") as fh:
        shutil.copyfileobj(response, fh)


def download(
    name: str,
    dest_dir: str | os.PathLike,
    *,
    verify: bool = True,
    allow_unverified: bool = False,
    fetch: Callable[[str, Path], None] | None = None,
) -> list[Path]:
    """Download a data set into ``dest_dir`` and check it against registered SHA256 sums.

    rMD17 comes as the pre-split npz files of GitHub andersx/rmd17-npz (the data set's
    author), pinned to commit :data:`RMD17_COMMIT`. Checksums are registered for split 01
    (:data:`RMD17_SHA256`); other splits and the figshare tarball have none and need
    ``allow_unverified=True``.

    A file already in ``dest_dir`` is not downloaded again; with ``verify`` it is checked
    first. New downloads go to a temporary file that is checked before it is moved into
    place, so a failed download never leaves a file under the final name.

    Args:
        name: ``"rmd17"`` (all split-01 files), ``"rmd17_<molecule>"`` (its split-01 train and
            test files), ``"rmd17_<molecule>_<train|test>_<01-05>"`` or ``"rmd17_figshare"``.
        dest_dir: target folder (created if needed).
        verify: check existing and new files against their checksums.
        allow_unverified: permit files without a registered checksum.
        fetch: ``fetch(url, dest_path)`` writes the url's content to the path; urllib by
            default (pass another for mirrors, proxies or tests).

    Returns:
        The paths of the files.

    Raises:
        ValueError: unknown name, or no checksum and ``allow_unverified`` is False.
        ChecksumError: a file's checksum does not match.
    """
    fetch = _urllib_fetch if fetch is None else fetch
    targets = _resolve(name)
    for filename, _, sha in targets:
        if sha is None and not allow_unverified:
            raise ValueError(
                f"{filename} has no registered SHA256; pass allow_unverified=True to "
                "download it without a check"
            )
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for filename, url, sha in targets:
        path = dest_dir / filename
        if path.exists():
            if verify and sha is not None:
                verify_file(path, sha)
        else:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest_dir)
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                fetch(url, tmp)
                if verify and sha is not None:
                    verify_file(tmp, sha)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        paths.append(path)
    return paths


# --- splits ---------------------------------------------------------------------------------


def random_split(n: int, sizes: Sequence[int], seed: int) -> tuple[np.ndarray, ...]:
    """Disjoint random subsets of ``range(n)`` with the given sizes, reproducible by seed.

    The subsets are consecutive blocks of one permutation drawn with
    ``np.random.default_rng(seed)``, each kept in permutation order (so its first k
    entries are themselves a random subset). Sizes may sum to less than ``n``.

    Args:
        n: number of items.
        sizes: size of each subset, e.g. ``(950, 50)``.
        seed: the seed.

    Returns:
        One int64 index array per size.

    Raises:
        ValueError: a negative size, or sizes summing to more than ``n``.
    """
    sizes = [int(s) for s in sizes]
    if any(s < 0 for s in sizes):
        raise ValueError(f"split sizes must be non-negative, got {sizes}")
    if sum(sizes) > n:
        raise ValueError(f"split sizes {sizes} sum to {sum(sizes)} > n = {n}")
    perm = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum([0, *sizes])
    return tuple(perm[a:b].astype(np.int64) for a, b in zip(bounds[:-1], bounds[1:], strict=True))


def stratified_split(
    groups: Sequence[Any], n_val: int, seed: int, *, keep_one: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """A validation subset of ``n_val`` items drawn group by group, the rest for training.

    Each group (items with equal ``groups[i]``; ``None`` is a group too) gets validation
    items in proportion to its size (the rounded-down quota, then one more each for the
    groups furthest below their quota, larger groups and earlier ones first on ties), but
    at least one for every group that can spare one when
    ``n_val`` reaches their number: a kind of frame the data holds few of (relaxed
    surfaces among hot AIMD cells, say) is then in the validation set at all, where a
    plain random draw of 20 in 200 often misses it. With ``keep_one`` (validation drawn
    from the training file) a group never gives all its items, so every kind stays
    trainable; a group of one gives none. Which items a group gives is a seeded random
    draw (``np.random.default_rng(seed)``), so the split is reproducible.

    Args:
        groups: one hashable label per item (e.g. each frame's ``config_type``).
        n_val: number of validation items.
        seed: the seed.
        keep_one: leave at least one item of every group out of the validation set.

    Returns:
        ``(train, val)`` int64 index arrays; ``train`` holds every item not in ``val``, in
        a seeded random order.

    Raises:
        ValueError: ``n_val`` negative or more than the groups can give.
    """
    n = len(groups)
    order: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        order.setdefault(g, []).append(i)
    labels = list(order)
    sizes = np.array([len(order[g]) for g in labels])
    cap = sizes - 1 if keep_one else sizes
    if n_val < 0 or n_val > cap.sum():
        raise ValueError(
            f"n_val = {n_val}: the {len(labels)} groups of {n} items can give 0 to "
            f"{int(cap.sum())} validation items"
            + (" (each keeps one for training)" if keep_one else "")
        )
    eligible = cap > 0
    least = (eligible & (n_val >= eligible.sum())).astype(np.int64)  # one each, if n_val allows
    quota = n_val * sizes / n
    take = np.minimum(np.maximum(np.floor(quota).astype(np.int64), least), cap)
    while take.sum() > n_val:  # the ones pushed the total over: trim the most over-served
        k = max(np.flatnonzero(take > least), key=lambda k: (take[k] - quota[k], sizes[k]))
        take[k] -= 1
    rank = sorted(range(len(labels)), key=lambda k: (take[k] - quota[k], -sizes[k], k))
    for k in itertools.cycle(rank):  # largest remainders first, within each group's capacity
        if take.sum() == n_val:
            break
        if take[k] < cap[k]:
            take[k] += 1
    rng = np.random.default_rng(seed)
    val: list[int] = []
    train: list[int] = []
    for k, g in enumerate(labels):
        members = np.asarray(order[g])[rng.permutation(sizes[k])]
        val.extend(members[: take[k]])
        train.extend(members[take[k] :])
    train_idx = np.asarray(train, dtype=np.int64)[rng.permutation(len(train))]
    return train_idx, np.asarray(val, dtype=np.int64)
