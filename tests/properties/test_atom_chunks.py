"""Block-wise evaluation (``apply_fn(..., chunks=...)``): the same numbers as the whole graph.

Allegro is strictly local, so a block of atoms with only its own edges gives those atoms'
energies exactly; forces and stress follow from the edge gradients. Checked in float64 for
both generations, with fixed pair terms, several graphs in one padded batch, stress, an
ensemble, the ASE calculator's automatic switch, and a layout that does not fit.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from systems import random_molecule, random_periodic

from allegro_jax import AllegroConfig, AtomChunks, make_model, plan_atom_chunks
from allegro_jax.data.graph import Structure
from allegro_jax.data.padding import Budget, build_graph
from allegro_jax.nn.ensemble import make_ensemble_apply_fn, stack_members
from allegro_jax.nn.model import ChunkPlanner, block_edge_counts

jax.config.update("jax_enable_x64", True)

MORSE = dict(kind="morse", types=["Si", "O"], D=2.0, a=1.5, r0=1.6, r_cut=3.0)


def config(generation: str, dtype: str = "float64") -> AllegroConfig:
    return AllegroConfig(
        type_names=("H", "C", "O", "Si"),
        r_max=3.5,
        generation=generation,
        l_max=2,
        num_layers=2,
        num_scalar_features=16,
        num_tensor_features=4,
        avg_num_neighbors=6.0,
        two_body_latent_mlp_latent_dimensions=(16,),
        latent_mlp_latent_dimensions=(16,),
        edge_eng_mlp_latent_dimensions=(8,),
        model_dtype=dtype,
        pair_potential=[MORSE],
        per_type_energy_shifts=(-1.0, -2.0, -3.0, -4.0),
        per_type_energy_scales=(1.5, 0.5, 2.0, 1.0),
    )


def batch(dtype=np.float64) -> tuple[list[Structure], object]:
    rng = np.random.default_rng(3)
    structures = [random_periodic(rng, 7), random_molecule(rng, 9), random_periodic(rng, 6)]
    # generous padding: padding nodes and edges must stay out of every block
    g = build_graph(structures, ("H", "C", "O", "Si"), 3.5, budget=Budget(40, 900, 5), dtype=dtype)
    return structures, g


def current_model(seed: int = 0):
    """``(apply_fn, params, graph)``: the float64 current-generation model and the batch."""
    init_fn, apply_fn = make_model(config("current"))
    _, g = batch()
    return apply_fn, init_fn(jax.random.PRNGKey(seed), g), g


def assert_same(whole: dict, blocks: dict, rtol=1e-12, atol=1e-12) -> None:
    assert not bool(blocks["chunk_overflow"])
    for key, value in whole.items():
        np.testing.assert_allclose(
            np.asarray(blocks[key]), np.asarray(value), rtol=rtol, atol=atol, err_msg=key
        )


@pytest.mark.parametrize(
    ("generation", "dtype"), [("current", "float64"), ("paper", "float64"), ("current", "float32")]
)
def test_blocks_equal_whole_graph(generation, dtype):
    cfg = config(generation, dtype)
    init_fn, apply_fn = make_model(cfg)
    _, g = batch(np.float64 if dtype == "float64" else np.float32)
    params = init_fn(jax.random.PRNGKey(0), g)
    plan = plan_atom_chunks(g, target_edges=60)  # several blocks, some straddling graphs
    assert 1 < plan.atoms < int(np.sum(g.node_mask))
    assert max(block_edge_counts(g, plan.atoms)) <= plan.edges
    whole = apply_fn(params, g, stress=True)
    blocks = jax.jit(lambda p, g: apply_fn(p, g, stress=True, chunks=plan))(params, g)
    tol = 1e-12 if dtype == "float64" else 1e-5  # float32: XLA may fuse differently per shape
    assert_same(whole, blocks, rtol=tol, atol=tol)
    assert np.abs(np.asarray(whole["forces"])).max() > 1e-3  # the comparison means something
    assert np.abs(np.asarray(whole["stress"])).max() > 1e-4
    # energies only
    e_only = apply_fn(params, g, forces=False, chunks=plan)
    np.testing.assert_allclose(e_only["energy"], whole["energy"], rtol=tol)
    assert "forces" not in e_only


def test_forces_are_minus_gradient_of_blocked_energy():
    apply_fn, params, g = current_model(seed=1)
    plan = plan_atom_chunks(g, target_edges=50)

    def total(pos):
        e = apply_fn(params, g._replace(positions=pos), forces=False, chunks=plan)["energy"]
        return e.sum()

    out = apply_fn(params, g, chunks=plan)
    np.testing.assert_allclose(-jax.grad(total)(g.positions), out["forces"], atol=1e-12)


def test_layout_that_does_not_fit_gives_nan_and_a_flag():
    apply_fn, params, g = current_model()
    plan = plan_atom_chunks(g, target_edges=60)
    small = AtomChunks(plan.atoms, max(block_edge_counts(g, plan.atoms)) - 1)
    out = apply_fn(params, g, stress=True, chunks=small)
    assert bool(out["chunk_overflow"])
    for key in ("energy", "forces", "stress", "atomic_energies"):
        assert np.all(np.isnan(np.asarray(out[key]))), key


def test_unsorted_edges_are_refused():
    apply_fn, params, g = current_model()
    perm = np.random.default_rng(0).permutation(g.edge_center.shape[0])
    shuffled = g._replace(
        edge_center=np.asarray(g.edge_center)[perm],
        edge_neighbor=np.asarray(g.edge_neighbor)[perm],
        edge_shift=np.asarray(g.edge_shift)[perm],
        edge_mask=np.asarray(g.edge_mask)[perm],
    )
    with pytest.raises(ValueError, match="sorted by centre"):
        plan_atom_chunks(shuffled)
    with pytest.raises(ValueError, match="atoms >= 1"):
        AtomChunks(0, 10)
    # under jit the same disorder is caught by the flag
    out = apply_fn(params, shuffled, chunks=plan_atom_chunks(g, target_edges=60))
    assert bool(out["chunk_overflow"])


def test_ensemble_blocks_equal_whole_graph():
    cfg = config("current")
    init_fn, apply_fn = make_model(cfg)
    _, g = batch()
    stacked = stack_members([init_fn(jax.random.PRNGKey(k), g) for k in range(2)])
    ens = make_ensemble_apply_fn(apply_fn)
    plan = plan_atom_chunks(g, target_edges=60)
    whole = ens(stacked, g)
    blocks = ens(stacked, g, chunks=plan)
    assert_same(whole, blocks)


def test_calculator_switches_to_blocks_for_large_structures():
    from ase.build import bulk

    from allegro_jax import AllegroCalculator

    cfg = config("current")
    init_fn, _ = make_model(cfg)
    params = init_fn(jax.random.PRNGKey(0))
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=1)
    whole = AllegroCalculator(cfg, params, chunk_edges=None)
    blocks = AllegroCalculator(cfg, params, chunk_edges=16)  # 64 atoms, 4 neighbours each
    ref = whole.get_forces(atoms), whole.get_stress(atoms), whole.get_potential_energy(atoms)
    got = blocks.get_forces(atoms), blocks.get_stress(atoms), blocks.get_potential_energy(atoms)
    assert whole.chunks is None and blocks.chunks is not None
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-11, atol=1e-12)
    # a small move keeps the layout and the compiled function
    plan, n_compiled = blocks.chunks, blocks.n_compilations
    atoms.rattle(0.01, seed=2)
    blocks.get_forces(atoms)
    assert blocks.chunks == plan and blocks.n_compilations == n_compiled


def test_planner_keeps_one_layout_while_graphs_fit():
    from ase.build import bulk

    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((3, 3, 3))  # 216 atoms, 4 nbrs

    def graph(seed, rattle=0.05):
        a = atoms.copy()
        a.rattle(rattle, seed=seed)
        return build_graph([Structure.from_ase(a)], ("Si",), 3.0, dtype=np.float64)

    g = graph(0)
    assert ChunkPlanner(target_edges=1000)(g) is None  # 864 edges: the whole graph
    assert ChunkPlanner(target_edges=None)(g) is None
    planner = ChunkPlanner(target_edges=64, slack=1.05)
    plan = planner(g)
    assert plan is not None and max(block_edge_counts(g, plan.atoms)) <= plan.edges
    assert planner(graph(1)) == plan  # a small move: the same layout
    # a denser structure does not fit: a new layout, never a smaller capacity
    dense = build_graph([Structure.from_ase(atoms)], ("Si",), 4.0, dtype=np.float64)
    bigger = planner(dense)
    assert bigger.edges >= plan.edges and max(block_edge_counts(dense, bigger.atoms)) <= (
        bigger.edges
    )
    perm = np.random.default_rng(0).permutation(g.edge_center.shape[0])
    unsorted = g._replace(
        edge_center=np.asarray(g.edge_center)[perm], edge_mask=np.asarray(g.edge_mask)[perm]
    )
    assert ChunkPlanner(target_edges=64)(unsorted) is None  # falls back to the whole graph


def test_default_planner_keeps_the_whole_graph_while_its_memory_is_small():
    """With the model's config and the default block size, a graph of more than 8 blocks'
    worth of edges stays whole until :func:`whole_graph_bytes` passes ``max_whole_bytes``;
    an explicit block size keeps the edge-count rule."""
    from ase.build import bulk

    from allegro_jax.nn.model import default_block_edges, whole_graph_bytes

    cfg = config("current")
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((6, 6, 6))  # 1728 atoms
    g = build_graph([Structure.from_ase(atoms)], ("Si",), 4.0, dtype=np.float64)
    n_edges = int(np.sum(g.edge_mask))
    assert n_edges > 8 * default_block_edges()  # blocks by the edge-count rule alone
    need = whole_graph_bytes(cfg, g.edge_mask.shape[0])
    assert ChunkPlanner()(g) is not None  # without a config: the edge-count rule
    assert ChunkPlanner(config=cfg)(g) is None  # ~1e8 bytes: within the 2 GiB default
    assert ChunkPlanner(config=cfg, max_whole_bytes=int(need) + 1)(g) is None
    assert ChunkPlanner(config=cfg, max_whole_bytes=int(need) - 1)(g) is not None
    # an ensemble of two evaluated together needs twice the memory
    assert ChunkPlanner(config=cfg, max_whole_bytes=int(need) + 1, members=2)(g) is not None
    assert ChunkPlanner(64, config=cfg)(g) is not None  # an explicit size: its own rule


@pytest.mark.parametrize("l_max, layers, scalars, tensors", [(1, 2, 64, 32), (2, 3, 32, 16)])
def test_whole_graph_memory_estimate_is_within_its_stated_range(l_max, layers, scalars, tensors):
    """The estimate the planner uses against the compiled program's own temporaries."""
    from allegro_jax.nn.model import whole_graph_bytes

    cfg = AllegroConfig(
        type_names=("H", "C", "O", "Si"),
        r_max=4.0,
        l_max=l_max,
        num_layers=layers,
        num_scalar_features=scalars,
        num_tensor_features=tensors,
        avg_num_neighbors=20.0,
        model_dtype="float64",
    )
    from ase.build import bulk

    init_fn, apply_fn = make_model(cfg)
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((3, 3, 3))
    atoms.rattle(0.05, seed=1)
    g = build_graph([Structure.from_ase(atoms)], cfg.type_names, cfg.r_max, dtype=np.float64)
    params = init_fn(jax.random.PRNGKey(0))
    compiled = jax.jit(lambda p, g: apply_fn(p, g, forces=True, stress=True)).lower(params, g)
    temp = compiled.compile().memory_analysis().temp_size_in_bytes
    ratio = temp / whole_graph_bytes(cfg, g.edge_mask.shape[0])
    print(f"temporaries / estimate = {ratio:.2f}")
    assert 0.6 <= ratio <= 1.8, ratio
