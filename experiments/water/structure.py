"""Is it still water: minimum-image O–H vectors and distances, O–H bond lengths, and the
first frame of a trajectory whose molecules are not intact."""

from __future__ import annotations

import numpy as np


def from_oxygens(positions, h: int, is_o, cell) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-image vectors O→H from every O to the H atom ``h`` (``[n_O, 3]``), and their
    lengths."""
    from allegro_jax.md.analysis import minimum_image_vectors

    vec = minimum_image_vectors(positions[h] - positions[is_o], np.asarray(cell))
    return vec, np.linalg.norm(vec, axis=1)


def distances(frame, a: str, b: str) -> np.ndarray:
    """Minimum-image distances (Å) from every atom of element ``a`` to every atom of ``b``."""
    from allegro_jax.md.analysis import minimum_image_vectors

    s = np.array(frame.get_chemical_symbols())
    pa, pb = frame.positions[s == a], frame.positions[s == b]
    return np.linalg.norm(
        minimum_image_vectors(pb[None] - pa[:, None], np.array(frame.cell)), axis=-1
    )


def oh_bond_lengths(frames) -> dict:
    """Mean and spread (Å) of each H's distance to its nearest O, over all H of all frames."""
    d = np.concatenate([distances(f, "O", "H").min(axis=0) for f in frames])
    return {"mean_A": float(d.mean()), "std_A": float(d.std())}


# Intact water, judged against all 400 DFT frames: there every H has one O within 0.89–1.14 Å
# and no other O within 1.32 Å, no two O are closer than 2.35 Å, and no two H of different
# molecules closer than 1.63 Å. The thresholds sit well outside those ranges.
BOND_O_H, CONTACT_O_O, CONTACT_H_H = 1.25, 2.0, 1.2


def first_broken_frame(frames) -> int | None:
    """Index of the first frame that is not intact water, or ``None``.

    Intact: every O has exactly two H within ``BOND_O_H`` and every H one O; no two O within
    ``CONTACT_O_O``; no two H of different molecules within ``CONTACT_H_H``."""
    for k, f in enumerate(frames):
        d_oh = distances(f, "O", "H")
        close = d_oh < BOND_O_H
        if not (np.all(close.sum(1) == 2) and np.all(close.sum(0) == 1)):
            return k
        d_oo = distances(f, "O", "O")
        if np.any(d_oo[~np.eye(len(d_oo), dtype=bool)] < CONTACT_O_O):
            return k
        owner = d_oh.argmin(axis=0)
        d_hh = distances(f, "H", "H")
        if np.any(d_hh[owner[:, None] != owner[None, :]] < CONTACT_H_H):
            return k
    return None
