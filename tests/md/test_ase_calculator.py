"""AllegroCalculator: ASE dynamics and optimisers, errors, compilation reuse."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.calculators.calculator import PropertyNotImplementedError
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS
from md_helpers import random_params, si_o_crystal, small_config

from allegro_jax.md.ase_calculator import AllegroCalculator


@pytest.fixture(scope="module")
def calc():
    config = small_config(r_max=3.0)
    return AllegroCalculator(config, random_params(config))


def test_velocity_verlet_and_bfgs(calc):
    atoms = si_o_crystal(rattle=0.05)
    atoms.calc = calc
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    e0 = atoms.get_total_energy()
    VelocityVerlet(atoms, timestep=0.5 * units.fs).run(40)
    assert abs(atoms.get_total_energy() - e0) / len(atoms) < 1e-5
    mol = atoms[:10].copy()
    mol.set_pbc(False)
    mol.set_cell(np.zeros((3, 3)))
    mol.calc = calc
    fmax0 = np.linalg.norm(mol.get_forces(), axis=1).max()
    e0 = mol.get_potential_energy()
    opt = BFGS(mol, logfile=None)
    assert opt.run(fmax=0.05 * fmax0, steps=200), "BFGS did not converge"
    # converged: every atom's force below the threshold, and the energy went down
    assert np.linalg.norm(mol.get_forces(), axis=1).max() < 0.05 * fmax0
    assert mol.get_potential_energy() < e0 - 1e-3


def test_stress_needs_a_periodic_cell(calc):
    atoms = si_o_crystal()[:8]
    atoms.set_pbc(False)
    atoms.calc = calc
    atoms.get_potential_energy()
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        atoms.get_stress()


def test_unknown_species_raises(calc):
    atoms = si_o_crystal()
    atoms.numbers[0] = 6
    atoms.calc = calc
    with pytest.raises(ValueError):
        atoms.get_potential_energy()


def test_no_recompilation_for_similar_sizes():
    config = small_config(r_max=3.0)
    calc = AllegroCalculator(config, random_params(config))
    first = si_o_crystal(seed=1)
    first.calc = calc
    first.get_forces()
    compiled = calc.n_compilations
    second = si_o_crystal(seed=2, rattle=0.08)
    del second[[3, 17]]  # different atom and edge counts, same bucket
    second.calc = calc
    second.get_forces()
    second.get_stress()
    assert calc.n_compilations == compiled == 1
