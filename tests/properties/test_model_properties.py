"""The model test battery (style.md), for both generations, in float32 and float64."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from systems import random_molecule, random_periodic

from allegro_jax import AllegroConfig, make_model
from allegro_jax.data.graph import AtomicGraph, Structure
from allegro_jax.data.padding import Budget, build_graph

TYPE_NAMES = ("H", "C", "O", "Si")
R_MAX = 3.5
TOL = {"float32": dict(rtol=2e-4, atol=2e-4), "float64": dict(rtol=1e-9, atol=1e-9)}


def small_config(generation: str, dtype: str, **kw) -> AllegroConfig:
    base = dict(
        type_names=TYPE_NAMES,
        r_max=R_MAX,
        generation=generation,
        l_max=2,
        num_layers=2,
        num_scalar_features=16,
        num_tensor_features=4,
        avg_num_neighbors=4.0,
        per_type_energy_scales=(1.0, 1.5, 0.7, 2.0),
        per_type_energy_shifts=(-1.0, -2.0, -3.0, -4.0),
        model_dtype=dtype,
        two_body_latent_mlp_latent_dimensions=(16, 32),
        latent_mlp_latent_dimensions=(32,),
        edge_eng_mlp_latent_dimensions=(16,),
        bessel_trainable=generation == "paper",
    )
    base.update(kw)
    return AllegroConfig(**base)


@functools.cache
def model(generation: str, dtype: str):
    cfg = small_config(generation, dtype)
    init_fn, apply_fn = make_model(cfg)
    params = init_fn(jax.random.PRNGKey(7))
    # push weights away from their init so that the tests are not trivially satisfied
    params = jax.tree.map(
        lambda p: p * (1.0 + 0.3 * jax.random.normal(jax.random.PRNGKey(3), p.shape, p.dtype)),
        params,
    )
    apply = jax.jit(apply_fn, static_argnames=("forces", "stress"))
    return cfg, params, apply


def np_dtype(dtype: str):
    return np.float64 if dtype == "float64" else np.float32


def graph_of(structs, dtype, budget=None) -> AtomicGraph:
    return build_graph(list(structs), TYPE_NAMES, R_MAX, budget=budget, dtype=np_dtype(dtype))


def random_rotation(rng, improper: bool) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return -q if improper else q


GENS = ["current", "paper"]
DTYPES = ["float32", "float64"]
params_grid = pytest.mark.parametrize("generation", GENS)
dtype_grid = pytest.mark.parametrize("dtype", DTYPES)


@pytest.fixture(scope="module")
def systems():
    rng = np.random.default_rng(0)
    return [random_molecule(rng, 8, numbers=(1, 6, 8)), random_periodic(rng, 5)]


def transformed(graph: AtomicGraph, positions=None, cell=None) -> AtomicGraph:
    return graph._replace(
        positions=graph.positions if positions is None else positions.astype(graph.positions.dtype),
        cell=graph.cell if cell is None else cell.astype(graph.cell.dtype),
    )


@pytest.mark.slow
@params_grid
@dtype_grid
@pytest.mark.parametrize("improper", [False, True])
def test_o3_and_translation(generation, dtype, improper, systems):
    cfg, params, apply = model(generation, dtype)
    g = graph_of(systems, dtype)
    out = apply(params, g, stress=True)
    rng = np.random.default_rng(1)
    q = random_rotation(rng, improper)
    t = rng.normal(size=3)
    pos = np.asarray(g.positions, np.float64) @ q.T + t
    cell = np.asarray(g.cell, np.float64) @ q.T
    out2 = apply(params, transformed(g, pos, cell), stress=True)
    tol = TOL[dtype]
    np.testing.assert_allclose(out2["energy"], out["energy"], **tol)
    np.testing.assert_allclose(out2["forces"], np.asarray(out["forces"]) @ q.T, **tol)
    periodic = 1  # graph index of the periodic structure
    s, s2 = np.asarray(out["stress"][periodic]), np.asarray(out2["stress"][periodic])
    np.testing.assert_allclose(s2, q @ s @ q.T, **tol)
    # the rotated forces are not (accidentally) rotation-invariant
    assert np.abs(np.asarray(out["forces"]) @ q.T - np.asarray(out["forces"])).max() > 1e-3


@params_grid
@dtype_grid
def test_permutation(generation, dtype, systems):
    cfg, params, apply = model(generation, dtype)
    mol = systems[0]
    perm = np.random.default_rng(2).permutation(mol.n_atoms)
    permuted = Structure(numbers=mol.numbers[perm], positions=mol.positions[perm])
    out = apply(params, graph_of([mol], dtype))
    out2 = apply(params, graph_of([permuted], dtype))
    tol = TOL[dtype]
    np.testing.assert_allclose(out2["energy"][0], out["energy"][0], **tol)
    np.testing.assert_allclose(out2["forces"][: mol.n_atoms], out["forces"][perm], **tol)
    np.testing.assert_allclose(
        out2["atomic_energies"][: mol.n_atoms], out["atomic_energies"][perm], **tol
    )


@params_grid
def test_forces_are_minus_gradient_finite_differences(generation, systems):
    cfg, params, apply = model(generation, "float64")
    g = graph_of(systems, "float64")
    f = np.asarray(apply(params, g)["forces"])
    h = 1e-5
    rng = np.random.default_rng(3)
    n_real = int(np.sum(g.node_mask))
    for atom in rng.choice(n_real, size=4, replace=False):
        for k in range(3):
            pos = np.array(g.positions)
            pos[atom, k] += h
            ep = float(jnp.sum(apply(params, transformed(g, pos), forces=False)["energy"]))
            pos[atom, k] -= 2 * h
            em = float(jnp.sum(apply(params, transformed(g, pos), forces=False)["energy"]))
            fd = -(ep - em) / (2 * h)
            assert abs(fd - f[atom, k]) < 1e-6 * max(1.0, abs(f[atom, k])), (
                atom,
                k,
                fd,
                f[atom, k],
            )
    assert np.abs(f).max() > 1e-3


@params_grid
def test_stress_by_finite_strain(generation, systems):
    cfg, params, apply = model(generation, "float64")
    g = graph_of([systems[1]], "float64")
    out = apply(params, g, stress=True)
    stress = np.asarray(out["stress"][0])
    volume = abs(np.linalg.det(np.asarray(g.cell[0])))
    h = 1e-5
    for a, b in [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]:
        es = []
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[a, b] += sign * h / 2
            eps[b, a] += sign * h / 2
            m = np.eye(3) + eps
            es.append(
                float(
                    apply(
                        params,
                        transformed(g, np.asarray(g.positions) @ m, np.asarray(g.cell) @ m),
                        forces=False,
                    )["energy"][0]
                )
            )
        de = (es[0] - es[1]) / (2 * h)  # dE/dε_ab (symmetric strain)
        assert abs(de / volume - stress[a, b]) < 1e-7, (a, b, de / volume, stress[a, b])
    np.testing.assert_allclose(out["virial"][0], -stress * volume, rtol=1e-12, atol=1e-12)
    assert np.abs(stress).max() > 1e-4


@params_grid
def test_cell_shorter_than_the_cutoff_equals_its_supercell(generation):
    """A slab whose periodic axis (2.1 Å) is shorter than r_max: each atom's own images are
    its neighbours (i -> i edges with a shift). The cell and its 3 x 1 x 1 supercell give the
    same energy per atom, the same forces on each copy and the same stress."""
    cfg, params, apply = model(generation, "float64")
    rng = np.random.default_rng(4)
    n = 4
    cell = np.diag([2.1, 6.0, 14.0])  # a 2.1 Å axis, and vacuum along z
    frac = rng.uniform(size=(n, 3)) * [1.0, 1.0, 0.25]
    positions = frac @ cell
    numbers = rng.choice([6, 14], size=n)
    one = Structure(numbers=numbers, positions=positions, cell=cell, pbc=True)
    copies = np.concatenate([positions + k * cell[0] for k in range(3)])
    big_cell = cell * [[3], [1], [1]]
    three = Structure(numbers=np.tile(numbers, 3), positions=copies, cell=big_cell, pbc=True)
    g1 = graph_of([one], "float64")
    assert np.any((g1.edge_center == g1.edge_neighbor) & g1.edge_mask)  # self-image edges
    out1 = apply(params, g1, stress=True)
    out3 = apply(params, graph_of([three], "float64"), stress=True)
    np.testing.assert_allclose(out3["energy"][0], 3 * out1["energy"][0], rtol=1e-10)
    f1 = np.asarray(out1["forces"])[:n]
    f3 = np.asarray(out3["forces"])[: 3 * n].reshape(3, n, 3)
    for k in range(3):
        np.testing.assert_allclose(f3[k], f1, atol=1e-10)
    np.testing.assert_allclose(out3["stress"][0], out1["stress"][0], atol=1e-10)
    assert np.abs(f1).max() > 1e-3 and np.abs(np.asarray(out1["stress"][0])).max() > 1e-5


@params_grid
def test_strict_locality(generation):
    """∂E_i/∂r_k = 0 unless k = i or k is within r_max of i (no message passing)."""
    cfg, params, apply = model(generation, "float64")
    # a chain with spacing 0.7 r_max: atom i sees only i±1
    n = 6
    pos = np.zeros((n, 3))
    pos[:, 0] = np.arange(n) * 0.7 * R_MAX
    pos[:, 1] = 0.1 * np.sin(np.arange(n))
    chain = Structure(numbers=[6, 1, 8, 6, 1, 8], positions=pos)
    g = graph_of([chain], "float64")

    def e_atom(p):
        return apply(params, transformed(g, p), forces=False)["atomic_energies"][:n]

    jac = np.asarray(jax.jacrev(e_atom)(jnp.asarray(g.positions)))[:, :n]  # [n, n, 3]
    dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    near = dist < R_MAX
    assert np.all(np.abs(jac[~near]) == 0.0)
    off_diag = near & ~np.eye(n, dtype=bool)
    assert np.all(np.abs(jac[off_diag]).max(axis=-1) > 1e-8)  # neighbours do contribute


@params_grid
@dtype_grid
def test_cutoff_smoothness(generation, dtype):
    cfg, params, apply = model(generation, dtype)

    def dimer(r):
        s = Structure(numbers=[6, 8], positions=[[0, 0, 0], [r, 0, 0]])
        out = apply(params, graph_of([s], dtype))
        return float(out["energy"][0]), np.asarray(out["forces"][:2])

    e_far, f_far = dimer(R_MAX + 0.5)
    shifts = -2.0 + -3.0
    assert abs(e_far - shifts) < 1e-6 and np.abs(f_far).max() == 0.0
    e_in, f_in = dimer(0.6 * R_MAX)
    assert abs(e_in - shifts) > 1e-4  # the pair interacts inside the cutoff
    de, df = [], []
    # float32 forces carry ~1e-8 round-off, so stay further from the cutoff there
    deltas = (1e-1, 1e-2, 1e-3) if dtype == "float64" else (0.3, 0.1, 0.03)
    for delta in deltas:
        e, f = dimer(R_MAX - delta)
        de.append(abs(e - shifts))
        df.append(np.abs(f).max())
    # u(x) ~ (1-x)^3 near the cutoff: forces vanish quadratically, energies cubically
    ratio = deltas[1] / deltas[2]
    assert df[0] > df[1] > df[2] and df[1] / df[2] > 0.5 * ratio**2
    if dtype == "float64":
        assert de[1] / de[2] > 0.5 * ratio**3


@pytest.mark.slow
@params_grid
@dtype_grid
def test_padding_invariance_and_batching(generation, dtype, systems):
    cfg, params, apply = model(generation, dtype)
    tol = TOL[dtype]
    batch = graph_of(systems, dtype)
    big = graph_of(
        systems, dtype, budget=Budget(batch.n_nodes + 17, batch.n_edges + 101, batch.n_graphs + 2)
    )
    o1, o2 = apply(params, batch, stress=True), apply(params, big, stress=True)
    n = int(np.sum(batch.node_mask))
    np.testing.assert_allclose(o2["energy"][:2], o1["energy"][:2], **tol)
    np.testing.assert_allclose(o2["forces"][:n], o1["forces"][:n], **tol)
    np.testing.assert_allclose(o2["stress"][1], o1["stress"][1], **tol)
    assert np.all(np.asarray(o2["forces"][n:]) == 0) and np.all(np.asarray(o2["energy"][2:]) == 0)
    offset = 0
    for i, s in enumerate(systems):
        single = apply(params, graph_of([s], dtype), stress=True)
        np.testing.assert_allclose(single["energy"][0], o1["energy"][i], **tol)
        np.testing.assert_allclose(
            single["forces"][: s.n_atoms], o1["forces"][offset : offset + s.n_atoms], **tol
        )
        offset += s.n_atoms


@pytest.mark.slow
@params_grid
@dtype_grid
def test_no_nan_gradients_and_dtype(generation, dtype, systems, debug_nans):
    cfg, params, apply = model(generation, dtype)
    g = graph_of(systems, dtype, budget=Budget(40, 400, 4))
    # coincident padding atoms: put every padding node at the same place
    pos = np.array(g.positions)
    pos[~np.asarray(g.node_mask)] = pos[0]
    g = transformed(g, pos)

    def loss(p):
        out = apply(p, g, stress=True)
        return (
            jnp.sum(out["energy"] ** 2) + jnp.sum(out["forces"] ** 2) + jnp.sum(out["stress"] ** 2)
        )

    grads = jax.grad(loss)(params)
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
    assert any(np.abs(np.asarray(x)).max() > 0 for x in leaves)
    want = np.dtype(np_dtype(dtype))
    assert all(np.asarray(x).dtype == want for x in jax.tree.leaves(params))
    out = apply(params, g)
    assert out["forces"].dtype == want and out["energy"].dtype == want


@params_grid
def test_no_recompilation_for_same_budget(generation):
    cfg, params, _ = model(generation, "float32")
    _, apply_fn = make_model(cfg)
    traces = []

    def counted(p, g):
        traces.append(1)
        return apply_fn(p, g)

    f = jax.jit(counted)
    rng = np.random.default_rng(5)
    budget = Budget(24, 300, 3)
    for _k in range(3):
        mols = [random_molecule(rng, int(rng.integers(3, 9))) for _ in range(2)]
        jax.block_until_ready(f(params, graph_of(mols, "float32", budget=budget)))
    assert len(traces) == 1


def test_current_and_paper_differ():
    """Sanity: the two generations are genuinely different functions."""
    s = random_molecule(np.random.default_rng(9), 6)
    e = [
        float(
            model(gen, "float64")[2](
                model(gen, "float64")[1], graph_of([s], "float64"), forces=False
            )["energy"][0]
        )
        for gen in GENS
    ]
    assert abs(e[0] - e[1]) > 1e-6
