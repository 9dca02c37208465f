"""Ensembles of K models evaluated in one program (``jax.vmap`` over stacked parameters).

An ensemble's parameters are ONE pytree whose every leaf has a leading member axis ``K``
(:func:`stack_members`). The ensemble predicts the member mean,

    Ē = (1/K) Σ_k E_k,      F̄_i = (1/K) Σ_k F_ik  (= −∂Ē/∂r_i),

and its spread is the uncertainty. The per-atom force standard deviation is DeePMD-kit's
model deviation (population, not sample, variance):

    σ_i = sqrt( (1/K) Σ_k ‖F_ik − F̄_i‖² )        [eV/Å],

and the energy standard deviation ``σ_E = sqrt((1/K) Σ_k (E_k − Ē)²)`` per structure.

* :func:`make_ensemble_apply_fn`: the model's ``apply_fn`` for stacked parameters (mean
  outputs plus ``energy_std``, ``forces_std`` and the members' energies and forces).
* :func:`make_ensemble_energy_fn`, :func:`make_force_std_fn`: the jax-md forms (mean energy
  for the integrators, ``σ_i`` for the thermo log), :func:`make_ensemble_system` an
  :class:`allegro_jax.md.integrate.MDSystem` driven by the ensemble mean (pass it as
  ``make_simulation(..., system=...)``), :func:`make_force_std_log_fn` the max/mean σ_i
  columns of an MD log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from allegro_jax.config import AllegroConfig

Params = Any
Array = jax.Array


def stack_members(members: Sequence[Any]) -> Any:
    """Stack K pytrees of the same structure into one with a leading member axis."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    return jax.tree.map(lambda *xs: jnp.stack(xs), *members)


def member(stacked: Any, k: int) -> Any:
    """Member ``k`` of a stacked pytree."""
    return jax.tree.map(lambda x: x[k], stacked)


def ensemble_size_of(stacked: Any) -> int:
    """The leading-axis length of a stacked pytree (checks that every leaf agrees)."""
    sizes = {int(np.shape(x)[0]) if np.ndim(x) else None for x in jax.tree.leaves(stacked)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"not a stacked ensemble: leading axes {sorted(map(str, sizes))}")
    return sizes.pop()


def force_std(forces: Array) -> Array:
    """``σ_i = sqrt(mean_k ‖F_ik − F̄_i‖²)``: ``[K, n_nodes, 3] -> [n_nodes]``."""
    dev = forces - jnp.mean(forces, axis=0)
    return jnp.sqrt(jnp.mean(jnp.sum(dev**2, axis=-1), axis=0))


def make_ensemble_apply_fn(apply_fn: Callable) -> Callable:
    """``ensemble_apply(stacked_params, graph, *, forces=True, stress=False) -> dict``.

    The member outputs of ``apply_fn`` averaged over the member axis (``energy``,
    ``atomic_energies``, ``forces``, ``virial``, ``stress``), plus ``energy_std``
    ``[n_graphs]``, ``forces_std`` ``[n_nodes]`` (σ_i, zero on padding),
    ``member_energy`` ``[K, n_graphs]`` and ``member_forces`` ``[K, n_nodes, 3]``. Pure;
    wrap it in ``jax.jit`` with ``static_argnames=("forces", "stress")``.
    """

    def ensemble_apply(params: Params, graph: Any, *, forces: bool = True, stress: bool = False):
        preds = jax.vmap(lambda p: apply_fn(p, graph, forces=forces, stress=stress))(params)
        out = {k: jnp.mean(v, axis=0) for k, v in preds.items()}
        out["energy_std"] = jnp.std(preds["energy"], axis=0)
        out["member_energy"] = preds["energy"]
        if forces:
            out["forces_std"] = jnp.where(graph.node_mask, force_std(preds["forces"]), 0.0)
            out["member_forces"] = preds["forces"]
        return out

    return ensemble_apply


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
    """
    from allegro_jax.md.jax_md import make_energy_fn

    stacked = jax.tree.map(jnp.asarray, params)

    def energy_fn(R: Array, neighbor: Any = None, **kwargs: Any) -> Array:
        def one(p):
            return make_energy_fn(config, p, displacement_fn, species=species)(
                R, neighbor, **kwargs
            )

        return jnp.mean(jax.vmap(one)(stacked))

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
    from allegro_jax.md.jax_md import make_energy_fn

    stacked = jax.tree.map(jnp.asarray, params)

    def force_std_fn(R: Array, neighbor: Any, **kwargs: Any) -> Array:
        def forces(p):
            e = make_energy_fn(config, p, displacement_fn, species=species)
            return -jax.grad(e)(R, neighbor, **kwargs)

        return force_std(jax.vmap(forces)(stacked))

    return force_std_fn


def make_force_std_log_fn(force_std_fn: Callable[..., Array]) -> Callable[..., dict[str, Array]]:
    """Thermo-log columns of an ensemble MD run (jittable, for one logged step).

    ``log_fn(R, neighbor, **kwargs) -> {"force_std_max": max_i σ_i, "force_std_mean":
    mean_i σ_i}`` in eV/Å, with ``force_std_fn`` from :func:`make_force_std_fn` or
    :func:`make_ensemble_system`; call it where the thermo row is computed, with the
    state's positions, neighbour list and (NPT) ``box=``.
    """

    def log_fn(R: Array, neighbor: Any, **kwargs: Any) -> dict[str, Array]:
        sigma = force_std_fn(R, neighbor, **kwargs)
        return {"force_std_max": jnp.max(sigma), "force_std_mean": jnp.mean(sigma)}

    return log_fn


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
    from allegro_jax.md.integrate import make_system

    ensemble_size_of(params)
    system = make_system(config, member(params, 0), species, **system_kwargs)
    energy_fn = make_ensemble_energy_fn(config, params, system.displacement_fn, species=species)
    std_fn = make_force_std_fn(config, params, system.displacement_fn, species=species)
    return dataclasses.replace(system, energy_fn=energy_fn), std_fn
