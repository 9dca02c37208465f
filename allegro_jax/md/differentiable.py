"""Differentiable NVE trajectories and observables.

``make_nve_trajectory_fn(...)`` returns ``trajectory_fn(params, R0, V0) -> Trajectory``, a
pure function (velocity Verlet in ``lax.scan``) that JAX differentiates end to end with
respect to the model parameters, the initial positions and the initial velocities. The
neighbour list is FIXED during the run (a jax-md list built with a skin at ``R0`` and passed
in): that keeps the function pure and differentiable; :func:`check_skin` verifies afterwards
that no atom moved far enough to invalidate it (``2 · max displacement < skin``).

Observables (functions of a :class:`Trajectory`):

* :func:`mean_potential_energy` ``⟨E_pot⟩`` over the frames;
* :func:`make_rdf_bin_fn` one Gaussian-smoothed radial-distribution bin,
  ``g_σ(r₀) = ⟨Σ_{i≠j} exp(−(r_ij − r₀)²/2σ²)⟩ / (N ρ 4π r₀² √(2π) σ)`` (pairs within the
  neighbour list, so ``r₀ + 4σ`` must stay below ``r_max + skin``); ρ = N/V (free space:
  the caller's reference density).

``observable_and_grad(observable, trajectory_fn)`` gives the value and the gradients with
respect to params and R0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..config import AllegroConfig
from . import units
from .jax_md import _pairs, make_energy_fn

Array = jax.Array
Params = Any


class Trajectory(NamedTuple):
    """Frames of a short run (``n_frames = n_steps + 1``, the initial frame included).

    Attributes:
        positions: ``[n_frames, n_atoms, 3]`` (the space's coordinates).
        velocities: ``[n_frames, n_atoms, 3]`` in Å/fs.
        potential_energy: ``[n_frames]`` eV.
        kinetic_energy: ``[n_frames]`` eV.
    """

    positions: Array
    velocities: Array
    potential_energy: Array
    kinetic_energy: Array


def make_nve_trajectory_fn(
    config: AllegroConfig,
    displacement_fn: Callable[..., Array],
    shift_fn: Callable[..., Array],
    *,
    species: np.ndarray,
    masses_amu: np.ndarray,
    neighbor: Any,
    timestep_fs: float,
    n_steps: int,
) -> Callable[[Params, Array, Array], Trajectory]:
    """A differentiable velocity-Verlet trajectory with a fixed neighbour list.

    Args:
        config: model configuration.
        displacement_fn: jax-md displacement.
        shift_fn: jax-md shift.
        species: ``[n_atoms]`` type indices.
        masses_amu: ``[n_atoms]`` masses.
        neighbor: a jax-md neighbour list (with a skin) valid for the whole run.
        timestep_fs: timestep in fs.
        n_steps: number of steps.

    Returns:
        ``trajectory_fn(params, R0, V0) -> Trajectory`` with ``V0`` in Å/fs.
    """
    dt = units.fs_to_internal(timestep_fs)
    mass = jnp.asarray(masses_amu)[:, None]  # [n_atoms, 1]

    def trajectory_fn(params: Params, R0: Array, V0: Array) -> Trajectory:
        energy_fn = make_energy_fn(config, params, displacement_fn, species=species)
        value_and_force = jax.value_and_grad(lambda R: -energy_fn(R, neighbor))

        def forces(R: Array) -> tuple[Array, Array]:
            neg_e, f = value_and_force(R)
            return -neg_e, f

        def step(carry: tuple[Array, Array, Array], _: None) -> tuple[Any, Any]:
            R, V, F = carry  # V in Å/t₀
            V = V + 0.5 * dt * F / mass
            R = shift_fn(R, dt * V)
            E, F = forces(R)
            V = V + 0.5 * dt * F / mass
            ke = 0.5 * jnp.sum(mass * V**2)
            return (R, V, F), (R, V, E, ke)

        V0i = V0 * units.TIME_UNIT_FS
        E0, F0 = forces(R0)
        _, (Rs, Vs, Es, kes) = jax.lax.scan(step, (R0, V0i, F0), None, length=n_steps)
        ke0 = 0.5 * jnp.sum(mass * V0i**2)
        cat = lambda a, b: jnp.concatenate([a[None], b])  # noqa: E731
        return Trajectory(
            positions=cat(R0, Rs),
            velocities=cat(V0i, Vs) / units.TIME_UNIT_FS,
            potential_energy=cat(E0, Es),
            kinetic_energy=cat(ke0, kes),
        )

    return trajectory_fn


def check_skin(traj: Trajectory, displacement_fn: Callable[..., Array], skin: float) -> bool:
    """Whether the fixed neighbour list stayed valid (``2 · max displacement < skin``)."""
    disp = jax.vmap(jax.vmap(displacement_fn), in_axes=(0, None))
    d = jnp.linalg.norm(disp(traj.positions, traj.positions[0]), axis=-1)
    return bool(2.0 * jnp.max(d) < skin)


def mean_potential_energy(traj: Trajectory) -> Array:
    """``⟨E_pot⟩`` over the frames, eV."""
    return jnp.mean(traj.potential_energy)


def make_rdf_bin_fn(
    displacement_fn: Callable[..., Array],
    neighbor: Any,
    *,
    r0: float,
    sigma: float,
    density: float,
) -> Callable[[Trajectory], Array]:
    """One Gaussian-smoothed RDF bin ``g_σ(r₀)`` averaged over the frames.

    Args:
        displacement_fn: jax-md displacement.
        neighbor: the (fixed) neighbour list of the run.
        r0: bin centre in Å.
        sigma: Gaussian width in Å.
        density: number density ρ in 1/Å³.

    Returns:
        ``rdf_bin(traj) -> scalar``.
    """

    def one_frame(R: Array) -> Array:
        n = R.shape[0]
        senders, receivers = _pairs(neighbor, n)
        valid = (senders < n) & (receivers < n)
        i = jnp.where(valid, senders, 0)
        j = jnp.where(valid, receivers, 0)
        vec = jax.vmap(displacement_fn)(R[j], R[i])
        r2 = jnp.sum(vec**2, axis=-1)
        r = jnp.sqrt(jnp.where(valid, r2, 1.0))
        w = jnp.where(valid, jnp.exp(-0.5 * ((r - r0) / sigma) ** 2), 0.0)
        norm = n * density * 4.0 * math.pi * r0**2 * math.sqrt(2.0 * math.pi) * sigma
        return jnp.sum(w) / norm

    def rdf_bin(traj: Trajectory) -> Array:
        return jnp.mean(jax.vmap(one_frame)(traj.positions))

    return rdf_bin


def observable_and_grad(
    observable: Callable[[Trajectory], Array],
    trajectory_fn: Callable[[Params, Array, Array], Trajectory],
) -> Callable[[Params, Array, Array], tuple[Array, tuple[Params, Array]]]:
    """``fn(params, R0, V0) -> (value, (d value/d params, d value/d R0))``, jitted."""

    def value(params: Params, R0: Array, V0: Array) -> Array:
        return observable(trajectory_fn(params, R0, V0))

    return jax.jit(jax.value_and_grad(value, argnums=(0, 1)))
