"""Budgets, bucketing and batching into a padded AtomicGraph."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from allegro_jax.data.graph import AtomicGraph, Structure
from allegro_jax.data.neighborlist import edge_vectors, neighbor_list
from allegro_jax.data.padding import (
    Budget,
    GraphInputs,
    batch_counts,
    batch_graph_inputs,
    bucket,
    budget_for_dataset,
    budget_of,
    build_graph,
    distinct_budgets,
    local_frame,
    max_budget,
    pad_graph_values,
    pad_node_values,
    precompute_graph_inputs,
    round_budget,
)

TYPES = ("H", "C", "O", "Si")
R_MAX = 5.0


def mixed_structures(aspirin_structures) -> list[Structure]:
    """A molecule, a small triclinic crystal, a slab with a zero vacuum row, one atom."""
    si = bulk("Si", "diamond", a=5.43)  # 2-atom primitive cell: many images at 5 Å
    slab = Structure.from_ase(bulk("Si", "diamond", a=5.43, cubic=True))
    slab.pbc = np.array([True, True, False])
    slab.cell[2] = 0.0
    return [
        aspirin_structures[0],
        Structure.from_ase(si),
        slab,
        Structure(numbers=[1], positions=[[0.5, 0.5, 0.5]]),
        aspirin_structures[1],
    ]


# --- buckets and budgets -------------------------------------------------------------------


def test_bucket_ladder():
    ladder = sorted({bucket(v, steps_per_octave=4, minimum=16) for v in range(1, 300)})
    assert ladder[:12] == [16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112]
    assert sorted({bucket(v, steps_per_octave=1, minimum=1) for v in range(1, 100)}) == [
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        128,
    ]


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_bucket_bounds(steps):
    values = np.arange(0, 5000)
    buckets = np.array([bucket(v, steps_per_octave=steps, minimum=8) for v in values])
    assert np.all(buckets >= values) and np.all(buckets >= 8)
    assert np.all(np.diff(buckets) >= 0), "monotone"
    above = values > 8
    assert np.all(buckets[above] <= values[above] * (1 + 1 / steps)), "overhead <= 1/steps"
    np.testing.assert_array_equal(
        [bucket(b, steps_per_octave=steps, minimum=8) for b in buckets], buckets
    )  # idempotent


def test_bucket_rejects_bad_steps():
    with pytest.raises(ValueError, match="power of two"):
        bucket(10, steps_per_octave=3)


def test_budget_rules():
    budget = round_budget(21, 300, 1)
    assert budget.n_nodes >= 22 and budget.n_edges >= 300 and budget.n_graphs >= 2
    assert budget.fits(21, 300, 1)
    assert not Budget(21, 300, 2).fits(21, 300, 1), "needs one padding node"
    assert not Budget(22, 300, 1).fits(21, 300, 1), "needs one padding graph"
    assert Budget(22, 300, 2).fits(21, 300, 1)
    assert not Budget(22, 299, 2).fits(21, 300, 1)
    assert round_budget(0, 0, 0) == Budget(16, 64, 2)
    for bad in ({"n_nodes": 0}, {"n_edges": -1}, {"n_graphs": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Budget(**{"n_nodes": 4, "n_edges": 4, "n_graphs": 2, **bad})
    assert max_budget([Budget(10, 5, 3), Budget(4, 50, 2)]) == Budget(10, 50, 3)


# --- batching ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip(aspirin_structures, dtype):
    structures = mixed_structures(aspirin_structures)
    inputs = precompute_graph_inputs(structures, TYPES, R_MAX)
    n_nodes, n_edges, n_graphs = batch_counts(inputs)
    budget = Budget(n_nodes + 7, n_edges + 13, n_graphs + 3)
    graph = build_graph(structures, TYPES, R_MAX, budget, dtype)

    assert isinstance(graph, AtomicGraph) and budget_of(graph) == budget
    assert graph.positions.dtype == graph.edge_shift.dtype == graph.cell.dtype == dtype
    for name in ("species", "node_graph", "edge_center", "edge_neighbor", "n_node"):
        assert getattr(graph, name).dtype == np.int32, name

    node, edge = 0, 0
    for k, (structure, x) in enumerate(zip(structures, inputs, strict=True)):
        atoms = slice(node, node + structure.n_atoms)
        # float32: positions near the origin (local_frame), the same edge vectors
        local_positions, local_shifts = local_frame(x)
        expected = structure.positions if dtype == np.float64 else local_positions
        np.testing.assert_array_equal(graph.positions[atoms], expected.astype(dtype))
        symbols = structure.to_ase().get_chemical_symbols()
        np.testing.assert_array_equal(graph.species[atoms], [TYPES.index(s) for s in symbols])
        assert np.all(graph.node_graph[atoms] == k) and graph.node_mask[atoms].all()
        centers, neighbors, shifts = neighbor_list(
            structure.positions, structure.cell, structure.pbc, R_MAX
        )
        assert x.n_atoms == structure.n_atoms and x.n_edges == len(centers)
        edges = slice(edge, edge + len(centers))
        np.testing.assert_array_equal(graph.edge_center[edges], centers + node)
        np.testing.assert_array_equal(graph.edge_neighbor[edges], neighbors + node)
        np.testing.assert_array_equal(
            graph.edge_shift[edges], shifts if dtype == np.float64 else local_shifts
        )
        np.testing.assert_allclose(
            edge_vectors(local_positions, structure.cell, centers, neighbors, local_shifts),
            edge_vectors(structure.positions, structure.cell, centers, neighbors, shifts),
            atol=1e-10,
        )
        assert graph.edge_mask[edges].all()
        np.testing.assert_array_equal(graph.cell[k], structure.cell.astype(dtype))
        np.testing.assert_array_equal(graph.pbc[k], structure.pbc)
        assert graph.n_node[k] == structure.n_atoms and graph.graph_mask[k]
        node, edge = atoms.stop, edges.stop

    # Everything after the real entries is padding, with the documented conventions.
    assert (node, edge) == (n_nodes, n_edges)
    last = budget.n_nodes - 1
    assert not graph.node_mask[node:].any() and np.all(graph.species[node:] == 0)
    assert np.all(graph.node_graph[node:] == budget.n_graphs - 1)
    assert not graph.edge_mask[edge:].any()
    assert np.all(graph.edge_center[edge:] == last) and np.all(graph.edge_neighbor[edge:] == last)
    assert not graph.edge_shift[edge:].any()
    assert not graph.graph_mask[n_graphs:].any() and not graph.n_node[n_graphs:].any()
    assert not graph.cell[n_graphs:].any() and not graph.pbc[n_graphs:].any()
    assert graph.n_node.sum() == n_nodes == graph.node_mask.sum()


def test_padding_nodes_far_and_distinct(aspirin_structures):
    graph = build_graph(mixed_structures(aspirin_structures), TYPES, R_MAX)
    pos = graph.positions.astype(np.float64)
    pad = ~graph.node_mask
    assert pad.sum() >= 1
    distances = np.linalg.norm(pos[pad][:, None] - pos[None], axis=-1)  # [n_pad, n_nodes]
    distances[np.arange(pad.sum()), np.flatnonzero(pad)] = np.inf  # ignore self
    assert distances.min() >= 2 * R_MAX - 1e-3


def test_edge_vectors_from_graph(aspirin_structures, water_structures):
    """pos[j] - pos[i] + shift @ cell[graph of i] reproduces the float64 edge lengths."""
    structures = mixed_structures(aspirin_structures) + water_structures[:2]
    graph = build_graph(structures, TYPES, R_MAX, dtype=np.float64)
    m = graph.edge_mask
    i, j = graph.edge_center[m], graph.edge_neighbor[m]
    cell = graph.cell[graph.node_graph[i]]  # [n_real_edges, 3, 3]
    vectors = (
        graph.positions[j] - graph.positions[i] + np.einsum("ea,eab->eb", graph.edge_shift[m], cell)
    )
    lengths = np.linalg.norm(vectors, axis=1)
    assert np.all((lengths > 0) & (lengths < R_MAX))
    expected = np.concatenate(
        [
            np.linalg.norm(
                edge_vectors(
                    s.positions, s.cell, *neighbor_list(s.positions, s.cell, s.pbc, R_MAX)
                ),
                axis=1,
            )
            for s in structures
        ]
    )
    np.testing.assert_allclose(lengths, expected, rtol=1e-12)


def test_precomputed_inputs_are_reused(aspirin_structures):
    structures = mixed_structures(aspirin_structures)
    inputs = precompute_graph_inputs(structures, TYPES, R_MAX)
    assert isinstance(inputs[0], GraphInputs)
    direct = build_graph(structures, TYPES, R_MAX)
    mixed = build_graph([inputs[0], *structures[1:3], inputs[3], structures[4]], TYPES, R_MAX)
    rebatched = batch_graph_inputs(inputs)
    for a, b, c in zip(direct, mixed, rebatched, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    with pytest.raises(ValueError, match=r"structure 0: precomputed inputs use r_max=5.0"):
        build_graph(inputs, TYPES, 4.0)
    with pytest.raises(ValueError, match="precomputed inputs use type_names"):
        build_graph(inputs, ("H", "C", "O", "Si", "Fe"), R_MAX)


def test_budget_overflow_is_reported(aspirin_structures):
    structures = aspirin_structures[:3]
    counts = batch_counts(precompute_graph_inputs(structures, TYPES, R_MAX))
    with pytest.raises(ValueError, match=r"n_nodes: needs 64 \(63 real \+ 1 padding\) > 63"):
        build_graph(structures, TYPES, R_MAX, Budget(63, counts[1], 4))
    with pytest.raises(ValueError, match=rf"n_edges: needs {counts[1]} real > 10"):
        build_graph(structures, TYPES, R_MAX, Budget(64, 10, 4))
    with pytest.raises(ValueError, match=r"n_graphs: needs 4 \(3 real \+ 1 padding\) > 3"):
        build_graph(structures, TYPES, R_MAX, Budget(64, counts[1], 3))
    build_graph(structures, TYPES, R_MAX, Budget(64, counts[1], 4))  # exactly fits


def test_empty_batch_is_all_padding():
    graph = build_graph([], TYPES, R_MAX)
    assert not graph.node_mask.any() and not graph.edge_mask.any() and not graph.graph_mask.any()


def test_pad_values(aspirin_structures):
    budget = Budget(50, 10, 4)
    forces = [np.ones((21, 3)), 2 * np.ones((3, 3))]
    padded = pad_node_values(forces, budget)
    assert padded.shape == (50, 3) and padded[:21].all() and np.all(padded[21:24] == 2)
    assert not padded[24:].any()
    energies = pad_graph_values([1.5, -2.0], budget, fill=np.nan)
    np.testing.assert_array_equal(energies[:2], [1.5, -2.0])
    assert np.isnan(energies[2:]).all()
    with pytest.raises(ValueError, match="no padding row"):
        pad_graph_values([1.0] * 4, budget)


def test_no_recompilation_within_a_budget(aspirin_structures):
    """Two batches with the same budget reuse one compiled function."""
    traces = []

    @jax.jit
    def masked_length_sum(graph: AtomicGraph) -> jax.Array:
        traces.append(1)
        cell = graph.cell[graph.node_graph[graph.edge_center]]
        shift = jnp.einsum("ea,eab->eb", graph.edge_shift, cell)
        vectors = graph.positions[graph.edge_neighbor] - graph.positions[graph.edge_center] + shift
        return jnp.where(graph.edge_mask, jnp.linalg.norm(vectors + 1e-9, axis=-1), 0.0).sum()

    budget = Budget(128, 2048, 8)
    first = build_graph(aspirin_structures[:2], TYPES, R_MAX, budget)
    second = build_graph(aspirin_structures[2:7], TYPES, R_MAX, budget)
    assert np.isfinite(masked_length_sum(first)) and np.isfinite(masked_length_sum(second))
    assert len(traces) == 1


# --- compilations for random batch sizes -----------------------------------------------------


def random_batch_budgets(inputs, n_batches, rng):
    sizes = rng.integers(1, 33, size=n_batches)
    counts = [
        batch_counts([inputs[k] for k in rng.choice(len(inputs), b, replace=False)]) for b in sizes
    ]
    return counts, [round_budget(*c) for c in counts]


def test_distinct_budgets_for_100_random_batches(aspirin_structures, water_structures, capsys):
    rng = np.random.default_rng(0)
    datasets = {
        "aspirin": precompute_graph_inputs(aspirin_structures, ("H", "C", "O"), R_MAX),
        "water": precompute_graph_inputs(water_structures, ("H", "O"), R_MAX),
    }
    report = {}
    for name, inputs in datasets.items():
        counts, budgets = random_batch_budgets(inputs, 100, rng)
        assert all(b.fits(*c) for b, c in zip(budgets, counts, strict=True))
        edge_overhead = sum(b.n_edges for b in budgets) / sum(c[1] for c in counts) - 1
        assert edge_overhead < 0.25
        report[name] = len(distinct_budgets(budgets))
        # Batch sizes 1..32 span five octaves: at most ~4 buckets per octave per axis.
        assert 5 <= report[name] <= 36, report
        # A real batch has the rounded budget.
        graph = batch_graph_inputs(inputs[:3])
        assert budget_of(graph) == round_budget(*batch_counts(inputs[:3]))
    with capsys.disabled():
        print(f"\ndistinct budgets for 100 random batches (1..32 structures): {report}")


def test_dataset_budget_fits_every_batch(aspirin_structures, water_structures):
    inputs = precompute_graph_inputs(water_structures, ("H", "O"), R_MAX)
    budget = budget_for_dataset(inputs, 8)
    exact = budget_for_dataset(inputs, 8, rounded=False)
    assert exact.n_graphs == 9 and exact.n_nodes == 8 * 192 + 1
    assert budget.n_edges >= exact.n_edges and budget.n_nodes >= exact.n_nodes
    rng = np.random.default_rng(1)
    graphs = [
        batch_graph_inputs([inputs[k] for k in rng.permutation(len(inputs))[:8]], budget)
        for _ in range(10)
    ]
    graphs.append(batch_graph_inputs(inputs[:3], budget))  # a short last batch
    assert distinct_budgets(graphs) == {budget}
