"""Model-level functions: initialisation, energies, forces, stress and virial.

``make_model(config) -> (init_fn, apply_fn)``: ``init_fn(key, graph) -> params`` and
``apply_fn(params, graph, *, forces=True, stress=False) -> dict``.

Forces are ``F = -∂E/∂r``; stress and virial come from a symmetric strain ε applied to the
edge vectors (equivalently to positions and cell): ``virial = -∂E/∂ε``,
``stress = (1/V) ∂E/∂ε`` (nequip/ASE sign convention). A graph with no volume (a
molecule) gets a zero stress rather than nequip's NaN, so that outputs stay finite under
``jax_debug_nans``; its virial is still defined.

Large systems: ``apply_fn(..., chunks=plan_atom_chunks(graph))`` evaluates the model a
block of atoms at a time (:class:`AtomChunks`). Allegro is strictly local: an atom's energy
depends only on the edges centred on it, so each block's energies and their gradients with
respect to its edge vectors are computed in one pass whose intermediates stay in the CPU's
cache (and whose memory does not grow with the system), and only the edge gradients are
gathered into forces and stress. The results equal the whole-graph ones (each edge's
arithmetic is the same; sums over a centre's edges run in the same order).
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


@dataclasses.dataclass(frozen=True)
class AtomChunks:
    """Static layout for evaluating a graph a block of atoms at a time.

    Attributes:
        atoms: atoms per block (the graph's nodes are cut into consecutive blocks).
        edges: edge capacity of a block; a block whose atoms have more edges does not fit
            (``apply_fn`` then returns NaN and ``chunk_overflow`` True: plan again).
    """

    atoms: int
    edges: int

    def __post_init__(self) -> None:
        if self.atoms < 1 or self.edges < 1:
            raise ValueError(f"AtomChunks needs atoms >= 1 and edges >= 1, got {self}")


def _sorted_edge_centers(graph: AtomicGraph) -> tuple[np.ndarray, np.ndarray]:
    center = np.asarray(graph.edge_center)
    mask = np.asarray(graph.edge_mask)
    _check_sorted(center, mask)
    return center, mask


def _check_sorted(center: np.ndarray, present: np.ndarray) -> None:
    real = center[present]
    if real.size and np.any(np.diff(real) < 0):
        raise ValueError(
            "block-wise evaluation needs the edges sorted by centre atom (as build_graph "
            "and jax-md's Sparse neighbour lists make them); these are not"
        )


def edges_per_block(
    center: np.ndarray, present: np.ndarray, n_nodes: int, atoms: int
) -> np.ndarray:
    """Edge slots in use (``present``) of each block of ``atoms`` consecutive atoms, from
    the edges' centres (host-side).

    Raises:
        ValueError: the slots in use are not sorted by centre.
    """
    center, present = np.asarray(center), np.asarray(present, dtype=bool)
    _check_sorted(center, present)
    n_chunks = -(-n_nodes // atoms)
    keys = np.where(present, center, n_chunks * atoms)  # absent edges after every block
    return np.diff(np.searchsorted(keys, np.arange(n_chunks + 1) * atoms))


def block_edge_counts(graph: AtomicGraph, atoms: int) -> np.ndarray:
    """Real edges of each block of ``atoms`` consecutive atoms (host-side)."""
    center, mask = _sorted_edge_centers(graph)
    return edges_per_block(center, mask, int(np.asarray(graph.species).shape[0]), atoms)


def plan_blocks(
    center: np.ndarray,
    present: np.ndarray,
    n_nodes: int,
    n_real_nodes: int | None = None,
    target_edges: int = 2048,
    slack: float = 1.0,
    multiple: int = 64,
) -> AtomChunks:
    """:func:`plan_atom_chunks` from an edge list's centres (host-side): ``center``
    ``[n_edges]`` with ``present`` ``[n_edges]`` marking the edge slots in use (their
    centres sorted), ``n_nodes`` atoms of which ``n_real_nodes`` are real."""
    center = np.asarray(center)
    present = np.asarray(present, dtype=bool)
    _check_sorted(center, present)
    n_real_nodes = max(n_nodes if n_real_nodes is None else n_real_nodes, 1)
    per_atom = max(int(np.sum(present)) / n_real_nodes, 1.0)
    atoms = int(min(max(target_edges // per_atom, 1), n_nodes))
    fullest = int(np.max(edges_per_block(center, present, n_nodes, atoms)))
    edges = max(multiple, -(-int(np.ceil(fullest * slack)) // multiple) * multiple)
    return AtomChunks(atoms=atoms, edges=min(edges, max(center.shape[0], 1)))


def plan_atom_chunks(
    graph: AtomicGraph, target_edges: int = 2048, slack: float = 1.0, multiple: int = 64
) -> AtomChunks:
    """An :class:`AtomChunks` layout for ``graph`` (host-side, from its concrete arrays).

    Blocks hold about ``target_edges`` edges (enough to keep the matrix products
    efficient, few enough that a block's intermediates stay in cache: 2048 was fastest on
    a 2-core AMD EPYC, ``benchmarks/NOTES.md``); the capacity is the fullest block's edge
    count times ``slack`` (room for neighbour counts to change, e.g. during molecular
    dynamics), rounded up to a multiple of ``multiple``.

    Raises:
        ValueError: if the graph's real edges are not sorted by centre (graphs from
            :func:`allegro_jax.data.padding.build_graph` are).
    """
    return plan_blocks(
        np.asarray(graph.edge_center),
        np.asarray(graph.edge_mask),
        int(np.asarray(graph.species).shape[0]),
        int(np.sum(np.asarray(graph.node_mask))),
        target_edges,
        slack,
        multiple,
    )


def _block_bounds(
    edge_center: jax.Array, present: jax.Array, n_nodes: int, chunks: AtomChunks
) -> tuple[jax.Array, jax.Array]:
    """Each block's first edge (``[n_blocks + 1]``) and whether the slots in use are sorted
    by centre."""
    n_chunks = -(-n_nodes // chunks.atoms)
    keys = jnp.where(present, edge_center, n_chunks * chunks.atoms)  # slots not in use: last
    bounds = jnp.searchsorted(keys, jnp.arange(n_chunks + 1) * chunks.atoms).astype(jnp.int32)
    return bounds, jnp.all(keys[1:] >= keys[:-1])


def block_edges_needed(
    edge_center: jax.Array, present: jax.Array, n_nodes: int, chunks: AtomChunks
) -> jax.Array:
    """The edge capacity an edge list needs with ``chunks``' block size (traceable): its
    fullest block's count of slots in use (``present``), or ``n_edges + 1`` if those are
    not sorted by centre (no capacity fits). ``chunks`` fits when this is at most
    ``chunks.edges``."""
    bounds, is_sorted = _block_bounds(edge_center, present, n_nodes, chunks)
    fullest = jnp.max(bounds[1:] - bounds[:-1])
    return jnp.where(is_sorted, fullest, edge_center.shape[0] + 1)


def blockwise_atomic_energies(
    module: Any,
    params: Params,
    vec: jax.Array,
    species: jax.Array,
    edge_center: jax.Array,
    edge_neighbor: jax.Array,
    edge_mask: jax.Array,
    node_mask: jax.Array,
    chunks: AtomChunks,
    with_grad: bool,
    edge_present: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array | None, jax.Array]:
    """Per-atom energies a block of atoms at a time and, with ``with_grad``, the gradient
    of their sum with respect to the edge vectors ``vec`` (one pass per block).

    ``edge_present`` marks the edge slots in use (default ``edge_mask``): their centres
    must be sorted; slots in use but masked out of the model (``edge_mask`` False, e.g.
    a neighbour list's pairs beyond ``r_max``) keep their place in their centre's block.

    Returns:
        ``(e_atom [n_nodes], dE/dvec [n_edges, 3] or None, fits)``; ``fits`` is False when
        a block has more edges than ``chunks.edges`` or the edges are not sorted (the
        results are then meaningless: callers turn them into NaN).
    """
    A, E = chunks.atoms, chunks.edges
    present = edge_mask if edge_present is None else edge_present
    n_nodes = species.shape[0]
    n_chunks = -(-n_nodes // A)
    pad = n_chunks * A - n_nodes
    species_p = jnp.concatenate([species, jnp.zeros(pad, species.dtype)])
    node_mask_p = jnp.concatenate([node_mask, jnp.zeros(pad, bool)])
    bounds, is_sorted = _block_bounds(edge_center, present, n_nodes, chunks)
    fits = is_sorted & jnp.all(bounds[1:] - bounds[:-1] <= E)
    local_neighbor = A + jnp.arange(E, dtype=edge_center.dtype)

    def block(c):
        idx = bounds[c] + jnp.arange(E, dtype=jnp.int32)
        valid = idx < bounds[c + 1]
        idx = jnp.where(valid, idx, 0)
        center = jnp.where(valid, edge_center[idx] - c * A, 0)
        sp = jnp.concatenate(
            [jax.lax.dynamic_slice(species_p, (c * A,), (A,)), species[edge_neighbor[idx]]]
        )
        nm = jax.lax.dynamic_slice(node_mask_p, (c * A,), (A,))  # only centres are read
        emask = valid & edge_mask[idx]

        def energy(v):
            e = module.apply(
                {"params": params}, v, sp, center, local_neighbor, emask, nm, num_centers=A
            )
            return jnp.sum(e), e

        if not with_grad:
            return energy(vec[idx])[1], None, idx
        (_, e), g = jax.value_and_grad(energy, has_aux=True)(vec[idx])
        return e, jnp.where(emask[:, None], g, 0.0), idx

    e, g, idx = jax.lax.map(block, jnp.arange(n_chunks))
    e_atom = e.reshape(-1)[:n_nodes]
    grad = jnp.zeros_like(vec).at[idx.reshape(-1)].add(g.reshape(-1, 3)) if with_grad else None
    return e_atom, grad, fits


def default_block_edges() -> int:
    """Edges per block for the default backend: 2048 on a CPU (the fastest of 1024–4096 on
    Si 8000, ``benchmarks/NOTES.md``); 262,144 on an accelerator, where one block should
    fill the device and blocks serve only to bound memory (not measured on a GPU yet)."""
    return 2048 if jax.default_backend() == "cpu" else 1 << 18


def default_whole_graph_bytes() -> int | None:
    """How large the whole graph's temporaries may grow before :class:`ChunkPlanner` (with
    a config) goes block-wise: 2 GiB on a CPU, where the whole graph is as fast as blocks
    or faster up to about that size (Si 4096 at l_max 2 with 2.4 GiB: 1.47 s whole, 1.8-2.1
    s in blocks; Si 17576 at l_max 1 with 3.3 GiB: 2.01 s whole, 1.85 s in blocks;
    ``benchmarks/NOTES.md`` section 10); None (the edge-count rule) on an accelerator."""
    return 2 << 30 if jax.default_backend() == "cpu" else None


def whole_graph_bytes(config: AllegroConfig, n_edges: int) -> float:
    """A rough estimate of XLA:CPU's temporaries for energy and forces of ``n_edges`` edges
    at once: ``(15 S + 6 C (l_max + 1)^2) * max(layers, 2) / 2`` values per edge (S, C:
    scalar and tensor features), within 0.8-1.6x of the compiled programs' own
    ``memory_analysis`` for l_max 1-3, 1-3 layers, S 32-256, C 16-64."""
    d = (config.l_max + 1) ** 2
    per_edge = (15 * config.num_scalar_features + 6 * config.num_tensor_features * d) * (
        max(config.num_layers, 2) / 2
    )
    return float(n_edges) * per_edge * np.dtype(config.dtype).itemsize


class ChunkPlanner:
    """Block layouts for a stream of graphs (host-side): what callers evaluating structure
    after structure (ASE, LAMMPS, model files) pass as ``apply_fn(..., chunks=...)``.

    The whole graph at once (``None``) when it has at most ``8 target_edges`` real edges,
    or, given the model's ``config`` and the default ``target_edges``, while
    :func:`whole_graph_bytes` stays within ``max_whole_bytes`` (``"auto"``:
    :func:`default_whole_graph_bytes`, 2 GiB on a CPU; an ensemble of ``members`` models
    evaluated together needs that many times the memory), or when its edges are not sorted
    by centre. Larger ones get a layout of blocks of about ``target_edges`` edges
    (``"auto"``: :func:`default_block_edges`) with ``slack`` spare capacity, kept while
    later graphs fit it (capacity only grows), so that a run does not recompile for every
    step.
    """

    def __init__(
        self,
        target_edges: int | None | str = "auto",
        slack: float = 1.05,
        config: AllegroConfig | None = None,
        max_whole_bytes: int | None | str = "auto",
        members: int = 1,
    ) -> None:
        auto = target_edges == "auto"
        self.target_edges = default_block_edges() if auto else target_edges
        self.slack = slack
        if max_whole_bytes == "auto":
            max_whole_bytes = default_whole_graph_bytes() if auto else None
        # the most (padded) edges evaluated at once by the memory rule; 0: no memory rule
        self.whole_edges_max = 0.0
        if config is not None and max_whole_bytes is not None:
            self.whole_edges_max = max_whole_bytes / (members * whole_graph_bytes(config, 1))
        self.chunks: AtomChunks | None = None

    def whole(self, graph: AtomicGraph) -> bool:
        """Whether ``graph`` is evaluated at once (before the sorted-by-centre check)."""
        if self.target_edges is None:
            return True
        edge_mask = np.asarray(graph.edge_mask)
        if int(np.sum(edge_mask)) <= 8 * self.target_edges:
            return True
        return edge_mask.shape[0] <= self.whole_edges_max

    def __call__(self, graph: AtomicGraph) -> AtomChunks | None:
        if self.whole(graph):
            return None
        old = self.chunks
        try:
            if old is not None and max(block_edge_counts(graph, old.atoms)) <= old.edges:
                return old
            new = plan_atom_chunks(graph, self.target_edges, slack=self.slack)
        except ValueError:  # edges not sorted by centre: the whole graph
            return None
        if old is not None:
            new = AtomChunks(new.atoms, max(new.edges, old.edges))
        self.chunks = new
        return new


def make_model(config: AllegroConfig) -> tuple[Callable, Callable]:
    """Return ``(init_fn, apply_fn)`` for an Allegro model.

    ``init_fn(key, graph=None) -> params``.

    ``apply_fn(params, graph, *, forces=True, stress=False, chunks=None) -> dict`` with
    ``energy`` ``[n_graphs]``, ``atomic_energies`` ``[n_nodes]`` and, as requested,
    ``forces`` ``[n_nodes, 3]``, ``virial`` and ``stress`` ``[n_graphs, 3, 3]``. Padding
    entries are 0 (zero stress for graphs without volume). With ``chunks`` (an
    :class:`AtomChunks`, from :func:`plan_atom_chunks`) the model runs a block of atoms at a
    time and the dict also holds ``chunk_overflow`` (a block had more edges than
    ``chunks.edges``, or the edges were not sorted by centre: every output is then NaN).
    Pure: wrap it in ``jax.jit`` (with ``static_argnames=("forces", "stress", "chunks")``).
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

    def outputs(graph, e_graph, e_atom, d_pos=None, d_strain=None):
        """The output dict from the energies and, as requested, ``dE/dr`` and ``dE/dε``."""
        out = {"energy": e_graph, "atomic_energies": e_atom}
        if d_pos is not None:
            out["forces"] = jnp.where(graph.node_mask[:, None], -d_pos, 0.0)
        if d_strain is not None:  # dE/dε, [n_graphs, 3, 3]
            volume = jnp.abs(jnp.linalg.det(graph.cell.astype(d_strain.dtype)))[:, None, None]
            has_v = volume > 0
            out["virial"] = -d_strain
            out["stress"] = jnp.where(has_v, d_strain / jnp.where(has_v, volume, 1.0), 0.0)
        return out

    def chunked_atom_energies(params, graph, vec, chunks, with_grad):
        """Per-atom energies block by block and, with ``with_grad``, ``dE/dvec``."""
        graph = jax.tree.map(jnp.asarray, graph)  # host arrays cannot take traced indices
        return blockwise_atomic_energies(
            module,
            params,
            vec,
            graph.species,
            graph.edge_center,
            graph.edge_neighbor,
            graph.edge_mask,
            graph.node_mask,
            chunks,
            with_grad,
        )

    def apply_chunked(params, graph, forces, stress, chunks):
        pos = graph.positions
        strain = jnp.zeros((graph.n_graphs, 3, 3), pos.dtype)
        vec, vjp = jax.vjp(lambda p, s: edge_vectors(graph, p, s if stress else None), pos, strain)
        e_atom, grad, fits = chunked_atom_energies(params, graph, vec, chunks, forces or stress)
        e_graph = jax.ops.segment_sum(e_atom, graph.node_graph, num_segments=graph.n_graphs)
        e_graph = jnp.where(graph.graph_mask, e_graph, 0.0)
        d_pos, d_strain = vjp(grad) if forces or stress else (None, None)
        out = outputs(
            graph, e_graph, e_atom, d_pos if forces else None, d_strain if stress else None
        )
        out = {k: jnp.where(fits, v, jnp.nan) for k, v in out.items()}
        out["chunk_overflow"] = ~fits
        return out

    def apply_fn(
        params: Params,
        graph: AtomicGraph,
        *,
        forces: bool = True,
        stress: bool = False,
        chunks: AtomChunks | None = None,
    ) -> dict[str, jax.Array]:
        pos = graph.positions
        if chunks is not None:
            return apply_chunked(params, graph, forces, stress, chunks)
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
        return outputs(
            graph, e_graph, e_atom, grads[0] if forces else None, grads[1] if stress else None
        )

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
