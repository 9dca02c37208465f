"""Static padding budgets and host-side batching into a padded :class:`AtomicGraph`.

A jitted function compiles once per distinct array shape, so every batch is padded to a
:class:`Budget` of nodes, edges and graphs. :func:`round_budget` picks budgets from a small
geometric ladder (``steps_per_octave`` values per factor of two, e.g. 32, 40, 48, 56, 64,
80, ...), so a run with varying batch contents compiles a handful of shapes; for training
with a fixed batch size, :func:`budget_for_dataset` gives one budget that fits every batch
of a data set (the sum of the ``batch_size`` largest structures).

Padding (see :mod:`allegro_jax.data.graph`): a batch of ``g`` real graphs with ``n`` real
nodes and ``e`` real edges needs ``n_nodes >= n + 1`` and ``n_graphs >= g + 1`` (at least
one padding node and one padding graph always exist) and ``n_edges >= e``.

  * Real nodes, edges and graphs come first, in input order; node indices of the edges are
    offset by the nodes of the preceding structures.
  * Padding nodes have species 0, ``node_mask`` False, and belong to the last graph. They
    sit at distinct, far-away positions on the x axis, ``x_k = M + 2 r_max (k + 1)`` with
    ``M`` the largest absolute real coordinate, so no padding node is within ``2 r_max`` of
    another node: nothing downstream sees coincident atoms or spurious neighbours.
  * Padding edges join the last padding node to itself with a zero shift, ``edge_mask``
    False (their vector is exactly zero: use a NaN-safe norm and the mask).
  * Padding graphs have a zero cell, ``pbc`` False, ``graph_mask`` False and
    ``n_node == 0``: ``n_node`` counts real nodes only, so ``sum(n_node)`` is the number of
    real atoms (unlike jraph, whose padding graph counts the padding nodes). Divide by
    ``max(n_node, 1)``.

Neighbour lists are the expensive part: :func:`precompute_graph_inputs` computes them once
per structure (:class:`GraphInputs`) and :func:`batch_graph_inputs` re-batches them cheaply
every epoch. :func:`build_graph` does both in one call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from allegro_jax.data import validate
from allegro_jax.data.graph import AtomicGraph, Structure
from allegro_jax.data.neighborlist import Backend, neighbor_list

# Defaults of the bucket ladder (see benchmarks/neighborlist.py and tests/data for numbers).
DEFAULT_STEPS_PER_OCTAVE = 4
DEFAULT_MIN_NODES = 16
DEFAULT_MIN_EDGES = 64
DEFAULT_MIN_GRAPHS = 2


@dataclasses.dataclass(frozen=True, order=True)
class Budget:
    """Static sizes of a padded batch (including padding).

    Attributes:
        n_nodes: total nodes; a batch with ``n`` real nodes fits if ``n + 1 <= n_nodes``.
        n_edges: total edges; a batch with ``e`` real edges fits if ``e <= n_edges``.
        n_graphs: total graphs; a batch of ``g`` graphs fits if ``g + 1 <= n_graphs``.
    """

    n_nodes: int
    n_edges: int
    n_graphs: int

    def __post_init__(self) -> None:
        for name, minimum in (("n_nodes", 1), ("n_edges", 0), ("n_graphs", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"Budget.{name} must be an int, got {value!r}")
            if value < minimum:
                raise ValueError(f"Budget.{name} must be >= {minimum}, got {value}")
            object.__setattr__(self, name, int(value))

    def fits(self, n_nodes: int, n_edges: int, n_graphs: int) -> bool:
        """Whether a batch with these real counts fits (keeping one padding node and graph)."""
        return not _overflows(self, n_nodes, n_edges, n_graphs)


def bucket(
    value: int, *, steps_per_octave: int = DEFAULT_STEPS_PER_OCTAVE, minimum: int = 1
) -> int:
    """Smallest ladder value ``>= value``.

    The ladder is ``minimum`` followed by the integers ``m * 2**e`` with ``m`` in
    ``[steps_per_octave, 2 * steps_per_octave)``, i.e. ``steps_per_octave`` equally spaced
    values per octave: the padding overhead is at most ``1 / steps_per_octave`` of the
    next-smaller ladder value, and the number of distinct values grows like
    ``steps_per_octave * log2(max / min)``.

    Args:
        value: the size needed.
        steps_per_octave: a power of two (1 gives powers of two).
        minimum: the smallest size returned.

    Returns:
        The bucketed size.
    """
    if steps_per_octave < 1 or steps_per_octave & (steps_per_octave - 1):
        raise ValueError(f"steps_per_octave must be a power of two, got {steps_per_octave}")
    if minimum < 0:
        raise ValueError(f"minimum must be >= 0, got {minimum}")
    value = int(value)
    if value <= minimum:
        return int(minimum)
    step_bits = steps_per_octave.bit_length() - 1
    unit = 1 << max(value.bit_length() - 1 - step_bits, 0)
    return -(-value // unit) * unit


def round_budget(
    n_nodes: int,
    n_edges: int,
    n_graphs: int,
    *,
    steps_per_octave: int = DEFAULT_STEPS_PER_OCTAVE,
    min_nodes: int = DEFAULT_MIN_NODES,
    min_edges: int = DEFAULT_MIN_EDGES,
    min_graphs: int = DEFAULT_MIN_GRAPHS,
) -> Budget:
    """The bucketed budget for a batch with these REAL counts (padding added here).

    Args:
        n_nodes: real nodes in the batch.
        n_edges: real edges in the batch.
        n_graphs: real graphs in the batch.
        steps_per_octave: ladder resolution, see :func:`bucket`.
        min_nodes: smallest node budget.
        min_edges: smallest edge budget.
        min_graphs: smallest graph budget.

    Returns:
        A :class:`Budget` with ``n_nodes >= n_nodes + 1``, ``n_edges >= n_edges`` and
        ``n_graphs >= n_graphs + 1``.
    """
    for name, value in (("n_nodes", n_nodes), ("n_edges", n_edges), ("n_graphs", n_graphs)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    return Budget(
        n_nodes=bucket(n_nodes + 1, steps_per_octave=steps_per_octave, minimum=max(min_nodes, 1)),
        n_edges=bucket(n_edges, steps_per_octave=steps_per_octave, minimum=min_edges),
        n_graphs=bucket(
            n_graphs + 1, steps_per_octave=steps_per_octave, minimum=max(min_graphs, 1)
        ),
    )


def max_budget(budgets: Iterable[Budget]) -> Budget:
    """Element-wise maximum: one budget that every given budget fits into.

    Args:
        budgets: at least one budget.

    Returns:
        The element-wise maximum.
    """
    budgets = list(budgets)
    if not budgets:
        raise ValueError("max_budget needs at least one budget")
    return Budget(
        n_nodes=max(b.n_nodes for b in budgets),
        n_edges=max(b.n_edges for b in budgets),
        n_graphs=max(b.n_graphs for b in budgets),
    )


def budget_of(graph: AtomicGraph) -> Budget:
    """The budget (static shape) of a padded batch."""
    return Budget(n_nodes=graph.n_nodes, n_edges=graph.n_edges, n_graphs=graph.n_graphs)


def distinct_budgets(batches: Iterable[AtomicGraph | Budget]) -> set[Budget]:
    """The distinct budgets of some batches: how many shapes a jitted step compiles."""
    return {b if isinstance(b, Budget) else budget_of(b) for b in batches}


@dataclasses.dataclass(frozen=True, eq=False)
class GraphInputs:
    """One structure with its neighbour list computed once (host, numpy).

    Built by :func:`graph_inputs_from_structure`; batched by :func:`batch_graph_inputs`.

    Attributes:
        species: ``[n_atoms]`` int32 model type indices.
        positions: ``[n_atoms, 3]`` float64, Å.
        cell: ``[3, 3]`` float64 lattice vectors as rows.
        pbc: ``[3]`` bool.
        centers: ``[n_edges]`` int64 local index ``i``.
        neighbors: ``[n_edges]`` int64 local index ``j``.
        shifts: ``[n_edges, 3]`` int64 image offsets.
        r_max: the cutoff the edges were computed with.
        type_names: the model's type names the species refer to.
    """

    species: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    centers: np.ndarray
    neighbors: np.ndarray
    shifts: np.ndarray
    r_max: float
    type_names: tuple[str, ...]

    @property
    def n_atoms(self) -> int:
        return int(self.species.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.centers.shape[0])


def graph_inputs_from_structure(
    structure: Structure,
    type_names: Sequence[str],
    r_max: float,
    *,
    backend: Backend = "vesin",
    min_distance: float | None = validate.DEFAULT_MIN_DISTANCE,
) -> GraphInputs:
    """Validate a structure, map its species and compute its neighbour list.

    Args:
        structure: the host structure.
        type_names: the model's chemical symbols (type index = position).
        r_max: cutoff radius in Å.
        backend: neighbour-list backend, see :func:`neighbor_list`.
        min_distance: closest allowed distance between atoms in Å (default 0.1 Å,
            :data:`~allegro_jax.data.validate.DEFAULT_MIN_DISTANCE`; ``None`` disables it).

    Returns:
        The structure's :class:`GraphInputs`.

    Raises:
        ValueError: on any invalid input (see :mod:`allegro_jax.data.validate`).
    """
    names = validate.check_type_names(type_names)
    pbc = validate.check_pbc(structure.pbc)
    positions = validate.check_positions(structure.positions)
    cell = validate.check_cell(structure.cell, pbc)
    numbers = validate.check_numbers(structure.numbers, positions.shape[0])
    species = validate.types_from_numbers(numbers, names)
    centers, neighbors, shifts = neighbor_list(
        positions, cell, pbc, r_max, backend=backend, min_distance=min_distance
    )
    return GraphInputs(
        species=species,
        positions=positions,
        cell=cell,
        pbc=pbc,
        centers=centers,
        neighbors=neighbors,
        shifts=shifts,
        r_max=float(r_max),
        type_names=names,
    )


def precompute_graph_inputs(
    structures: Iterable[Structure],
    type_names: Sequence[str],
    r_max: float,
    *,
    backend: Backend = "vesin",
    min_distance: float | None = validate.DEFAULT_MIN_DISTANCE,
    source: str | None = None,
) -> list[GraphInputs]:
    """:func:`graph_inputs_from_structure` for a data set.

    Errors are :class:`~allegro_jax.data.errors.DataError` naming the structure's position,
    or, with ``source`` (the file the structures were read from), the file and the frame
    (``Structure.info["index"]``).
    """
    inputs = []
    for index, structure in enumerate(structures):
        frame = structure.info.get("index") if isinstance(structure.info, dict) else None
        with validate.frame_context(index, source=source, frame=frame):
            inputs.append(
                graph_inputs_from_structure(
                    structure, type_names, r_max, backend=backend, min_distance=min_distance
                )
            )
    return inputs


def batch_counts(inputs: Sequence[GraphInputs]) -> tuple[int, int, int]:
    """Real ``(n_nodes, n_edges, n_graphs)`` of a batch (before padding)."""
    return (
        sum(x.n_atoms for x in inputs),
        sum(x.n_edges for x in inputs),
        len(inputs),
    )


def budget_for_dataset(
    inputs: Sequence[GraphInputs],
    batch_size: int,
    *,
    rounded: bool = True,
    steps_per_octave: int = DEFAULT_STEPS_PER_OCTAVE,
    min_nodes: int = DEFAULT_MIN_NODES,
    min_edges: int = DEFAULT_MIN_EDGES,
    min_graphs: int = DEFAULT_MIN_GRAPHS,
) -> Budget:
    """One budget that fits ANY batch of at most ``batch_size`` structures of a data set.

    Nodes and edges are the sums over the ``batch_size`` largest structures (an upper
    bound for every shuffle), so a training run compiles exactly one shape.

    Args:
        inputs: the data set.
        batch_size: structures per batch.
        rounded: round up with :func:`round_budget` (else the exact bound plus padding).
        steps_per_octave: ladder resolution if ``rounded``.
        min_nodes: smallest node budget if ``rounded``.
        min_edges: smallest edge budget if ``rounded``.
        min_graphs: smallest graph budget if ``rounded``.

    Returns:
        The budget.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not inputs:
        raise ValueError("budget_for_dataset needs a non-empty data set")
    k = min(batch_size, len(inputs))
    atoms = np.sort([x.n_atoms for x in inputs])[::-1]
    edges = np.sort([x.n_edges for x in inputs])[::-1]
    n_nodes, n_edges, n_graphs = int(atoms[:k].sum()), int(edges[:k].sum()), batch_size
    if rounded:
        return round_budget(
            n_nodes,
            n_edges,
            n_graphs,
            steps_per_octave=steps_per_octave,
            min_nodes=min_nodes,
            min_edges=min_edges,
            min_graphs=min_graphs,
        )
    return Budget(n_nodes=n_nodes + 1, n_edges=n_edges, n_graphs=n_graphs + 1)


def batch_graph_inputs(
    inputs: Sequence[GraphInputs],
    budget: Budget | None = None,
    *,
    dtype: np.dtype | type = np.float32,
) -> AtomicGraph:
    """Concatenate precomputed structures and pad them to a budget.

    For a dtype narrower than float64, each structure's positions are first brought near
    the origin in float64 (:func:`local_frame`: atoms wrapped into the cell along periodic
    directions, the shifts adjusted, then the whole structure translated by a whole number of
    Å), so that casting them loses no precision for a structure far from the origin: every
    edge vector ``pos[j] - pos[i] + shift @ cell`` stays the same, and so do the energy,
    forces and stress. float64 graphs keep the positions as given.

    Args:
        inputs: the structures of the batch (same ``r_max`` and ``type_names``).
        budget: the static sizes; ``None`` picks :func:`round_budget` of the real counts.
        dtype: float dtype of positions, shifts and cells.

    Returns:
        An :class:`AtomicGraph` of numpy arrays.

    Raises:
        ValueError: if the batch does not fit ``budget`` (naming the sizes) or the inputs
            were prepared with different cutoffs or type names.
    """
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"dtype must be a float dtype, got {dtype}")
    _check_compatible(inputs)
    n_real_nodes, n_real_edges, n_real_graphs = batch_counts(inputs)
    if budget is None:
        budget = round_budget(n_real_nodes, n_real_edges, n_real_graphs)
    _check_fits(budget, n_real_nodes, n_real_edges, n_real_graphs)
    n_nodes, n_edges, n_graphs = budget.n_nodes, budget.n_edges, budget.n_graphs

    n_atoms = np.array([x.n_atoms for x in inputs], dtype=np.int64)  # [n_real_graphs]
    node_offsets = np.concatenate([[0], np.cumsum(n_atoms)[:-1]]).astype(np.int64)
    last = n_nodes - 1  # the last padding node; padding edges are its self loops

    positions = np.zeros((n_nodes, 3), dtype=np.float64)  # [n_nodes, 3]
    species = np.zeros(n_nodes, dtype=np.int32)  # [n_nodes]
    node_graph = np.full(n_nodes, n_graphs - 1, dtype=np.int32)  # [n_nodes]
    node_mask = np.zeros(n_nodes, dtype=bool)  # [n_nodes]
    edge_center = np.full(n_edges, last, dtype=np.int32)  # [n_edges]
    edge_neighbor = np.full(n_edges, last, dtype=np.int32)  # [n_edges]
    edge_shift = np.zeros((n_edges, 3), dtype=dtype)  # [n_edges, 3]
    edge_mask = np.zeros(n_edges, dtype=bool)  # [n_edges]
    cell = np.zeros((n_graphs, 3, 3), dtype=dtype)  # [n_graphs, 3, 3]
    pbc = np.zeros((n_graphs, 3), dtype=bool)  # [n_graphs, 3]
    n_node = np.zeros(n_graphs, dtype=np.int32)  # [n_graphs]
    graph_mask = np.zeros(n_graphs, dtype=bool)  # [n_graphs]

    if inputs:
        if dtype == np.float64:
            frames = [(x.positions, x.shifts) for x in inputs]
        else:  # near the origin before the cast (see the docstring)
            frames = [local_frame(x) for x in inputs]
        positions[:n_real_nodes] = np.concatenate([pos for pos, _ in frames])
        species[:n_real_nodes] = np.concatenate([x.species for x in inputs])
        node_graph[:n_real_nodes] = np.repeat(np.arange(n_real_graphs), n_atoms)
        node_mask[:n_real_nodes] = True
        edge_offsets = np.repeat(node_offsets, [x.n_edges for x in inputs])  # [n_real_edges]
        edge_center[:n_real_edges] = np.concatenate([x.centers for x in inputs]) + edge_offsets
        edge_neighbor[:n_real_edges] = np.concatenate([x.neighbors for x in inputs]) + edge_offsets
        edge_shift[:n_real_edges] = np.concatenate([shifts for _, shifts in frames])
        edge_mask[:n_real_edges] = True
        cell[:n_real_graphs] = np.stack([x.cell for x in inputs])
        pbc[:n_real_graphs] = np.stack([x.pbc for x in inputs])
        n_node[:n_real_graphs] = n_atoms
        graph_mask[:n_real_graphs] = True
    r_max = inputs[0].r_max if inputs else 1.0
    positions[n_real_nodes:] = padding_positions(
        n_nodes - n_real_nodes, positions[:n_real_nodes], r_max
    )

    return AtomicGraph(
        positions=positions.astype(dtype),
        species=species,
        node_graph=node_graph,
        node_mask=node_mask,
        edge_center=edge_center,
        edge_neighbor=edge_neighbor,
        edge_shift=edge_shift,
        edge_mask=edge_mask,
        cell=cell,
        pbc=pbc,
        n_node=n_node,
        graph_mask=graph_mask,
    )


def local_frame(inputs: GraphInputs) -> tuple[np.ndarray, np.ndarray]:
    """The structure's positions near the origin, with the same edge vectors (float64).

    Along periodic directions every atom is wrapped into the cell (``f in [0, 1)``, integer
    offsets ``W`` per atom, the edge shifts become ``S + W[j] - W[i]``); then the whole
    structure is translated by its bounding-box centre rounded to whole Å (a structure
    centred within 0.5 Å of the origin is left as it is). Both steps keep every
    ``r_ij = pos[j] - pos[i] + S @ cell`` and, computed in float64, lose nothing, so a
    float32 cast afterwards is as precise as for a structure at the origin.

    Returns:
        ``(positions [n_atoms, 3] float64, shifts [n_edges, 3] int64)``.
    """
    positions, shifts = inputs.positions, inputs.shifts
    if not positions.size:
        return positions, shifts
    pbc = inputs.pbc
    if pbc.any():
        rows = inputs.cell[pbc]  # [k, 3]
        dual = np.linalg.solve(rows @ rows.T, rows)  # [k, 3], dual @ rows.T = 1
        wraps = np.floor(positions @ dual.T).astype(np.int64)  # [n_atoms, k]
        if wraps.any():
            positions = positions - wraps @ rows
            shifts = shifts.copy()
            shifts[:, pbc] += wraps[inputs.neighbors] - wraps[inputs.centers]
    centre = np.round(0.5 * (positions.min(axis=0) + positions.max(axis=0)))  # [3]
    if centre.any():
        positions = positions - centre
    return positions, shifts


def padding_positions(n_padding: int, real_positions: np.ndarray, r_max: float) -> np.ndarray:
    """Distinct far-away positions for padding nodes.

    Padding node ``k`` sits at ``(M + 2 r_max (k + 1), 0, 0)`` with ``M`` the largest
    absolute coordinate of the real nodes (0 if there are none): padding nodes are
    ``2 r_max`` apart from each other and at least ``2 r_max`` from every real node.

    Args:
        n_padding: number of padding nodes.
        real_positions: ``[n_real, 3]`` positions of the real nodes.
        r_max: the cutoff radius in Å.

    Returns:
        ``[n_padding, 3]`` float64 positions.
    """
    far = float(np.abs(real_positions).max()) if real_positions.size else 0.0
    spacing = 2.0 * float(r_max)
    out = np.zeros((n_padding, 3), dtype=np.float64)  # [n_padding, 3]
    out[:, 0] = far + spacing * np.arange(1, n_padding + 1)
    return out


def build_graph(
    structures: Sequence[Structure | GraphInputs],
    type_names: Sequence[str],
    r_max: float,
    budget: Budget | None = None,
    dtype: np.dtype | type = np.float32,
    *,
    backend: Backend = "vesin",
    min_distance: float | None = validate.DEFAULT_MIN_DISTANCE,
) -> AtomicGraph:
    """Validate, compute neighbour lists, concatenate and pad a batch of structures.

    Args:
        structures: the batch; items that are :class:`GraphInputs` reuse their
            precomputed neighbour lists (they must match ``type_names`` and ``r_max``).
        type_names: the model's chemical symbols (type index = position).
        r_max: cutoff radius in Å.
        budget: static sizes; ``None`` picks :func:`round_budget` of the real counts.
        dtype: float dtype of positions, shifts and cells.
        backend: neighbour-list backend for :class:`Structure` items.
        min_distance: closest allowed distance between atoms in Å (default 0.1 Å,
            :data:`~allegro_jax.data.validate.DEFAULT_MIN_DISTANCE`; ``None`` disables it).

    Returns:
        An :class:`AtomicGraph` of numpy arrays.

    Raises:
        ValueError: on invalid structures (naming the structure index), on precomputed
            inputs that do not match ``type_names``/``r_max``, or if the batch exceeds
            ``budget``.
    """
    names = validate.check_type_names(type_names)
    r_max = validate.check_r_max(r_max)
    inputs = []
    for index, item in enumerate(structures):
        with validate.frame_context(index):
            if isinstance(item, GraphInputs):
                _check_matches(item, names, r_max)
                inputs.append(item)
            else:
                inputs.append(
                    graph_inputs_from_structure(
                        item, names, r_max, backend=backend, min_distance=min_distance
                    )
                )
    return batch_graph_inputs(inputs, budget, dtype=dtype)


def pad_node_values(values: Sequence[np.ndarray], budget: Budget, fill: float = 0.0) -> np.ndarray:
    """Concatenate per-structure node arrays (e.g. forces) and pad them to ``n_nodes``.

    Args:
        values: one ``[n_atoms_k, ...]`` array per structure, in batch order.
        budget: the batch's budget.
        fill: value of the padding rows.

    Returns:
        ``[n_nodes, ...]`` array.
    """
    return _concat_and_pad(values, budget.n_nodes, fill, "n_nodes")


def pad_graph_values(
    values: Sequence[np.ndarray | float], budget: Budget, fill: float = 0.0
) -> np.ndarray:
    """Stack per-structure graph values (e.g. energies, stresses) padded to ``n_graphs``.

    Args:
        values: one scalar or array per structure, in batch order.
        budget: the batch's budget.
        fill: value of the padding entries.

    Returns:
        ``[n_graphs, ...]`` array.
    """
    return _concat_and_pad([np.asarray(v)[None] for v in values], budget.n_graphs, fill, "n_graphs")


def _concat_and_pad(values: Sequence[np.ndarray], size: int, fill: float, what: str) -> np.ndarray:
    if not values:
        raise ValueError("nothing to pad: values is empty")
    stacked = np.concatenate([np.asarray(v) for v in values])
    if stacked.shape[0] >= size:
        raise ValueError(
            f"{stacked.shape[0]} real rows leave no padding row within budget {what}={size}"
        )
    out = np.full((size, *stacked.shape[1:]), fill, dtype=stacked.dtype)
    out[: stacked.shape[0]] = stacked
    return out


def _overflows(budget: Budget, n_nodes: int, n_edges: int, n_graphs: int) -> list[str]:
    problems = []
    if n_nodes + 1 > budget.n_nodes:
        problems.append(
            f"n_nodes: needs {n_nodes + 1} ({n_nodes} real + 1 padding) > {budget.n_nodes}"
        )
    if n_edges > budget.n_edges:
        problems.append(f"n_edges: needs {n_edges} real > {budget.n_edges}")
    if n_graphs + 1 > budget.n_graphs:
        problems.append(
            f"n_graphs: needs {n_graphs + 1} ({n_graphs} real + 1 padding) > {budget.n_graphs}"
        )
    return problems


def _check_fits(budget: Budget, n_nodes: int, n_edges: int, n_graphs: int) -> None:
    problems = _overflows(budget, n_nodes, n_edges, n_graphs)
    if problems:
        raise ValueError(f"batch exceeds the budget {budget}: " + "; ".join(problems))


def _check_matches(item: GraphInputs, type_names: tuple[str, ...], r_max: float) -> None:
    if item.type_names != type_names:
        raise ValueError(
            f"precomputed inputs use type_names {list(item.type_names)}, "
            f"expected {list(type_names)}"
        )
    if item.r_max != r_max:
        raise ValueError(f"precomputed inputs use r_max={item.r_max}, expected r_max={r_max}")


def _check_compatible(inputs: Sequence[GraphInputs]) -> None:
    for index, item in enumerate(inputs):
        if not isinstance(item, GraphInputs):
            raise ValueError(f"structure {index}: expected GraphInputs, got {type(item).__name__}")
        with validate.frame_context(index):
            _check_matches(item, inputs[0].type_names, inputs[0].r_max)
