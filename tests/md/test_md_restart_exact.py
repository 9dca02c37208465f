"""Restart checkpoints carry the thermostat/barostat state: N steps == N/2 + restart + N/2."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from md_helpers import random_params, si_o_crystal, small_config, species_of

from allegro_jax.md.integrate import make_simulation, state_from_arrays, state_to_arrays

ENSEMBLES = ["nvt_nose_hoover", "nvt_langevin", "npt_nose_hoover"]


def _simulation(config, params, atoms, ensemble):
    return make_simulation(
        config,
        params,
        species_of(config, atoms),
        cell=np.array(atoms.cell),
        ensemble=ensemble,
        timestep_fs=1.0,
        temperature_K=600.0,
        tau_t_fs=20.0,
        tau_p_fs=100.0,
        pressure_bar=1e4,
        skin=0.3,
        log_every=5,
        logs_per_chunk=2,
    )


def _concat(a, b):
    return jax.tree.map(lambda x, y: np.concatenate([np.asarray(x), np.asarray(y)]), a, b)


@pytest.mark.slow
@pytest.mark.parametrize("ensemble", ENSEMBLES)
def test_restart_continues_bit_for_bit(ensemble, tmp_path):
    config = small_config(r_max=3.0)
    params = random_params(config)
    atoms = si_o_crystal()
    init_fn, apply_fn = _simulation(config, params, atoms, ensemble)
    start = init_fn(jax.random.PRNGKey(0), atoms.positions)
    full, log_full = apply_fn(start, 40)
    half, log_a = apply_fn(start, 20)
    np.savez(tmp_path / "state.npz", **state_to_arrays(half))
    arrays = dict(np.load(tmp_path / "state.npz"))

    # a template from other positions and another key (as a new process would build it)
    other = si_o_crystal(seed=7, rattle=0.15)
    template = init_fn(jax.random.PRNGKey(99), other.positions)
    restored = state_from_arrays(template, arrays)
    assert int(restored.step) == 20
    cont, log_b = apply_fn(restored, 20)

    assert int(log_full.n_rebuilds.sum()) > 0  # the neighbour list was rebuilt on the way
    for a, b in zip(jax.tree.leaves(full.sim), jax.tree.leaves(cont.sim), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    log_restart = _concat(log_a, log_b)
    for field in ("step", "temperature_K", "potential_energy", "conserved", "pressure_bar"):
        np.testing.assert_array_equal(getattr(log_restart, field), getattr(log_full, field))

    # the thermostat/barostat state matters: with only positions, momenta and forces
    # restored (chain, PRNG key, box variables from the template) the run goes elsewhere
    keep = {"position", "momentum", "force", "mass"}
    sim = restored.sim
    for f in dataclasses.fields(sim):
        if f.name not in keep:
            sim = sim.set(**{f.name: getattr(template.sim, f.name)})
    bad, _ = apply_fn(restored.replace(sim=sim), 20)
    assert not np.array_equal(np.asarray(bad.sim.position), np.asarray(full.sim.position))


def test_restore_rejects_another_ensemble():
    config = small_config(r_max=3.0)
    params = random_params(config)
    atoms = si_o_crystal()
    init_nh, _ = _simulation(config, params, atoms, "nvt_nose_hoover")
    init_nve, _ = _simulation(config, params, atoms, "nve")
    arrays = state_to_arrays(init_nve(jax.random.PRNGKey(0), atoms.positions))
    with pytest.raises(ValueError, match="chain"):
        state_from_arrays(init_nh(jax.random.PRNGKey(0), atoms.positions), arrays)
