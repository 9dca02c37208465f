"""Small models and systems for the MD tests (float64 JAX is enabled by tests/conftest.py)."""

from __future__ import annotations

import ase
import ase.build
import jax
import numpy as np

from allegro_jax.config import AllegroConfig
from allegro_jax.nn.model import make_model


def small_config(dtype: str = "float64", r_max: float = 4.0, **changes) -> AllegroConfig:
    """l_max 1, one layer, S 16, C 4, O/Si types, small energy scale (moderate forces)."""
    kwargs = dict(
        type_names=("O", "Si"),
        r_max=r_max,
        l_max=1,
        num_layers=1,
        num_scalar_features=16,
        num_tensor_features=4,
        avg_num_neighbors=16.0,
        per_type_energy_shifts=(-1.0, -3.0),
        per_type_energy_scales=0.1,
        model_dtype=dtype,
    )
    kwargs.update(changes)
    return AllegroConfig(**kwargs)


def random_params(config: AllegroConfig, seed: int = 0):
    init_fn, _ = make_model(config)
    return init_fn(jax.random.PRNGKey(seed))


def si_o_crystal(seed: int = 1, rattle: float = 0.05, shear: bool = False) -> ase.Atoms:
    """64-atom diamond Si (2x2x2 conventional) with every 4th atom O, rattled."""
    atoms = ase.build.bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
    numbers = atoms.get_atomic_numbers()
    numbers[::4] = 8
    atoms.set_atomic_numbers(numbers)
    if shear:
        cell = np.array(atoms.cell) + np.array([[0, 0, 0], [1.0, 0, 0], [0.5, -0.7, 0]])
        atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(rattle, seed=seed)
    return atoms


def species_of(config: AllegroConfig, atoms: ase.Atoms) -> np.ndarray:
    return np.array([config.type_names.index(s) for s in atoms.get_chemical_symbols()])
