"""Ensembles of K models evaluated in one program (``jax.vmap`` over stacked parameters).

An ensemble's parameters are ONE pytree whose every leaf has a leading member axis ``K``
(:func:`stack_members`). The ensemble predicts the member mean,

    Ē = (1/K) Σ_k E_k,      F̄_i = (1/K) Σ_k F_ik  (= −∂Ē/∂r_i),

and its spread is the uncertainty. The per-atom force standard deviation is DeePMD-kit's
model deviation (population, not sample, variance):

    σ_i = sqrt( (1/K) Σ_k ‖F_ik − F̄_i‖² )        [eV/Å],

and the energy standard deviation ``σ_E = sqrt((1/K) Σ_k (E_k − Ē)²)`` per structure.

:func:`make_ensemble_apply_fn` is the model's ``apply_fn`` for stacked parameters (mean
outputs plus ``energy_std``, ``forces_std`` and the members' energies and forces); the
jax-md forms (mean energy for the integrators, ``σ_i`` for the thermo log) are in
:mod:`allegro_jax.md.ensemble`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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
    """``ensemble_apply(stacked_params, graph, *, forces=True, stress=False, chunks=None)``.

    The member outputs of ``apply_fn`` averaged over the member axis (``energy``,
    ``atomic_energies``, ``forces``, ``virial``, ``stress``), plus ``energy_std``
    ``[n_graphs]``, ``forces_std`` ``[n_nodes]`` (σ_i, zero on padding),
    ``member_energy`` ``[K, n_graphs]`` and ``member_forces`` ``[K, n_nodes, 3]``; with
    ``chunks`` (block-wise evaluation, see :func:`allegro_jax.nn.model.make_model`) also
    ``chunk_overflow``. Pure; wrap it in ``jax.jit`` with
    ``static_argnames=("forces", "stress", "chunks")``.
    """

    def ensemble_apply(
        params: Params, graph: Any, *, forces: bool = True, stress: bool = False, chunks=None
    ):
        kw = {} if chunks is None else {"chunks": chunks}
        preds = jax.vmap(lambda p: apply_fn(p, graph, forces=forces, stress=stress, **kw))(params)
        overflow = preds.pop("chunk_overflow", None)
        out = {k: jnp.mean(v, axis=0) for k, v in preds.items()}
        if overflow is not None:
            out["chunk_overflow"] = jnp.any(overflow)
        out["energy_std"] = jnp.std(preds["energy"], axis=0)
        out["member_energy"] = preds["energy"]
        if forces:
            out["forces_std"] = jnp.where(graph.node_mask, force_std(preds["forces"]), 0.0)
            out["member_forces"] = preds["forces"]
        return out

    return ensemble_apply
