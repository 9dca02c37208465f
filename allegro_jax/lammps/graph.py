"""The graph one MPI rank evaluates: its owned atoms and the ghost shell around them.

LAMMPS gives each rank its OWNED atoms (``0 .. nlocal-1``) and GHOST atoms
(``nlocal .. nlocal+nghost-1``): periodic images and atoms of neighbouring ranks, as
explicit coordinates, out to the communication cutoff. Allegro is strictly local: the
energy is ``E = Σ_i E_i`` and ``E_i`` depends only on the edges ``i → j`` with
``|r_ij| < r_max`` (no message passing). For an owned atom ``k``,

    F_k = -∂E/∂x_k = Σ_{e: j(e)=k} g_e - Σ_{e: i(e)=k} g_e,        g_e = ∂E_{i(e)}/∂r_e,

runs over the edges that END at ``k`` (their centres are atoms within ``r_max`` of ``k``,
owned or ghost) and the edges that START at ``k``. So a rank evaluates the energies of

* its owned atoms (graph 0), and
* the ghost atoms within ``r_max`` of an owned atom (graph 1, the *ghost centres*),

each with its full neighbourhood. The neighbours of a ghost centre lie within ``2 r_max``
of an owned atom, hence the LAMMPS ghost cutoff ``>= 2 r_max + skin``. The gradient of the
sum of these energies with respect to the owned atoms' coordinates is then the exact force
on them, with no reverse communication. (Several images of one atom are separate nodes; an
edge ending at owned atom ``k`` is counted once, at the node ``k`` itself, so small boxes
with many images are exact too.)

With the atom IDs (``tags``), ghosts that are periodic images of the rank's OWN atoms are
folded into those atoms: an edge to such an image becomes an edge to the owned node plus a
Cartesian displacement (``edge_shift`` with a unit ``cell``), and each other rank's atom is a
ghost centre through one image only (any image within ``r_max`` of an owned atom sees the
whole neighbourhood, folded). Every edge of the periodic system that starts at an owned atom
or at a ghost centre is then present exactly once, so the forces stay exact, and a single
rank (all ghosts are its own images) evaluates exactly the periodic single-process graph.

Each rank's energy is ``energy[0]`` (owned atoms only; ghost-centre energies duplicate other
ranks' atoms). Its virial is ``virial[0]``, the derivative with respect to a strain of the
edges that start at owned atoms: summed over ranks (LAMMPS does that for fix virials) it is
the total virial ``-Σ_e r_e ⊗ g_e``. Both come from one call of the public model
``apply_fn(params, graph, forces=True, stress=True)``: owned atoms are graph 0, ghost nodes
graph 1, padding graph 2; cells are zero (ghosts are explicit images).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import vesin

from allegro_jax.data.graph import AtomicGraph
from allegro_jax.data.padding import (
    DEFAULT_MIN_EDGES,
    DEFAULT_MIN_NODES,
    Budget,
    bucket,
    padding_positions,
)

N_GRAPHS = 3  # owned atoms, ghost nodes, padding


@dataclasses.dataclass(frozen=True)
class LocalGraphCounts:
    """Sizes of one rank's graph (before padding).

    Attributes:
        n_owned: owned atoms.
        n_ghost_centres: ghost atoms within ``r_max`` of an owned atom (energies evaluated).
        n_ghost_neighbours: other ghost atoms that are neighbours of a ghost centre.
        n_ghost_available: ghost atoms LAMMPS provided.
        n_ghost_images: ghost atoms (near the owned ones) that are periodic images of owned
            atoms, folded into them (with ``tags``).
        n_owned_edges: edges starting at owned atoms.
        n_ghost_edges: edges starting at ghost centres (the ghost-shell work).
    """

    n_owned: int
    n_ghost_centres: int
    n_ghost_neighbours: int
    n_ghost_available: int
    n_ghost_images: int
    n_owned_edges: int
    n_ghost_edges: int

    @property
    def n_nodes(self) -> int:
        return self.n_owned + self.n_ghost_centres + self.n_ghost_neighbours

    @property
    def n_edges(self) -> int:
        return self.n_owned_edges + self.n_ghost_edges


class LocalGraph(NamedTuple):
    """One rank's padded graph and what it holds.

    Attributes:
        graph: the padded :class:`AtomicGraph` (owned atoms are nodes ``0 .. nlocal-1``).
        counts: its real sizes.
        budget: its padded sizes.
        nodes: ``[counts.n_nodes]`` index into the LAMMPS arrays (owned + ghost) of each
            real node.
    """

    graph: AtomicGraph
    counts: LocalGraphCounts
    budget: Budget
    nodes: np.ndarray


def _pairs(points: np.ndarray, r_max: float, n_threads: int) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs (both directions) closer than ``r_max`` in open space."""
    if points.shape[0] < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    calculator = vesin.NeighborList(cutoff=float(r_max), full_list=True, n_threads=n_threads)
    i, j = calculator.compute(
        points=points, box=np.zeros((3, 3)), periodic=False, quantities="ij", copy=True
    )
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    d = points[j] - points[i]
    keep = np.einsum("ij,ij->i", d, d) < r_max * r_max  # the search may return a bit more
    return i[keep], j[keep]


def local_graph_budget(counts: LocalGraphCounts, previous: Budget | None = None) -> Budget:
    """The size bucket for these counts, never smaller than ``previous`` (budgets only grow,
    so a run compiles a handful of shapes)."""
    budget = Budget(
        n_nodes=bucket(counts.n_nodes + 1, minimum=DEFAULT_MIN_NODES),
        n_edges=bucket(max(counts.n_edges, 1), minimum=DEFAULT_MIN_EDGES),
        n_graphs=N_GRAPHS,
    )
    if previous is None:
        return budget
    return Budget(
        n_nodes=max(budget.n_nodes, previous.n_nodes),
        n_edges=max(budget.n_edges, previous.n_edges),
        n_graphs=N_GRAPHS,
    )


def build_local_graph(
    positions: np.ndarray,
    species: np.ndarray,
    nlocal: int,
    r_max: float,
    *,
    budget: Budget | None = None,
    dtype: np.dtype | type = np.float64,
    n_threads: int = 1,
    ghost_centres: bool = True,
    tags: np.ndarray | None = None,
) -> LocalGraph:
    """One rank's padded graph from LAMMPS's owned + ghost coordinates.

    Args:
        positions: ``[nlocal + nghost, 3]`` coordinates (Å), owned atoms first.
        species: ``[nlocal + nghost]`` model type indices (all ``>= 0``).
        nlocal: number of owned atoms.
        r_max: the model's cutoff (Å).
        budget: the previous budget (the result is at least as large).
        dtype: float dtype of the graph's positions.
        n_threads: threads of the neighbour search.
        ghost_centres: False leaves out the ghost centres (owned energies only): the forces
            are then NOT exact; for measuring the cost of the ghost shell only.
        tags: ``[nlocal + nghost]`` atom IDs (LAMMPS ``id``). With them, ghosts that are
            periodic images of this rank's own atoms are folded into those atoms (edge
            displacements instead of nodes) and each other rank's atom is a ghost centre
            once, however many of its images are near: one rank then does exactly the
            single-process work, and several ranks only the work of the faces they share.

    Returns:
        The :class:`LocalGraph`. Node ``k < nlocal`` is owned atom ``k``; the model's
        ``forces[:nlocal]`` are the exact forces on the owned atoms, ``energy[0]`` their
        energy and ``virial[0]`` this rank's share of the virial (module docstring).
    """
    positions = np.asarray(positions, dtype=np.float64)
    species = np.asarray(species)
    n_all = positions.shape[0]
    nlocal = int(nlocal)
    r_max = float(r_max)
    if nlocal > 0:
        # only ghosts within 2 r_max of the owned atoms' bounding box can matter
        lo = positions[:nlocal].min(axis=0) - 2.0 * r_max
        hi = positions[:nlocal].max(axis=0) + 2.0 * r_max
        ghosts = positions[nlocal:]
        near = np.all((ghosts >= lo) & (ghosts <= hi), axis=1)
        candidates = np.concatenate([np.arange(nlocal), nlocal + np.flatnonzero(near)])
    else:
        candidates = np.zeros(0, dtype=np.int64)
    points = positions[candidates]
    i, j = _pairs(points, r_max, n_threads)

    n_cand = candidates.shape[0]
    # a ghost that is a periodic image of one of this rank's own atoms is folded into that
    # atom: an edge to it becomes an edge to the owned node plus a displacement
    fold = np.full(n_cand, -1, dtype=np.int64)  # [n_cand] owned atom each candidate is
    fold[:nlocal] = np.arange(nlocal)
    if tags is not None and nlocal > 0:
        tags = np.asarray(tags)
        owned_tags = tags[:nlocal]
        by_tag = np.argsort(owned_tags, kind="stable")
        sorted_tags = owned_tags[by_tag]
        ghost_tags = tags[candidates[nlocal:]]
        slot = np.minimum(np.searchsorted(sorted_tags, ghost_tags), nlocal - 1)
        hit = sorted_tags[slot] == ghost_tags
        fold[nlocal:][hit] = by_tag[slot[hit]]
    image = fold >= 0
    image[:nlocal] = False

    centre = np.zeros(n_cand, dtype=bool)
    centre[:nlocal] = True
    if ghost_centres:
        near = np.zeros(n_cand, dtype=bool)
        near[j[i < nlocal]] = True  # within r_max of an owned atom
        near[:nlocal] = False
        near &= ~image
        if tags is not None:  # one image of each other rank's atom is enough
            found = np.flatnonzero(near)
            _, first = np.unique(tags[candidates[found]], return_index=True)
            near[:] = False
            near[found[first]] = True
        centre |= near
    keep = centre[i]
    i, j = i[keep], j[keep]
    shift = np.zeros((i.shape[0], 3), dtype=np.float64)  # [n_edges, 3] displacement
    to_image = image[j]
    shift[to_image] = points[j[to_image]] - points[fold[j[to_image]]]
    j = np.where(to_image, fold[j], j)
    needed = centre.copy()
    needed[j] = True

    # node order: owned, ghost centres, ghost neighbours (stable within each group)
    ghost_centre = np.flatnonzero(centre[nlocal:]) + nlocal
    ghost_other = np.flatnonzero(needed[nlocal:] & ~centre[nlocal:]) + nlocal
    order = np.concatenate([np.arange(nlocal), ghost_centre, ghost_other])
    new_index = np.full(n_cand, -1, dtype=np.int64)
    new_index[order] = np.arange(order.shape[0])
    i, j = new_index[i], new_index[j]
    by_centre = np.argsort(i, kind="stable")  # sorted by centre: block-wise evaluation
    i, j, shift = i[by_centre], j[by_centre], shift[by_centre]

    counts = LocalGraphCounts(
        n_owned=nlocal,
        n_ghost_centres=int(ghost_centre.shape[0]),
        n_ghost_neighbours=int(ghost_other.shape[0]),
        n_ghost_available=n_all - nlocal,
        n_ghost_images=int(np.count_nonzero(image)),
        n_owned_edges=int(np.count_nonzero(i < nlocal)),
        n_ghost_edges=int(np.count_nonzero(i >= nlocal)),
    )
    budget = local_graph_budget(counts, budget)
    n_nodes, n_edges = budget.n_nodes, budget.n_edges
    n_real, e_real = counts.n_nodes, counts.n_edges
    last = n_nodes - 1

    pos = np.zeros((n_nodes, 3), dtype=np.float64)  # [n_nodes, 3]
    pos[:n_real] = points[order]
    pos[n_real:] = padding_positions(n_nodes - n_real, pos[:n_real], r_max)
    spec = np.zeros(n_nodes, dtype=np.int32)  # [n_nodes]
    spec[:n_real] = species[candidates[order]]
    node_graph = np.full(n_nodes, N_GRAPHS - 1, dtype=np.int32)  # [n_nodes]
    node_graph[:nlocal] = 0
    node_graph[nlocal:n_real] = 1
    node_mask = np.zeros(n_nodes, dtype=bool)  # [n_nodes]: the atoms whose energy counts
    node_mask[: nlocal + counts.n_ghost_centres] = True
    edge_center = np.full(n_edges, last, dtype=np.int32)  # [n_edges]
    edge_neighbor = np.full(n_edges, last, dtype=np.int32)  # [n_edges]
    edge_center[:e_real] = i
    edge_neighbor[:e_real] = j
    edge_mask = np.zeros(n_edges, dtype=bool)  # [n_edges]
    edge_mask[:e_real] = True
    edge_shift = np.zeros((n_edges, 3), dtype=np.float64)  # [n_edges, 3], with cell = I
    edge_shift[:e_real] = shift
    cell = np.zeros((N_GRAPHS, 3, 3), dtype=np.float64)
    cell[:2] = np.eye(3)  # shifts are Cartesian displacements
    graph = AtomicGraph(
        positions=pos.astype(dtype),
        species=spec,
        node_graph=node_graph,
        node_mask=node_mask,
        edge_center=edge_center,
        edge_neighbor=edge_neighbor,
        edge_shift=edge_shift.astype(dtype),
        edge_mask=edge_mask,
        cell=cell.astype(dtype),
        pbc=np.zeros((N_GRAPHS, 3), dtype=bool),
        n_node=np.array([nlocal, n_real - nlocal, 0], dtype=np.int32),
        graph_mask=np.array([True, True, False]),
    )
    return LocalGraph(graph, counts, budget, candidates[order])
