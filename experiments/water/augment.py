"""Synthetic stretched-bond frames (README, attempt E): DFT training frames plus copies
with one H moved off its O, labelled with a capped Morse bond energy and no forces."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.water.settings import AUGMENTED_FILE, TRAIN_FILE
from experiments.water.structure import from_oxygens

# The O–H Morse bond of the flexible TIP4P/2005f water model (González & Abascal, J. Chem.
# Phys. 135, 224516 (2011): D_r = 432.581 kJ/mol, beta = 22.87 /nm), with r0 the mean O–H
# bond of the DFT frames.
MORSE_D_EV, MORSE_A_PER_A, MORSE_R0_A = 4.4834, 2.287, 0.981
STRETCH_RANGE_A = (1.15, 2.2)  # O–H distance of the moved H (DFT frames: <= 1.138 Å)
STRETCH_MIN_OTHER_O_A, STRETCH_MIN_H_A = 1.5, 1.3  # keep the moved H clear of other atoms
STRETCH_LABEL_CAP_EV = 1.0  # label: DFT energy + min(Morse energy change, this)


def morse_oh(r):
    return MORSE_D_EV * ((1.0 - np.exp(-MORSE_A_PER_A * (r - MORSE_R0_A))) ** 2 - 1.0)


def stretched_frame(atoms, rng: np.random.Generator, energy: float):
    """A copy of a DFT frame with one H moved to 1.15–2.2 Å from its O (direction: the bond
    direction plus an isotropic perturbation), labelled ``energy + min(ΔV_Morse, cap)`` and
    no forces; ``None`` when 100 tries find no placement clear of the other atoms."""
    import ase

    from allegro_jax.md.analysis import minimum_image_vectors

    cell = np.array(atoms.cell)
    is_o = atoms.numbers == 8
    for _ in range(100):
        h = rng.choice(np.flatnonzero(atoms.numbers == 1))
        oh, dist = from_oxygens(atoms.positions, h, is_o, cell)
        k = np.argmin(dist)
        direction = oh[k] / dist[k] + rng.normal(scale=0.5, size=3)
        d = rng.uniform(*STRETCH_RANGE_A)
        new = atoms.positions[is_o][k] + d * direction / np.linalg.norm(direction)
        to_all = np.linalg.norm(minimum_image_vectors(new - atoms.positions, cell), axis=1)
        to_all[h] = np.inf
        other_o = np.delete(to_all[is_o], k)
        if other_o.min() < STRETCH_MIN_OTHER_O_A or to_all[~is_o].min() < STRETCH_MIN_H_A:
            continue
        positions = atoms.positions.copy()
        positions[h] = new
        out = ase.Atoms(atoms.numbers, positions=positions, cell=cell, pbc=True)
        cost = min(morse_oh(d) - morse_oh(dist[k]), STRETCH_LABEL_CAP_EV)
        out.info["energy"] = energy + cost
        out.info["synthetic"] = f"H {h} moved {dist[k]:.3f} -> {d:.3f} A from O"
        return out
    return None


def augment(every: int = 2, seed: int = 0) -> Path:
    """DFT training frames + one synthetic stretched-bond frame per ``every`` of them."""
    import ase.io

    frames = ase.io.read(TRAIN_FILE, index=":")
    rng = np.random.default_rng(seed)
    extra = []
    for atoms in frames[::every]:
        made = stretched_frame(atoms, rng, atoms.get_potential_energy())
        if made is not None:
            extra.append(made)
    AUGMENTED_FILE.parent.mkdir(parents=True, exist_ok=True)
    tmp = AUGMENTED_FILE.with_suffix(".tmp.extxyz")
    ase.io.write(tmp, frames + extra, format="extxyz")
    tmp.replace(AUGMENTED_FILE)
    print(f"wrote {AUGMENTED_FILE}: {len(frames)} DFT + {len(extra)} synthetic frames")
    return AUGMENTED_FILE
