"""jax-md energy and MD a block of atoms at a time equal the whole neighbour list's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_md import space
from md_helpers import random_params, si_o_crystal, small_config, species_of

from allegro_jax.md.integrate import make_simulation, positions_angstrom
from allegro_jax.md.jax_md import (
    box_from_cell,
    make_energy_fn,
    make_neighbor_fn,
    make_stress_fn,
    neighbor_block_edges_needed,
    plan_neighbor_blocks,
)
from allegro_jax.nn.model import AtomChunks


@pytest.fixture(scope="module")
def system():
    """Sheared, rattled 64-atom Si/O cell with a 2-species model; its neighbour list."""
    config = small_config(r_max=4.0)
    params = random_params(config)
    atoms = si_o_crystal(shear=True, rattle=0.1)
    box, _ = box_from_cell(np.array(atoms.cell))
    frac = jnp.asarray(atoms.positions @ np.linalg.inv(box).T)
    displacement_fn, _ = space.periodic_general(box)
    nbrs = make_neighbor_fn(config, displacement_fn, box, skin=0.5).allocate(frac)
    return config, params, atoms, box, frac, displacement_fn, nbrs


def _energy_forces_stress(energy_fn, box):
    stress_fn = make_stress_fn(energy_fn)

    @jax.jit
    def run(R, nbrs):
        energy, grad = jax.value_and_grad(energy_fn)(R, nbrs)
        de_dh = jax.grad(lambda b: energy_fn(R, nbrs, box=b))(jnp.asarray(box))
        return energy, -grad, stress_fn(R, nbrs, box), de_dh

    return run


def test_blockwise_energy_forces_stress_equal_whole_list(system):
    config, params, atoms, box, frac, displacement_fn, nbrs = system
    n = len(atoms)
    species = species_of(config, atoms)
    chunks = plan_neighbor_blocks(nbrs, n, target_edges=64)
    assert chunks is not None and chunks.atoms < n  # several blocks
    assert int(neighbor_block_edges_needed(nbrs, n, chunks)) <= chunks.edges
    whole = _energy_forces_stress(
        make_energy_fn(config, params, displacement_fn, species=species), box
    )(frac, nbrs)
    blocks_fn = make_energy_fn(config, params, displacement_fn, species=species, chunks=chunks)
    blocks = _energy_forces_stress(blocks_fn, box)(frac, nbrs)
    for name, a, b in zip(("energy", "forces", "stress", "dE/dbox"), whole, blocks, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12, err_msg=name)
    assert np.max(np.abs(whole[1])) > 1e-3  # forces are not trivially zero
    # the energy alone (no derivative) takes the forward-only path
    np.testing.assert_allclose(jax.jit(blocks_fn)(frac, nbrs), whole[0], rtol=1e-12)


def test_a_layout_too_small_gives_nan_and_says_so(system):
    config, params, atoms, box, frac, displacement_fn, nbrs = system
    n = len(atoms)
    chunks = plan_neighbor_blocks(nbrs, n, target_edges=64)
    need = int(neighbor_block_edges_needed(nbrs, n, chunks))
    small = AtomChunks(chunks.atoms, need - 1)
    assert int(neighbor_block_edges_needed(nbrs, n, small)) == need > small.edges
    energy_fn = make_energy_fn(
        config, params, displacement_fn, species=species_of(config, atoms), chunks=small
    )
    energy, grad = jax.jit(jax.value_and_grad(energy_fn))(frac, nbrs)
    assert np.isnan(energy) and np.all(np.isnan(grad))
    # a just-fitting layout is fine
    fitting = make_energy_fn(
        config,
        params,
        displacement_fn,
        species=species_of(config, atoms),
        chunks=AtomChunks(chunks.atoms, need),
    )
    assert np.isfinite(jax.jit(fitting)(frac, nbrs))


def test_planning_rules(system):
    config, params, atoms, box, frac, displacement_fn, nbrs = system
    n = len(atoms)
    in_use = int(np.sum(np.asarray(nbrs.idx[0]) < n))
    assert plan_neighbor_blocks(nbrs, n, target_edges=-(-in_use // 8)) is None  # too few pairs
    assert plan_neighbor_blocks(nbrs, n, target_edges=(in_use - 1) // 8) is not None
    # a list not sorted by centre: no layout, and no capacity fits it
    idx = np.asarray(nbrs.idx)
    shuffled = idx[:, np.random.default_rng(0).permutation(idx.shape[1])]
    assert plan_neighbor_blocks(shuffled, n, target_edges=64) is None
    chunks = plan_neighbor_blocks(nbrs, n, target_edges=64)
    assert int(neighbor_block_edges_needed(jnp.asarray(shuffled), n, chunks)) > idx.shape[1]


def _md(config, params, atoms, ensemble, n_steps, chunk_edges, shrink=None):
    init_fn, apply_fn = make_simulation(
        config,
        params,
        species_of(config, atoms),
        cell=np.array(atoms.cell),
        ensemble=ensemble,
        timestep_fs=1.0,
        temperature_K=1500.0,
        skin=0.3,
        log_every=5,
        logs_per_chunk=4,
        chunk_edges=chunk_edges,
    )
    state = init_fn(jax.random.PRNGKey(0), atoms.positions)
    if shrink is not None:
        state = state.replace(chunks=shrink(state))
    state, log = apply_fn(state, n_steps)
    return state, log


@pytest.mark.slow
@pytest.mark.parametrize("ensemble", ["nve", "npt_nose_hoover"])
def test_md_in_blocks_follows_the_whole_list(ensemble):
    """Same trajectory (float64) with blocks as with the whole list, also when the layout
    is outgrown at the start of a chunk or in the middle of one (the chunk is redone with
    a larger layout)."""
    config = small_config(r_max=3.0)
    params = random_params(config)
    atoms = si_o_crystal(rattle=0.15)
    n = len(atoms)
    whole_state, whole = _md(config, params, atoms, ensemble, 100, None)
    assert whole_state.chunks is None

    def need(s):
        return int(neighbor_block_edges_needed(s.neighbor, n, s.chunks))

    runs = {
        "planned": None,
        "too small from the start": lambda s: AtomChunks(s.chunks.atoms, need(s) - 1),
        # exactly the first list's need: a later rebuild outgrows it
        "no spare room": lambda s: AtomChunks(s.chunks.atoms, need(s)),
    }
    if ensemble != "nve":  # (compile time: the replans are the integrator's business)
        runs = {"no spare room": runs["no spare room"]}
    for name, shrink in runs.items():
        state, log = _md(config, params, atoms, ensemble, 100, 16, shrink)
        assert state.chunks is not None and state.chunks.atoms < n, name
        if shrink is not None:
            assert state.n_replans >= 1, name
        else:
            assert state.n_replans == 0, name
        np.testing.assert_allclose(
            positions_angstrom(state), positions_angstrom(whole_state), atol=1e-10, err_msg=name
        )
        np.testing.assert_allclose(log.total_energy, whole.total_energy, atol=1e-10, err_msg=name)
        np.testing.assert_allclose(log.pressure_bar, whole.pressure_bar, rtol=1e-9, err_msg=name)
    assert int(np.sum(whole.n_rebuilds)) >= 3  # the lists changed along the way


def test_an_ensemble_system_runs_the_whole_list():
    """An ensemble's system drives MD with the members' mean energy: the block-wise energy
    of the member it was built from must not replace it."""
    from allegro_jax.md.ensemble import make_ensemble_system
    from allegro_jax.nn.ensemble import stack_members

    config = small_config(r_max=3.0)
    params = stack_members([random_params(config, seed) for seed in (0, 1)])
    atoms = si_o_crystal(rattle=0.15)
    species = species_of(config, atoms)
    system, _ = make_ensemble_system(config, params, species, cell=np.array(atoms.cell))
    assert system.blockwise_energy_fn is None
    init_fn, _ = make_simulation(
        config, params, species, cell=np.array(atoms.cell), system=system, chunk_edges=16
    )
    state = init_fn(jax.random.PRNGKey(0), atoms.positions)
    assert state.chunks is None
    np.testing.assert_allclose(
        -np.asarray(state.sim.force),
        np.asarray(jax.grad(system.energy_fn)(state.sim.position, state.neighbor)),
        atol=1e-12,
    )
