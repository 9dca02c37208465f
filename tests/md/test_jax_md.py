"""The jax-md energy function agrees with the model's apply_fn and the ASE calculator."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_md import partition, quantity, space
from md_helpers import random_params, si_o_crystal, small_config, species_of

from allegro_jax.data.graph import Structure
from allegro_jax.data.padding import build_graph
from allegro_jax.md.ase_calculator import AllegroCalculator
from allegro_jax.md.jax_md import (
    box_from_cell,
    check_box,
    make_energy_fn,
    make_neighbor_fn,
    make_stress_fn,
)
from allegro_jax.nn.model import make_model


@pytest.fixture(scope="module")
def triclinic():
    config = small_config(r_max=4.0)
    params = random_params(config)
    atoms = si_o_crystal(shear=True, rattle=0.1)
    return config, params, atoms


def test_energy_forces_stress_agree_three_ways(triclinic):
    config, params, atoms = triclinic
    _, apply_fn = make_model(config)
    graph = build_graph(
        [Structure.from_ase(atoms)], config.type_names, config.r_max, dtype=np.float64
    )
    apply = jax.jit(apply_fn, static_argnames=("forces", "stress"))
    ref = jax.tree.map(np.asarray, apply(params, graph, stress=True))
    n = len(atoms)

    box, rotation = box_from_cell(np.array(atoms.cell))
    assert np.allclose(rotation, np.eye(3))  # ASE's sheared cell is already lower-triangular
    frac = atoms.positions @ np.linalg.inv(box).T
    displacement_fn, _ = space.periodic_general(box)
    neighbor_fn = make_neighbor_fn(config, displacement_fn, box, skin=0.5)
    nbrs = neighbor_fn.allocate(jnp.asarray(frac))
    energy_fn = make_energy_fn(config, params, displacement_fn, species=species_of(config, atoms))
    stress_fn = make_stress_fn(energy_fn)

    @jax.jit
    def all_three(R, nbrs):
        energy, grad = jax.value_and_grad(energy_fn)(R, nbrs)
        return energy, -grad, stress_fn(R, nbrs, box)

    energy, forces, stress = all_three(frac, nbrs)
    np.testing.assert_allclose(energy, ref["energy"][0], rtol=1e-12)
    np.testing.assert_allclose(forces, ref["forces"][:n], atol=1e-10)
    np.testing.assert_allclose(stress, ref["stress"][0], atol=1e-12)

    # stress from the box derivative at fixed fractional coordinates: (1/V) dE/dh h^T
    de_dh = jax.jit(jax.grad(lambda b: energy_fn(frac, nbrs, box=b)))(jnp.asarray(box))
    np.testing.assert_allclose(de_dh @ box.T / np.linalg.det(box), stress, atol=1e-12)

    # jax-md's own stress (physical sign, no kinetic part) is minus ours
    jmd = jax.jit(lambda R: quantity.stress(lambda R, **kw: energy_fn(R, nbrs, **kw), R, box))(
        jnp.asarray(frac)
    )
    np.testing.assert_allclose(-jmd, stress, atol=1e-12)

    calc = AllegroCalculator(config, params)
    atoms = atoms.copy()
    atoms.calc = calc
    np.testing.assert_allclose(atoms.get_potential_energy(), ref["energy"][0], rtol=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), ref["forces"][:n], atol=1e-10)
    np.testing.assert_allclose(atoms.get_stress(voigt=False), ref["stress"][0], atol=1e-12)
    np.testing.assert_allclose(
        atoms.get_potential_energies(), ref["atomic_energies"][:n], atol=1e-12
    )
    assert atoms.get_potential_energy() == atoms.calc.get_property("free_energy")


def test_rotated_cell_and_real_coordinates(triclinic):
    """A general (rotated) cell maps to an upper-triangular box; real coordinates work too."""
    config, params, atoms = triclinic
    atoms = atoms.copy()
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    atoms.set_cell(np.array(atoms.cell) @ q.T, scale_atoms=True)  # rotate cell and atoms
    calc = AllegroCalculator(config, params)
    atoms.calc = calc
    e_ref, f_ref = atoms.get_potential_energy(), atoms.get_forces()

    box, rotation = box_from_cell(np.array(atoms.cell))
    assert np.allclose(np.tril(box, -1), 0.0)
    pos = atoms.positions @ rotation
    displacement_fn, _ = space.periodic_general(box, fractional_coordinates=False)
    neighbor_fn = make_neighbor_fn(
        config, displacement_fn, box, skin=0.3, fractional_coordinates=False
    )
    nbrs = neighbor_fn.allocate(jnp.asarray(pos))
    energy_fn = make_energy_fn(config, params, displacement_fn, species=species_of(config, atoms))
    energy, grad = jax.jit(jax.value_and_grad(energy_fn))(jnp.asarray(pos), nbrs)
    np.testing.assert_allclose(energy, e_ref, rtol=1e-12)
    forces = -grad @ rotation.T
    np.testing.assert_allclose(forces, f_ref, atol=1e-10)


def test_orthorhombic_periodic_and_free_space():
    config = small_config(r_max=4.0)
    params = random_params(config)
    atoms = si_o_crystal(rattle=0.08)
    calc = AllegroCalculator(config, params)
    atoms.calc = calc
    species = species_of(config, atoms)
    side = float(atoms.cell[0, 0])
    displacement_fn, _ = space.periodic(side)
    neighbor_fn = partition.neighbor_list(
        displacement_fn, side, config.r_max, format=partition.Sparse
    )
    R = jnp.asarray(atoms.positions)
    nbrs = neighbor_fn.allocate(R)
    energy_fn = jax.jit(make_energy_fn(config, params, displacement_fn, species=species))
    np.testing.assert_allclose(energy_fn(R, nbrs), atoms.get_potential_energy(), rtol=1e-12)
    # Dense format gives the same
    dense = partition.neighbor_list(displacement_fn, side, config.r_max, format=partition.Dense)
    np.testing.assert_allclose(energy_fn(R, dense.allocate(R)), energy_fn(R, nbrs), rtol=1e-13)
    ordered = partition.neighbor_list(
        displacement_fn, side, config.r_max, format=partition.OrderedSparse
    )
    with pytest.raises(ValueError, match="both directions"):
        energy_fn(R, ordered.allocate(R))

    # a molecule in free space (jit + grad through the energy function)
    mol = atoms[:12].copy()
    mol.set_pbc(False)
    mol.set_cell(np.zeros((3, 3)))
    mol.calc = AllegroCalculator(config, params)
    displacement_fn, _ = space.free()
    neighbor_fn = partition.neighbor_list(
        displacement_fn, 100.0, config.r_max, format=partition.Sparse, disable_cell_list=True
    )
    Rm = jnp.asarray(mol.positions)
    efn = make_energy_fn(config, params, displacement_fn, species=species[:12])
    e, g = jax.jit(jax.value_and_grad(efn))(Rm, neighbor_fn.allocate(Rm))
    np.testing.assert_allclose(e, mol.get_potential_energy(), rtol=1e-12)
    np.testing.assert_allclose(-g, mol.get_forces(), atol=1e-10)


def test_box_too_small_for_minimum_image():
    with pytest.raises(ValueError, match="minimum-image"):
        check_box(np.eye(3) * 7.0, 4.0)
    check_box(np.eye(3) * 8.1, 4.0)


def test_allocation_is_free_of_jax_md_index_cast_warning():
    """jax-md 0.2.29 scatters int64 atom indices into an int32 list under x64; our allocate
    silences exactly that FutureWarning (the values fit) and nothing else."""
    import warnings

    config = small_config(r_max=4.0)
    atoms = si_o_crystal(shear=False, rattle=0.1)
    box, _ = box_from_cell(np.array(atoms.cell))
    displacement_fn, _ = space.periodic_general(box)
    neighbor_fn = make_neighbor_fn(config, displacement_fn, box, skin=0.3)
    frac = jnp.asarray(atoms.positions @ np.linalg.inv(box).T)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nbrs = neighbor_fn.allocate(frac)
    assert int(nbrs.idx.shape[1]) > 0 and not bool(nbrs.did_buffer_overflow)
    with pytest.warns(FutureWarning, match="scatter inputs have incompatible types"):
        partition.neighbor_list(  # the bare jax-md list still warns: the filter is needed
            displacement_fn, box, config.r_max + 0.3, format=partition.Sparse
        ).allocate(frac)
