"""Model-level functions: initialisation, energies, forces, stress and virial.

``make_model(config) -> (init_fn, apply_fn)``: ``init_fn(key, graph) -> params`` and
``apply_fn(params, graph, *, forces=True, stress=False) -> dict``.

Forces are ``F = -∂E/∂r``; stress and virial come from a symmetric strain ε applied to the
edge vectors (equivalently to positions and cell): ``virial = -∂E/∂ε``,
``stress = (1/V) ∂E/∂ε`` (nequip/ASE sign convention). A graph with no volume (a
molecule) gets a zero stress rather than nequip's NaN, so that outputs stay finite under
``jax_debug_nans``; its virial is still defined.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..config import AllegroConfig
from ..data.graph import AtomicGraph, Structure
from ..data.padding import build_graph
from .allegro import AllegroCurrent, masked_edges
from .allegro_paper import AllegroPaper
from .pair import pair_atomic_energies

Params = Any


def check_dtype_support(config: AllegroConfig) -> None:
    if config.model_dtype == "float64" and not jax.config.jax_enable_x64:
        raise RuntimeError(
            "model_dtype='float64' needs 64-bit JAX: call "
            "jax.config.update('jax_enable_x64', True) (or set JAX_ENABLE_X64=1) before "
            "creating arrays"
        )


def build_module(config: AllegroConfig):
    """The Flax module computing per-atom energies from edge vectors."""
    check_dtype_support(config)
    if config.generation == "current":
        return AllegroCurrent(config)
    return AllegroPaper(config)


def edge_vectors(
    graph: AtomicGraph, positions: jax.Array | None = None, strain: jax.Array | None = None
) -> jax.Array:
    """``r_ij = pos_j - pos_i + shift_ij · cell`` (``[n_edges, 3]``), optionally strained.

    Args:
        graph: the batch.
        positions: overrides ``graph.positions`` (to differentiate with respect to them).
        strain: ``[n_graphs, 3, 3]``; its symmetric part ε maps each edge vector r to
            ``r (I + ε)``, the same as straining positions and cell.
    """
    pos = graph.positions if positions is None else positions
    edge_graph = graph.node_graph[graph.edge_center]  # [n_edges]
    cell = graph.cell.astype(pos.dtype)[edge_graph]  # [n_edges, 3, 3]
    shift = jnp.einsum("ej,ejk->ek", graph.edge_shift.astype(pos.dtype), cell)
    vec = pos[graph.edge_neighbor] - pos[graph.edge_center] + shift
    if strain is not None:
        eps = 0.5 * (strain + jnp.swapaxes(strain, -1, -2))
        vec = vec + jnp.einsum("ej,ejk->ek", vec, eps[edge_graph])
    return vec


def dummy_graph(config: AllegroConfig, dtype=np.float32) -> AtomicGraph:
    """A tiny valid graph (two atoms of the first type, one pair) for initialisation."""
    r = 0.5 * config.r_max
    return AtomicGraph(
        positions=np.array([[0.0, 0.0, 0.0], [r, 0.0, 0.0], [10 * r, 0, 0]], dtype),
        species=np.zeros(3, np.int32),
        node_graph=np.array([0, 0, 1], np.int32),
        node_mask=np.array([True, True, False]),
        edge_center=np.array([0, 1, 2], np.int32),
        edge_neighbor=np.array([1, 0, 2], np.int32),
        edge_shift=np.zeros((3, 3), dtype),
        edge_mask=np.array([True, True, False]),
        cell=np.zeros((2, 3, 3), dtype),
        pbc=np.zeros((2, 3), bool),
        n_node=np.array([2, 1], np.int32),
        graph_mask=np.array([True, False]),
    )


def make_model(config: AllegroConfig) -> tuple[Callable, Callable]:
    """Return ``(init_fn, apply_fn)`` for an Allegro model.

    ``init_fn(key, graph=None) -> params``.

    ``apply_fn(params, graph, *, forces=True, stress=False) -> dict`` with ``energy``
    ``[n_graphs]``, ``atomic_energies`` ``[n_nodes]`` and, as requested, ``forces``
    ``[n_nodes, 3]``, ``virial`` and ``stress`` ``[n_graphs, 3, 3]``. Padding entries are 0
    (zero stress for graphs without volume). Pure: wrap it in ``jax.jit`` (with
    ``static_argnames=("forces", "stress")``).
    """
    module = build_module(config)

    @jax.jit
    def _init(key, g):
        vec = edge_vectors(g)
        return module.init(
            key, vec, g.species, g.edge_center, g.edge_neighbor, g.edge_mask, g.node_mask
        )["params"]

    def init_fn(key: jax.Array, graph: AtomicGraph | None = None) -> Params:
        # jitted: tracing the model once is much cheaper than running it op by op
        return _init(key, dummy_graph(config) if graph is None else graph)

    def energies(params, graph, positions, strain):
        vec = edge_vectors(graph, positions, strain)
        e_atom = module.apply(
            {"params": params},
            vec,
            graph.species,
            graph.edge_center,
            graph.edge_neighbor,
            graph.edge_mask,
            graph.node_mask,
        )
        e_graph = jax.ops.segment_sum(e_atom, graph.node_graph, num_segments=graph.n_graphs)
        e_graph = jnp.where(graph.graph_mask, e_graph, 0.0)
        return e_graph, e_atom

    def apply_fn(
        params: Params, graph: AtomicGraph, *, forces: bool = True, stress: bool = False
    ) -> dict[str, jax.Array]:
        pos = graph.positions
        if not forces and not stress:
            e_graph, e_atom = energies(params, graph, pos, None)
            return {"energy": e_graph, "atomic_energies": e_atom}
        strain = jnp.zeros((graph.n_graphs, 3, 3), pos.dtype)

        def total(p, s):
            e_graph, e_atom = energies(params, graph, p, s if stress else None)
            return jnp.sum(e_graph), (e_graph, e_atom)

        argnums = (0, 1) if stress else (0,)
        (_, (e_graph, e_atom)), grads = jax.value_and_grad(total, argnums=argnums, has_aux=True)(
            pos, strain
        )
        out = {"energy": e_graph, "atomic_energies": e_atom}
        if forces:
            out["forces"] = jnp.where(graph.node_mask[:, None], -grads[0], 0.0)
        if stress:
            de = grads[1]  # dE/dε, [n_graphs, 3, 3]
            volume = jnp.abs(jnp.linalg.det(graph.cell.astype(pos.dtype)))[:, None, None]
            has_v = volume > 0
            out["virial"] = -de
            out["stress"] = jnp.where(has_v, de / jnp.where(has_v, volume, 1.0), 0.0)
        return out

    return init_fn, apply_fn


def subtract_pair_potential(config: AllegroConfig, structures: Sequence[Structure]) -> list:
    """The structures with ``config.pair_potential``'s energy and forces taken off their labels.

    What the network has to learn: the training statistics (energy shifts, force scale) are
    computed from these residual labels. Returns the input list when there is no pair term.
    """
    if not config.pair_potential:
        return list(structures)

    @jax.jit
    def energy_forces(g):
        def energy(pos):
            _, r = masked_edges(edge_vectors(g, pos), g.edge_mask, config.r_max)
            e = pair_atomic_energies(
                config, r, g.species, g.edge_center, g.edge_neighbor, g.edge_mask
            )
            return jnp.sum(jnp.where(g.node_mask, e, 0.0))

        e, grad = jax.value_and_grad(energy)(g.positions)
        return e, -grad

    dtype = np.float64 if jax.config.jax_enable_x64 else np.float32
    out = []
    for s in structures:
        g = build_graph([s], config.type_names, config.r_max, dtype=dtype)
        e, f = (np.asarray(x, np.float64) for x in energy_forces(g))
        n = len(s.numbers)
        out.append(
            dataclasses.replace(
                s,
                energy=None if s.energy is None else s.energy - float(e),
                forces=None if s.forces is None else np.asarray(s.forces) - f[:n],
            )
        )
    return out
