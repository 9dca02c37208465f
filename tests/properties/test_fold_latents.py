"""The current generation's folded latents (each latent's readers computed by the product
that makes it, ``AllegroCurrent(fold_latents=True)``, the default) compute the same model
as the layout of the reference (every latent materialised, each MLP applied block by
block): same parameters, same energies, forces, stress and training gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from systems import random_molecule, random_periodic

import allegro_jax.nn.model as model_module
from allegro_jax import AllegroConfig, make_model
from allegro_jax.data.padding import build_graph
from allegro_jax.nn.allegro import AllegroCurrent, wide_product

TYPE_NAMES = ("H", "C", "O", "Si")


def both_models(monkeypatch, **kw):
    cfg = AllegroConfig(
        type_names=TYPE_NAMES,
        r_max=3.5,
        l_max=2,
        num_scalar_features=16,
        num_tensor_features=4,
        avg_num_neighbors=4.0,
        per_type_energy_scales=(1.0, 1.5, 0.7, 2.0),
        per_type_energy_shifts=(-1.0, -2.0, -3.0, -4.0),
        model_dtype="float64",
        **kw,
    )
    folded = make_model(cfg)
    with monkeypatch.context() as m:
        m.setattr(model_module, "build_module", lambda c: AllegroCurrent(c, fold_latents=False))
        blockwise = make_model(cfg)
    return folded, blockwise


def n_products(apply, params, g) -> int:
    jaxpr = jax.make_jaxpr(lambda p: apply(p, g, forces=False)["energy"])(params)
    return str(jaxpr).count("dot_general")


@pytest.mark.parametrize(
    "kw",
    [
        dict(num_layers=2),
        dict(num_layers=3, allegro_mlp_hidden_layers_depth=2, readout_mlp_hidden_layers_depth=0),
        dict(num_layers=1, readout_mlp_hidden_layers_depth=2, allegro_mlp_nonlinearity=None),
    ],
    ids=["default", "3-layers-deep-mlps-linear-readout", "1-layer-linear-mlps"],
)
def test_folded_latents_compute_the_blockwise_model(monkeypatch, kw):
    (init_f, apply_f), (init_b, apply_b) = both_models(monkeypatch, **kw)
    params = init_f(jax.random.PRNGKey(7))
    # the parameter trees are the same: names, shapes and initial values
    params_b = init_b(jax.random.PRNGKey(7))
    assert jax.tree.structure(params) == jax.tree.structure(params_b)
    jax.tree.map(np.testing.assert_array_equal, params, params_b)
    params = jax.tree.map(
        lambda p: p * (1 + 0.3 * jax.random.normal(jax.random.PRNGKey(3), p.shape, p.dtype)),
        params,
    )
    rng = np.random.default_rng(0)
    structs = [random_molecule(rng, 8, numbers=(1, 6, 8)), random_periodic(rng, 6)]
    g = build_graph(structs, TYPE_NAMES, 3.5, dtype=np.float64)
    # two different programs, not one path compared with itself
    assert n_products(apply_f, params, g) < n_products(apply_b, params, g)

    out_f = apply_f(params, g, stress=True)
    out_b = apply_b(params, g, stress=True)
    for key in ("energy", "forces", "stress"):
        np.testing.assert_allclose(out_f[key], out_b[key], rtol=1e-12, atol=1e-12)

    # the training gradient of a force loss: the second derivatives of the products
    def loss(apply, p):
        out = apply(p, g, stress=True)
        return jnp.sum(out["forces"] ** 2) + jnp.sum(out["energy"] ** 2) + jnp.sum(out["stress"])

    grad_f = jax.grad(lambda p: loss(apply_f, p))(params)
    grad_b = jax.grad(lambda p: loss(apply_b, p))(params)
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(grad_b))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12 * scale),
        grad_f,
        grad_b,
    )


def test_mlps_without_hidden_layers_take_the_blockwise_path(monkeypatch):
    (init_f, apply_f), (_, apply_b) = both_models(monkeypatch, allegro_mlp_hidden_layers_depth=0)
    params = init_f(jax.random.PRNGKey(0))
    g = build_graph([random_periodic(np.random.default_rng(1), 6)], TYPE_NAMES, 3.5)
    assert n_products(apply_f, params, g) == n_products(apply_b, params, g)


def test_wide_product_vjp_matches_autodiff():
    rng = np.random.default_rng(2)
    u = jnp.asarray(rng.normal(size=(7, 5)))
    ms = tuple(jnp.asarray(rng.normal(size=(5, w))) for w in (3, 1, 4))
    cts = tuple(jnp.asarray(rng.normal(size=(7, w))) for w in (3, 1, 4))

    def plain(u, ms):
        return tuple(u @ m for m in ms)

    def f(prod, u, ms):  # a scalar with second-order terms in both arguments
        ys = prod(u, ms)
        first = sum(jnp.vdot(y, c) for y, c in zip(ys, cts, strict=True))
        gu = jax.grad(lambda u: sum(jnp.sum(jnp.sin(y)) for y in prod(u, ms)))(u)
        return first + jnp.sum(gu**2)

    for y, ref in zip(wide_product(u, ms), plain(u, ms), strict=True):
        np.testing.assert_allclose(y, ref, rtol=1e-13)
    g_new = jax.grad(lambda u, ms: f(wide_product, u, ms), argnums=(0, 1))(u, ms)
    g_ref = jax.grad(lambda u, ms: f(plain, u, ms), argnums=(0, 1))(u, ms)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), g_new, g_ref)
