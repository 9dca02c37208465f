"""Probes of a trained model's energy where the DFT frames never go: one O–H bond
stretched, and a hydrogen-bonded molecule pushed onto its donor's H."""

from __future__ import annotations

import numpy as np

from experiments.water.structure import from_oxygens

STRETCH_DISTANCES = (0.98, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.8, 2.0)  # Å, O to moved H


def _energy_profile(frames, calc, distances, placements) -> np.ndarray:
    """Energy changes (eV) relative to each unmoved frame, ``[n_probes, len(distances)]``.

    ``placements(atoms, start)`` yields, per probe, a function ``d -> positions``."""
    rows = []
    for frame in frames:
        atoms = frame.copy()
        atoms.calc = calc
        e0 = atoms.get_potential_energy()
        start = atoms.positions.copy()
        for place in placements(atoms, start):
            row = []
            for d in distances:
                atoms.positions = place(d)
                row.append(atoms.get_potential_energy() - e0)
            rows.append(row)
    return np.asarray(rows)


def _molecule(o: int, start, h_idx, cell) -> list[int]:
    """The O ``o`` with its two nearest H (minimum image)."""
    from allegro_jax.md.analysis import minimum_image_vectors

    own_h = minimum_image_vectors(start[h_idx] - start[o], cell)
    return [o, *h_idx[np.argsort(np.linalg.norm(own_h, axis=1))[:2]]]


def _rigid_shift(start, molecule, unit):
    """``shift -> positions`` with ``molecule`` moved rigidly by ``shift`` along ``unit``."""

    def place(shift):
        moved = start.copy()
        moved[molecule] += shift * unit
        return moved

    return place


def stretch_profile(frames, calc, distances=STRETCH_DISTANCES, every: int = 8) -> np.ndarray:
    """Energy change (eV) when one H is moved along its O→H direction to distance ``d`` from
    its O, ``[n_probes, len(distances)]``; relative to the unmoved frame. Every ``every``-th H
    of each frame is probed, one at a time. A physical model costs energy at every ``d`` past
    the bond length (a water O–H bond is worth ~4.5 eV); a learned energy that falls there
    has a hole that MD can find."""

    def placements(atoms, start):
        is_o = atoms.numbers == 8
        for h in np.flatnonzero(atoms.numbers == 1)[::every]:
            oh, dist = from_oxygens(start, h, is_o, atoms.cell)
            k = np.argmin(dist)
            unit = oh[k] / dist[k]

            def place(d, h=h, origin=start[is_o][k], unit=unit):
                moved = start.copy()
                moved[h] = origin + d * unit
                return moved

            yield place

    return _energy_profile(frames, calc, distances, placements)


APPROACH_DISTANCES = (1.8, 1.6, 1.5, 1.4, 1.3, 1.2, 1.1, 1.0)  # Å, H to acceptor O


def approach_profile(frames, calc, distances=APPROACH_DISTANCES, every: int = 8) -> np.ndarray:
    """Energy change (eV) when the molecule accepting an H's hydrogen bond (second-nearest O
    within 2.2 Å, with its two nearest H) is moved rigidly along the H···O line until that
    distance is ``d``, ``[n_probes, len(distances)]``. Below the 1.33 Å that no DFT frame
    goes under, a physical model rises steeply (the molecules overlap); a fall is a path
    for two molecules to collapse into each other."""

    def placements(atoms, start):
        cell = np.array(atoms.cell)
        o_idx, h_idx = np.flatnonzero(atoms.numbers == 8), np.flatnonzero(atoms.numbers == 1)
        for h in h_idx[::every]:
            from_o, dist = from_oxygens(start, h, o_idx, cell)
            acceptor = np.argsort(dist)[1]
            if dist[acceptor] > 2.2:
                continue
            unit = -from_o[acceptor] / dist[acceptor]  # H→O
            shift = _rigid_shift(start, _molecule(o_idx[acceptor], start, h_idx, cell), unit)
            yield lambda d, shift=shift, now=dist[acceptor]: shift(d - now)

    return _energy_profile(frames, calc, distances, placements)


CONTACT_DISTANCES = (2.6, 2.4, 2.2, 2.0, 1.9, 1.8, 1.7, 1.6)  # Å, O to O


def contact_profile(frames, calc, distances=CONTACT_DISTANCES, every: int = 8) -> np.ndarray:
    """Energy change (eV) when the molecule of an O's nearest other O (that O with its two
    nearest H) is moved rigidly along the O–O line until the two O are ``d`` apart,
    ``[n_probes, len(distances)]``. No DFT frame has two O closer than 2.35 Å; a physical
    model rises steeply below that, a learned energy that falls lets two molecules fuse
    (seen in MD at 1.5–1.8 Å)."""
    from allegro_jax.md.analysis import minimum_image_vectors

    def placements(atoms, start):
        cell = np.array(atoms.cell)
        o_idx, h_idx = np.flatnonzero(atoms.numbers == 8), np.flatnonzero(atoms.numbers == 1)
        for o in o_idx[::every]:
            vec = minimum_image_vectors(start[o_idx] - start[o], cell)
            dist = np.linalg.norm(vec, axis=1)
            dist[o_idx == o] = np.inf
            k = int(np.argmin(dist))
            unit = -vec[k] / dist[k]  # from the other O towards o
            shift = _rigid_shift(start, _molecule(o_idx[k], start, h_idx, cell), unit)
            yield lambda d, shift=shift, now=dist[k]: shift(now - d)

    return _energy_profile(frames, calc, distances, placements)
