"""Shared fixtures for the data tests: real rMD17 aspirin and DeePMD water frames when the
shared data directory is present, generated look-alikes otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from allegro_jax.data.graph import Structure

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ASPIRIN_FILE = DATA_DIR / "rmd17" / "rmd17_aspirin_train_01.npz"
WATER_FILE = DATA_DIR / "water" / "water_train.extxyz"
WATER_BOX = 12.4447


def generated_molecule(rng: np.random.Generator, n_atoms: int = 21) -> Structure:
    """A molecule-like cluster: jittered grid points 1.4 Å apart (no coincident atoms)."""
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    positions = 1.4 * grid[:n_atoms] + rng.uniform(-0.2, 0.2, size=(n_atoms, 3))
    numbers = rng.choice([1, 6, 8], size=n_atoms)
    return Structure(numbers=numbers, positions=positions)


def generated_water(rng: np.random.Generator) -> Structure:
    """64 jittered H2O in a 12.4447 Å periodic cube (192 atoms)."""
    grid = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5
    oxygens = grid * WATER_BOX / 4 + rng.uniform(-0.3, 0.3, size=(64, 3))
    directions = rng.normal(size=(64, 2, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    hydrogens = oxygens[:, None, :] + 0.96 * directions
    positions = np.concatenate([oxygens[:, None, :], hydrogens], axis=1).reshape(-1, 3)
    return Structure(
        numbers=np.tile([8, 1, 1], 64),
        positions=positions,
        cell=np.eye(3) * WATER_BOX,
        pbc=np.ones(3, dtype=bool),
    )


@pytest.fixture(scope="session")
def aspirin_structures() -> list[Structure]:
    """100 aspirin frames (21 atoms, H/C/O, no cell)."""
    if ASPIRIN_FILE.exists():
        data = np.load(ASPIRIN_FILE)
        return [
            Structure(numbers=data["nuclear_charges"], positions=x) for x in data["coords"][:100]
        ]
    rng = np.random.default_rng(17)
    base = generated_molecule(rng)
    return [
        Structure(base.numbers, base.positions + rng.normal(scale=0.05, size=(21, 3)))
        for _ in range(100)
    ]


@pytest.fixture(scope="session")
def water_structures() -> list[Structure]:
    """48 periodic water frames (192 atoms, H/O)."""
    if WATER_FILE.exists():
        import ase.io

        return [Structure.from_ase(a) for a in ase.io.read(WATER_FILE, index=":48")]
    rng = np.random.default_rng(18)
    return [generated_water(rng) for _ in range(48)]
