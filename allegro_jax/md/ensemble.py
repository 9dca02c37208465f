"""Ensemble MD: jax-md forms of an ensemble (:mod:`allegro_jax.nn.ensemble`).

* :func:`make_ensemble_energy_fn`: the members' mean energy, which the jax-md integrators
  integrate (its gradient is the mean force);
* :func:`make_force_std_fn`: the per-atom force standard deviation ``σ_i`` for the thermo
  log;
* :func:`make_ensemble_system`: an :class:`allegro_jax.md.integrate.MDSystem` driven by the
  ensemble mean (pass it as ``make_simulation(..., system=...)``) and its ``σ_i`` function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..config import AllegroConfig
from ..nn.ensemble import ensemble_size_of, force_std, member
from .integrate import make_system
from .jax_md import make_energy_fn

Params = Any
Array = jax.Array


def member_energies_and_forces(
    config: AllegroConfig,
    stacked: Params,
    displacement_fn: Callable[..., Array],
    species: Array | np.ndarray,
    R: Array,
    neighbor: Any,
    **kwargs: Any,
) -> tuple[Array, Array]:
    """Each member's energy ``[K]`` and ``∂E_k/∂R`` ``[K, n_atoms, 3]``, one member after
    the other (``jax.lax.scan``).

    On a CPU this is ~3× faster than ``jax.vmap`` over the members (water, 192 atoms,
    4 members, one core: 22 ms against 74 ms per force call; a single model 7 ms;
    ``benchmarks/results/ensemble_md.json``), and its cost grows linearly with the members.
    """

    def body(carry: None, p: Params) -> tuple[None, tuple[Array, Array]]:
        e = make_energy_fn(config, p, displacement_fn, species=species)
        return carry, jax.value_and_grad(e)(R, neighbor, **kwargs)

    _, (energies, grads) = jax.lax.scan(body, None, stacked)
    return energies, grads


def make_ensemble_energy_fn(
    config: AllegroConfig,
    params: Params,
    displacement_fn: Callable[..., Array],
    *,
    species: Array | np.ndarray,
) -> Callable[..., Array]:
    """jax-md ``energy_fn(R, neighbor, **kwargs) -> Ē``, the members' mean energy (eV).

    Same arguments as :func:`allegro_jax.md.jax_md.make_energy_fn`, with stacked ``params``;
    ``-∂Ē/∂R`` is the mean force, so every jax-md integrator runs on the ensemble mean.

    Called with ``R`` and the neighbour list only (NVE, NVT), the members' energies and
    gradients come from one :func:`member_energies_and_forces` scan and the value returned
    carries their mean gradient as its first derivative in ``R`` (higher derivatives in
    ``R`` are zero there). With keyword arguments (a strain ``perturbation`` for the stress,
    a changing ``box`` in NPT) every derivative is exact: the members are vmapped.
    """
    stacked = jax.tree.map(jnp.asarray, params)

    def energy_fn(R: Array, neighbor: Any = None, **kwargs: Any) -> Array:
        if kwargs:

            def one(p):
                return make_energy_fn(config, p, displacement_fn, species=species)(
                    R, neighbor, **kwargs
                )

            return jnp.mean(jax.vmap(one)(stacked))
        R0 = jax.lax.stop_gradient(R)
        energies, grads = member_energies_and_forces(
            config, stacked, displacement_fn, species, R0, neighbor
        )
        e_mean = jax.lax.stop_gradient(jnp.mean(energies))
        g_mean = jax.lax.stop_gradient(jnp.mean(grads, axis=0))
        return e_mean + jnp.sum(g_mean * (R - R0))

    return energy_fn


def make_force_std_fn(
    config: AllegroConfig,
    params: Params,
    displacement_fn: Callable[..., Array],
    *,
    species: Array | np.ndarray,
) -> Callable[..., Array]:
    """jax-md ``force_std_fn(R, neighbor, **kwargs) -> σ [n_atoms]`` (eV/Å).

    Forces are ``−∂E_k/∂R``: real-space forces also for ``space.periodic_general``'s
    fractional coordinates (jax-md defines that transform's derivative so).
    """
    stacked = jax.tree.map(jnp.asarray, params)

    def force_std_fn(R: Array, neighbor: Any, **kwargs: Any) -> Array:
        _, grads = member_energies_and_forces(
            config, stacked, displacement_fn, species, R, neighbor, **kwargs
        )
        return force_std(-grads)

    return force_std_fn


def make_ensemble_system(
    config: AllegroConfig, params: Params, species: np.ndarray, **system_kwargs: Any
) -> tuple[Any, Callable[..., Array]]:
    """An MD system driven by the ensemble mean, and its ``σ_i`` function.

    Args:
        config: the model config.
        params: stacked ensemble parameters.
        species: ``[n_atoms]`` type indices.
        **system_kwargs: passed to :func:`allegro_jax.md.integrate.make_system` (``cell``,
            ``skin``, ``real_coordinates``, ...).

    Returns:
        ``(system, force_std_fn)``: pass ``system=`` to
        :func:`allegro_jax.md.integrate.make_simulation`; ``force_std_fn(R, neighbor,
        **kwargs) -> [n_atoms]`` takes the state's positions and neighbour list (and
        ``box=`` in NPT), like the system's ``energy_fn``.
    """
    ensemble_size_of(params)
    system = make_system(config, member(params, 0), species, **system_kwargs)
    energy_fn = make_ensemble_energy_fn(config, params, system.displacement_fn, species=species)
    std_fn = make_force_std_fn(config, params, system.displacement_fn, species=species)
    # (the member's block-wise energy would drive the dynamics with one member: none)
    return dataclasses.replace(system, energy_fn=energy_fn, blockwise_energy_fn=None), std_fn
