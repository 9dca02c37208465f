"""Gradients of trajectory observables match central finite differences (float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_md import partition, space
from md_helpers import random_params, small_config

from allegro_jax.md.differentiable import (
    check_skin,
    make_nve_trajectory_fn,
    make_rdf_bin_fn,
    mean_potential_energy,
    observable_and_grad,
)
from allegro_jax.md.integrate import default_masses


def _cluster(n: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pos = []
    while len(pos) < n:
        p = rng.uniform(0, 4.0, size=3)
        if all(np.linalg.norm(p - q) > 1.6 for q in pos):
            pos.append(p)
    return np.array(pos)


@pytest.mark.slow
def test_observable_gradients_match_finite_differences():
    config = small_config(r_max=3.5, per_type_energy_scales=0.5)
    params = random_params(config, seed=3)
    R0 = jnp.asarray(_cluster())
    species = np.array([0, 1, 1, 1, 0, 1, 1, 1])
    skin = 2.0
    displacement_fn, shift_fn = space.free()
    neighbor_fn = partition.neighbor_list(
        displacement_fn, 100.0, config.r_max + skin, format=partition.Sparse, disable_cell_list=True
    )
    neighbor = neighbor_fn.allocate(R0)
    V0 = jnp.asarray(np.random.default_rng(1).normal(scale=0.005, size=R0.shape))  # Å/fs
    traj_fn = make_nve_trajectory_fn(
        config,
        displacement_fn,
        shift_fn,
        species=species,
        masses_amu=default_masses(config, species),
        neighbor=neighbor,
        timestep_fs=1.0,
        n_steps=20,
    )
    rdf_bin = make_rdf_bin_fn(displacement_fn, neighbor, r0=2.5, sigma=0.3, density=0.1)
    observables = (mean_potential_energy, rdf_bin)

    @jax.jit
    def run(p, r):  # both observables from one trajectory (one compilation)
        traj = traj_fn(p, r, V0)
        return jnp.stack([obs(traj) for obs in observables]), traj

    def values(p, r):
        return run(p, r)[0]

    traj = run(params, R0)[1]
    assert check_skin(traj, displacement_fn, skin)  # the fixed neighbour list stayed valid
    e_tot = traj.potential_energy + traj.kinetic_energy
    assert np.ptp(np.asarray(e_tot)) < 1e-4

    rng = np.random.default_rng(2)
    h = 1e-5
    leaves, tree = jax.tree.flatten(params)
    direction = jax.tree.unflatten(tree, [rng.normal(size=x.shape) for x in leaves])
    plus = jax.tree.map(lambda p, d: p + h * d, params, direction)
    minus = jax.tree.map(lambda p, d: p - h * d, params, direction)
    fd_params = (values(plus, R0) - values(minus, R0)) / (2 * h)
    dr = rng.normal(size=R0.shape)
    fd_pos = (values(params, R0 + h * dr) - values(params, R0 - h * dr)) / (2 * h)
    for k, observable in enumerate(observables):
        value, (g_params, g_pos) = observable_and_grad(observable, traj_fn)(params, R0, V0)
        np.testing.assert_allclose(value, values(params, R0)[k], rtol=1e-12)
        # directional derivatives along a random direction of the parameters ...
        ad = sum(
            jnp.vdot(g, d)
            for g, d in zip(jax.tree.leaves(g_params), jax.tree.leaves(direction), strict=True)
        )
        np.testing.assert_allclose(ad, fd_params[k], rtol=1e-5, atol=1e-9)
        # ... and of the initial positions
        np.testing.assert_allclose(jnp.vdot(g_pos, dr), fd_pos[k], rtol=1e-5, atol=1e-9)
