"""The CPU tensor-product kernels equal the XLA operations they replace, to second order."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from probes import run_probe

from allegro_jax import AllegroConfig, Structure, make_model
from allegro_jax.data.padding import build_graph
from allegro_jax.nn import cpu_kernel
from allegro_jax.nn.tensor_product import bilinear, trilinear_sum


def test_kernel_builds_here():
    # CI has a C++ compiler: the fast path must be the one the other tests exercise.
    assert cpu_kernel.available()


def random_entries(rng, nnz, da, db, dout):
    ia = tuple(int(x) for x in rng.integers(0, da, nnz))
    ib = tuple(int(x) for x in rng.integers(0, db, nnz))
    io = tuple(int(x) for x in rng.integers(0, dout - 1, nnz))  # last output: no entry
    return ia, ib, io


@pytest.mark.parametrize(
    "dtype,channels,scalar_w,rows,nnz",
    [  # specialised and generic channel counts, per-channel and scalar weights, 1 chunk or many
        (jnp.float32, 16, False, 300, 17),
        (jnp.float64, 5, False, 300, 17),
        (jnp.float64, 64, True, 1, 17),
        (jnp.float32, 64, True, 2000, 17),
        # weights beyond 32 KB: the bilinear kernel takes rows in blocks (4 rows at 32
        # channels, 2 at 64), row counts that leave a remainder
        (jnp.float32, 32, False, 303, 300),
        (jnp.float64, 64, False, 7, 300),
    ],
)
@pytest.mark.slow
def test_primitives_match_xla(dtype, channels, scalar_w, rows, nnz):
    rng = np.random.default_rng(rows + channels)
    da, db, dout = 4, 3, 5
    ia, ib, io = random_entries(rng, nnz, da, db, dout)  # unsorted, repeated (i, j, k)
    k = jax.random.split(jax.random.PRNGKey(channels), 4)
    a = jax.random.normal(k[0], (rows, da, channels), dtype)
    b = jax.random.normal(k[1], (rows, db, channels), dtype)
    w = jax.random.normal(k[2], (nnz, 1 if scalar_w else channels), dtype)
    g = jax.random.normal(k[3], (rows, dout, channels), dtype)
    tol = 1e-12 if dtype == jnp.float64 else 1e-5  # relative to the largest entry

    def loss(a, b, w):  # first and second derivatives, as in force training
        out = bilinear(a, b, w, ia, ib, io, dout)
        grad_a = jax.grad(lambda x: jnp.sum(jnp.sin(bilinear(x, b, w, ia, ib, io, dout))))(a)
        return (
            jnp.sum(out * g) + jnp.sum(grad_a**2) + jnp.sum(trilinear_sum(a, a, b, ia, ia, ib) ** 2)
        )

    def run(kernel_on):
        with cpu_kernel.use_cpu_kernel(kernel_on):
            fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
            text = fn.lower(a, b, w).as_text()
            return fn(a, b, w), text

    (v1, g1), text_on = run(True)
    (v0, g0), text_off = run(False)
    assert "allegro_bilinear" in text_on and "allegro_trilinear_sum" in text_on
    assert "allegro_" not in text_off
    np.testing.assert_allclose(v1, v0, rtol=tol)
    for x1, x0 in zip(g1, g0, strict=True):
        assert x1.dtype == dtype
        np.testing.assert_allclose(x1, x0, atol=tol * float(jnp.max(jnp.abs(x0))))


def test_trilinear_sum_is_reproducible_and_vmaps():
    k = jax.random.split(jax.random.PRNGKey(3), 3)
    x, y, z = (jax.random.normal(kk, (5000, 3, 16)) for kk in k)
    idx = ((0, 1, 2), (2, 1, 0), (1, 1, 1))
    fn = jax.jit(lambda x, y, z: trilinear_sum(x, y, z, *idx))
    first = np.asarray(fn(x, y, z))
    for _ in range(3):  # the same bits every call, whatever the threads did
        np.testing.assert_array_equal(np.asarray(fn(x, y, z)), first)
    batched = jax.vmap(fn)(jnp.stack([x, 2 * x]), jnp.stack([y, y]), jnp.stack([z, z]))
    np.testing.assert_allclose(batched[1], 2 * first, rtol=1e-6)


# The weight gradient of a bilinear product over many rows (80,000 rows of [16, 32]): the
# kernel's partial sums used to take one nnz * C block per chunk of rows (93 MiB here), which
# glibc served with mmap on XLA's pool thread and the kernel zeroed at every call.
TRILINEAR_PROBE = r"""
import json, resource
import numpy as np
import allegro_jax
import jax, jax.numpy as jnp
from allegro_jax.nn.tensor_product import bilinear
rows, d, c, nnz = 80000, 16, 32, 200
rng = np.random.default_rng(0)
ia, ib, io = (tuple(int(i) for i in np.sort(rng.integers(0, d, nnz))) for _ in range(3))
k = jax.random.split(jax.random.PRNGKey(0), 3)
a, b = jax.random.normal(k[0], (rows, d, c)), jax.random.normal(k[1], (rows, d, c))
w = jax.random.normal(k[2], (nnz, c))
f = jax.jit(jax.grad(lambda w: jnp.sum(jnp.tanh(bilinear(a, b, w, ia, ib, io, d)))))
assert "allegro_trilinear_sum" in f.lower(w).as_text()
f(w).block_until_ready()
faults = []
for _ in range(7):
    m0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(w).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - m0)
chunk_rows = max(4, 32768 // (3 * d * c))
per_chunk_pages = -(-rows // chunk_rows) * nnz * c * 4 / 4096
print(json.dumps({"faults": faults, "per_chunk_pages": per_chunk_pages}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc (Linux only)")
def test_trilinear_sum_scratch_is_not_faulted_in_every_call():
    probe = run_probe(TRILINEAR_PROBE)
    print(f"\npage faults per call: {probe}")
    # one partial sum per chunk faulted its ~24k pages in on most of the 7 calls
    assert sum(probe["faults"]) < 0.5 * probe["per_chunk_pages"]


@pytest.mark.slow
@pytest.mark.parametrize("generation", ["current", "paper"])
def test_model_with_and_without_kernel(generation):
    cfg = AllegroConfig(
        type_names=("H", "O"),
        r_max=4.0,
        l_max=2,
        num_layers=2,
        num_scalar_features=16,
        num_tensor_features=8,
        avg_num_neighbors=4.0,
        generation=generation,
        two_body_latent_mlp_latent_dimensions=(16, 32),
        latent_mlp_latent_dimensions=(32,),
        edge_eng_mlp_latent_dimensions=(16,),
    )
    init_fn, apply_fn = make_model(cfg)
    params = init_fn(jax.random.PRNGKey(0))
    pos = np.random.default_rng(0).uniform(0, 4, (12, 3))
    graph = build_graph(
        [Structure(numbers=[8, 1, 1] * 4, positions=pos)], cfg.type_names, cfg.r_max
    )

    def loss(p):
        out = apply_fn(p, graph)
        return jnp.sum(out["energy"]) + jnp.sum(out["forces"] ** 2)

    results = []
    for on in (True, False):
        with cpu_kernel.use_cpu_kernel(on):
            results.append(jax.jit(jax.value_and_grad(loss))(params))
    (l1, g1), (l0, g0) = results
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    for x1, x0 in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
        np.testing.assert_allclose(x1, x0, atol=1e-5 * float(jnp.max(jnp.abs(x0))))
