"""LAMMPS data files from :class:`~allegro_jax.data.graph.Structure` (``units metal``).

LAMMPS boxes are *restricted triclinic*: the first lattice vector along x, the second in
the xy plane. :func:`lammps_frame` rotates a structure into that frame (positions wrapped
into the box along periodic directions), so results computed on the returned structure
compare with LAMMPS's atom by atom, without rotating forces or stresses.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase.data import atomic_masses, atomic_numbers, chemical_symbols

from allegro_jax.data.graph import Structure


def lammps_cell(cell: np.ndarray) -> np.ndarray:
    """The restricted-triclinic cell ``[[lx,0,0],[xy,ly,0],[xz,yz,lz]]`` of a lattice (rows)
    with the same lengths and angles.

    Raises:
        ValueError: a left-handed or degenerate cell (LAMMPS cannot represent it).
    """
    a, b, c = np.asarray(cell, dtype=np.float64)
    if np.linalg.det(np.stack([a, b, c])) <= 0:
        raise ValueError("the cell must be right-handed with a positive volume for LAMMPS")
    lx = np.linalg.norm(a)
    xhat = a / lx
    xy = float(b @ xhat)
    ly = float(np.linalg.norm(np.cross(xhat, b)))
    xz = float(c @ xhat)
    yz = float((b @ c - xy * xz) / ly)
    lz = float(np.sqrt(c @ c - xz * xz - yz * yz))
    return np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]])


def lammps_frame(structure: Structure) -> Structure:
    """The structure rotated into LAMMPS's box frame, periodic coordinates wrapped into
    ``[0, 1)`` (fractional). A structure without periodicity is returned unchanged, with a
    box around it left to :func:`write_lammps_data`."""
    if not np.any(structure.pbc):
        return structure
    if not np.all(structure.pbc):
        raise ValueError("LAMMPS data files here need pbc all True or all False")
    cell = np.asarray(structure.cell, dtype=np.float64)
    frac = structure.positions @ np.linalg.inv(cell)
    frac -= np.floor(frac)
    frac[frac >= 1.0] = 0.0
    new_cell = lammps_cell(cell)
    return Structure(
        numbers=structure.numbers,
        positions=frac @ new_cell,
        cell=new_cell,
        pbc=structure.pbc,
        info=dict(structure.info),
    )


def write_lammps_data(
    path: str | os.PathLike,
    structure: Structure,
    elements: Sequence[str],
    *,
    type_labels: bool = True,
    velocities: np.ndarray | None = None,
    title: str = "written by allegro-jax",
) -> Structure:
    """Write an ``atom_style atomic`` data file (``units metal``).

    Args:
        path: destination.
        structure: a periodic structure (any cell) or a molecule (a box with 10 Å of vacuum).
        elements: the element of each LAMMPS atom type, in type order (e.g. ``("O", "H")``);
            every element of the structure must be listed.
        type_labels: also write an ``Atom Type Labels`` section (then ``pair_coeff * *
            <model>`` needs no element list).
        velocities: optional ``[n_atoms, 3]`` velocities in Å/ps (LAMMPS metal units),
            given in the structure's frame (rotated with it).
        title: the first line.

    Returns:
        The structure as LAMMPS sees it (:func:`lammps_frame`): atom ``k`` is LAMMPS atom
        ID ``k + 1``.
    """
    elements = list(elements)
    symbols = [chemical_symbols[z] for z in structure.numbers]
    missing = sorted(set(symbols) - set(elements))
    if missing:
        raise ValueError(f"elements {missing} of the structure are not among the types {elements}")
    framed = lammps_frame(structure)
    if np.any(structure.pbc):
        cell = framed.cell
        lo = np.zeros(3)
        rotation = np.linalg.inv(structure.cell) @ cell  # r_lammps = r @ rotation
    else:
        pos = structure.positions
        lo = pos.min(axis=0) - 10.0
        cell = np.diag(pos.max(axis=0) + 10.0 - lo)
        rotation = np.eye(3)
    types = np.array([elements.index(s) + 1 for s in symbols])

    def f(value: float) -> str:
        return repr(float(value))  # shortest round-trip decimal

    lines = [
        title,
        "",
        f"{structure.n_atoms} atoms",
        f"{len(elements)} atom types",
        "",
        f"{f(lo[0])} {f(lo[0] + cell[0, 0])} xlo xhi",
        f"{f(lo[1])} {f(lo[1] + cell[1, 1])} ylo yhi",
        f"{f(lo[2])} {f(lo[2] + cell[2, 2])} zlo zhi",
    ]
    if cell[1, 0] != 0.0 or cell[2, 0] != 0.0 or cell[2, 1] != 0.0:
        lines.append(f"{f(cell[1, 0])} {f(cell[2, 0])} {f(cell[2, 1])} xy xz yz")
    if type_labels:
        lines += ["", "Atom Type Labels", ""] + [f"{t + 1} {e}" for t, e in enumerate(elements)]
    lines += ["", "Masses", ""]
    lines += [f"{t + 1} {f(atomic_masses[atomic_numbers[e]])}" for t, e in enumerate(elements)]
    lines += ["", "Atoms # atomic", ""]
    lines += [
        f"{k + 1} {types[k]} {f(x)} {f(y)} {f(z)}" for k, (x, y, z) in enumerate(framed.positions)
    ]
    if velocities is not None:
        v = np.asarray(velocities, dtype=np.float64) @ rotation
        lines += ["", "Velocities", ""]
        lines += [f"{k + 1} {f(a)} {f(b)} {f(c)}" for k, (a, b, c) in enumerate(v)]
    Path(path).write_text("\n".join(lines) + "\n")
    return framed
