"""Training-set statistics: energy shifts, force scales and the average number of neighbours.

These set the model's per-type energy shifts ``μ_t``, scales ``σ_t`` and the edge-sum
normalisation ``N_avg`` (spec: ``E_i ← σ_t·E_i + μ_t``, ``env_i = N_avg^(-1/2) Σ_k ...``), so
compute them on the training split only.

Per-type energy shifts solve the least-squares problem ``counts @ μ ≈ E`` over frames,
with ``counts[f, t]`` the number of atoms of type t in frame f. When ``counts`` is rank
deficient (a single-molecule data set such as rMD17, where every frame has the same
composition, or types that never occur) the solution is not unique. We write
``μ = ē + δ``, with ``ē`` the mean per-atom energy (nequip's ``per_atom_energy_mean``,
the reference's default shift), and take the minimum-norm least-squares ``δ``. The result
is always a least-squares solution; it is the unique one when ``counts`` has full rank,
and it is exactly ``ē`` for every type when all frames share one composition (then the
right-hand side ``E - N ē`` is orthogonal to ``counts``). Absent types get ``ē``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from ase.data import atomic_numbers

from allegro_jax.data.graph import Structure
from allegro_jax.data.neighborlist import neighbor_list
from allegro_jax.data.validate import frame_context

NeighborListFn = Callable[
    [np.ndarray, np.ndarray, np.ndarray, float], tuple[np.ndarray, np.ndarray, np.ndarray]
]
"""``neighbor_list(positions, cell, pbc, r_max) -> (centers, neighbors, shifts)``."""

_RCOND = 1e-10  # relative singular-value cut-off for the composition matrix (integer counts)


def type_numbers(type_names: Sequence[str]) -> np.ndarray:
    """Atomic numbers of chemical-symbol type names, ``[n_types]``.

    Raises:
        ValueError: a name that is not a chemical symbol, or a repeated element.
    """
    unknown = [name for name in type_names if name not in atomic_numbers]
    if unknown:
        raise ValueError(f"type names {unknown} are not chemical symbols")
    numbers = np.array([atomic_numbers[name] for name in type_names], dtype=np.int64)
    if len(set(numbers.tolist())) != len(numbers):
        raise ValueError(f"type names {list(type_names)} repeat an element")
    return numbers


def atom_types(numbers: np.ndarray, z_of_type: np.ndarray) -> np.ndarray:
    """Type index of each atom, ``[n_atoms]``, given the types' atomic numbers.

    Raises:
        ValueError: an atomic number that is not among the types.
    """
    numbers = np.asarray(numbers)
    order = np.argsort(z_of_type)
    sorted_z = z_of_type[order]
    pos = np.clip(np.searchsorted(sorted_z, numbers), 0, len(sorted_z) - 1)
    bad = sorted_z[pos] != numbers
    if bad.any():
        raise ValueError(
            f"atomic numbers {sorted(set(numbers[bad].tolist()))} are not among the types "
            f"(atomic numbers {z_of_type.tolist()})"
        )
    return order[pos]


def per_atom_energy_mean(energies: np.ndarray, n_atoms: np.ndarray) -> float:
    """Mean over frames of ``E_f / N_f`` (nequip's ``per_atom_energy_mean``)."""
    return float(np.mean(np.asarray(energies, np.float64) / np.asarray(n_atoms)))


def fit_per_type_energy_shifts(counts: np.ndarray, energies: np.ndarray) -> tuple[np.ndarray, int]:
    """Least-squares per-type energy shifts, ``counts @ shifts ≈ energies``.

    Rank-deficient problems get the least-squares solution closest (in the 2-norm) to the
    mean per-atom energy for every type; see the module docstring.

    Args:
        counts: ``[n_frames, n_types]`` number of atoms of each type per frame.
        energies: ``[n_frames]`` total energies.

    Returns:
        ``shifts [n_types]`` and the rank of ``counts``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    energies = np.asarray(energies, dtype=np.float64)
    n_atoms = counts.sum(axis=1)
    mean = per_atom_energy_mean(energies, n_atoms)
    delta, _, rank, _ = np.linalg.lstsq(counts, energies - n_atoms * mean, rcond=_RCOND)
    return mean + delta, int(rank)


def neighbor_counts(
    structure: Structure, r_max: float, neighbor_list_fn: NeighborListFn | None = None
) -> np.ndarray:
    """Number of edges with each atom as centre (all ordered pairs within ``r_max``).

    Args:
        structure: the structure.
        r_max: the cutoff radius in Å.
        neighbor_list_fn: defaults to :func:`allegro_jax.data.neighborlist.neighbor_list`.

    Returns:
        ``[n_atoms]`` int counts.
    """
    if neighbor_list_fn is None:
        neighbor_list_fn = neighbor_list
    centers, _, _ = neighbor_list_fn(structure.positions, structure.cell, structure.pbc, r_max)
    return np.bincount(np.asarray(centers, dtype=np.int64), minlength=structure.n_atoms)


@dataclasses.dataclass(frozen=True)
class DatasetStatistics:
    """Statistics of a training set (plain Python values, JSON-serialisable).

    Per-type tuples follow ``type_names``; a per-type entry is None where the type has no
    atoms (or no labelled atoms). Energy fields are None when no frame has an energy,
    force fields when none has forces.

    Attributes:
        type_names: chemical symbols of the model's types.
        r_max: cutoff used for the neighbour statistics, Å.
        n_structures: number of structures.
        n_atoms: total number of atoms.
        per_type_n_atoms: atoms of each type.
        avg_num_neighbors: mean over atoms of the number of edges with the atom as centre.
        per_type_avg_num_neighbors: the same mean over the atoms of each type.
        per_atom_energy_mean: mean over frames of ``E/N``, eV.
        per_atom_energy_std: standard deviation over frames of ``E/N``, eV.
        per_type_energy_shifts: least-squares shifts ``μ_t``, eV (module docstring).
        energy_shifts_rank: rank of the composition matrix; below the number of types
            present means the fit was underdetermined (see the module docstring).
        per_atom_energy_residual_rms: RMS over frames of ``(E - counts @ μ)/N``, eV.
        forces_rms: RMS of all force components, eV/Å.
        per_type_forces_rms: RMS of the force components of each type's atoms, eV/Å.
    """

    type_names: tuple[str, ...]
    r_max: float
    n_structures: int
    n_atoms: int
    per_type_n_atoms: tuple[int, ...]
    avg_num_neighbors: float
    per_type_avg_num_neighbors: tuple[float | None, ...]
    per_atom_energy_mean: float | None = None
    per_atom_energy_std: float | None = None
    per_type_energy_shifts: tuple[float, ...] | None = None
    energy_shifts_rank: int | None = None
    per_atom_energy_residual_rms: float | None = None
    forces_rms: float | None = None
    per_type_forces_rms: tuple[float | None, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict of JSON types (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    def to_json(self, **kwargs: Any) -> str:
        """JSON text; ``kwargs`` go to :func:`json.dumps` (e.g. ``indent=2``)."""
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetStatistics:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @classmethod
    def from_json(cls, text: str) -> DatasetStatistics:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))


def _per_type(numerator: np.ndarray, denominator: np.ndarray) -> tuple[float | None, ...]:
    return tuple(
        float(n / d) if d > 0 else None for n, d in zip(numerator, denominator, strict=True)
    )


def compute_statistics(
    structures: Iterable[Structure],
    type_names: Sequence[str],
    r_max: float,
    *,
    neighbor_list_fn: NeighborListFn | None = None,
) -> DatasetStatistics:
    """Statistics of a training set in one pass over its structures.

    Args:
        structures: the training structures (a list or a lazy sequence).
        type_names: chemical symbols of the model's types, in type-index order.
        r_max: cutoff radius for the neighbour statistics, Å.
        neighbor_list_fn: defaults to :func:`allegro_jax.data.neighborlist.neighbor_list`.

    Returns:
        The statistics.

    Raises:
        ValueError: no structures, or an element outside ``type_names``.
    """
    z_of_type = type_numbers(type_names)
    n_types = len(z_of_type)
    counts_rows, energies, energy_counts = [], [], []
    n_atoms_type = np.zeros(n_types, dtype=np.int64)
    neighbors_type = np.zeros(n_types, dtype=np.int64)
    force_sq_type = np.zeros(n_types)  # sum of squared components
    force_atoms_type = np.zeros(n_types, dtype=np.int64)  # atoms with forces
    for position, structure in enumerate(structures):
        frame = structure.info.get("index") if isinstance(structure.info, dict) else None
        with frame_context(position, frame=frame):
            types = atom_types(structure.numbers, z_of_type)  # [n_atoms]
            nbrs = neighbor_counts(structure, r_max, neighbor_list_fn)  # [n_atoms]
        row = np.bincount(types, minlength=n_types)  # [n_types]
        counts_rows.append(row)
        n_atoms_type += row
        neighbors_type += np.bincount(types, weights=nbrs, minlength=n_types).astype(np.int64)
        if structure.energy is not None:
            energies.append(structure.energy)
            energy_counts.append(row)
        if structure.forces is not None:
            f_sq = np.sum(np.asarray(structure.forces) ** 2, axis=1)  # [n_atoms]
            force_sq_type += np.bincount(types, weights=f_sq, minlength=n_types)
            force_atoms_type += row
    if not counts_rows:
        raise ValueError("compute_statistics needs at least one structure")

    n_atoms = int(n_atoms_type.sum())
    stats: dict[str, Any] = {
        "type_names": tuple(type_names),
        "r_max": float(r_max),
        "n_structures": len(counts_rows),
        "n_atoms": n_atoms,
        "per_type_n_atoms": tuple(int(n) for n in n_atoms_type),
        "avg_num_neighbors": float(neighbors_type.sum() / max(n_atoms, 1)),
        "per_type_avg_num_neighbors": _per_type(neighbors_type, n_atoms_type),
    }
    if energies:
        e = np.asarray(energies, dtype=np.float64)  # [n_frames]
        counts = np.stack(energy_counts)  # [n_frames, n_types]
        n = counts.sum(axis=1)
        shifts, rank = fit_per_type_energy_shifts(counts, e)
        stats |= {
            "per_atom_energy_mean": per_atom_energy_mean(e, n),
            "per_atom_energy_std": float(np.std(e / n)),
            "per_type_energy_shifts": tuple(float(s) for s in shifts),
            "energy_shifts_rank": rank,
            "per_atom_energy_residual_rms": float(
                np.sqrt(np.mean(((e - counts @ shifts) / n) ** 2))
            ),
        }
    if force_atoms_type.sum() > 0:
        stats |= {
            "forces_rms": float(np.sqrt(force_sq_type.sum() / (3 * force_atoms_type.sum()))),
            "per_type_forces_rms": tuple(
                None if v is None else float(np.sqrt(v))
                for v in _per_type(force_sq_type, 3 * force_atoms_type)
            ),
        }
    return DatasetStatistics(**stats)
