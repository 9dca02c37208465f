"""The sparse tensor product equals a dense reference, to second derivatives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from allegro_jax.nn.tensor_product import (
    TPSpec,
    layer_irreps,
    sh_irreps,
    sparse_channelwise_tp,
    sparse_entries,
    weighted_channels_dc,
)


def dense_tp(x1, x2, weights, spec):
    """``out[z,k,u] = Σ_p w[u,p] Σ_ij CG_p[i,j,k] x1[z,i,u] x2[z,j,u]`` with dense CG."""
    cg = jnp.asarray(spec.coupling(), x1.dtype)
    w = jnp.einsum("...p,pijk->...ijk", weights, cg)
    if weights.ndim == 2:
        return jnp.einsum("ziu,zju,uijk->zku", x1, x2, w)
    return jnp.einsum("ziu,zju,ijk->zku", x1, x2, w)


@pytest.mark.slow
@pytest.mark.parametrize("l_max,coupled", [(1, True), (1, False), (2, True), (2, False), (3, True)])
def test_sparse_matches_dense_with_derivatives(l_max, coupled):
    irreps = layer_irreps(l_max, True, 2)
    spec = TPSpec.build(irreps[0], sh_irreps(l_max), irreps[1])
    d1, d2, _ = spec.dims
    k = jax.random.split(jax.random.PRNGKey(l_max), 3)
    x1 = jax.random.normal(k[0], (7, d1, 5), jnp.float64)
    x2 = jax.random.normal(k[1], (7, d2, 5), jnp.float64)
    shape = (5, spec.num_paths) if coupled else (spec.num_paths,)
    w = jax.random.normal(k[2], shape, jnp.float64)
    sparse = lambda a, b, c: sparse_channelwise_tp(a, b, c, spec)  # noqa: E731
    dense = lambda a, b, c: dense_tp(a, b, c, spec)  # noqa: E731
    np.testing.assert_allclose(sparse(x1, x2, w), dense(x1, x2, w), atol=1e-12)

    def first(fn):
        return jax.grad(lambda a, b, c: jnp.sum(jnp.sin(fn(a, b, c))), argnums=(0, 1, 2))

    for gs, gd in zip(first(sparse)(x1, x2, w), first(dense)(x1, x2, w), strict=True):
        np.testing.assert_allclose(gs, gd, atol=1e-11)

    def second(fn):  # d/dw of |∂L/∂x1|², the structure of force training
        return jax.grad(
            lambda c: jnp.sum(jax.grad(lambda a: jnp.sum(jnp.sin(fn(a, x2, c))))(x1) ** 2)
        )

    np.testing.assert_allclose(second(sparse)(w), second(dense)(w), atol=1e-10)
    i, _, _, values = sparse_entries(spec)
    assert len(i) < d1 * d2 * spec.dims[2] and values.shape[0] == spec.num_paths


@pytest.mark.parametrize("l_max", [0, 1, 3])
def test_weighted_channels_own_vjp_matches_autodiff(l_max):
    """``weighted_channels_dc``'s written-out VJP, and its derivative, equal autodiff's."""
    irreps = sh_irreps(l_max)
    index = np.concatenate([[ir] * (2 * l + 1) for ir, (l, _) in enumerate(irreps)])
    k = jax.random.split(jax.random.PRNGKey(7 + l_max), 3)
    basis = jax.random.normal(k[0], (6, len(index)), jnp.float64)
    weights = jax.random.normal(k[1], (6, l_max + 1, 4), jnp.float64)
    probe = jax.random.normal(k[2], (6, len(index), 4), jnp.float64)
    ours = lambda b, w: weighted_channels_dc(b, w, irreps)  # noqa: E731
    plain = lambda b, w: w[:, index, :] * b[:, :, None]  # noqa: E731
    np.testing.assert_allclose(ours(basis, weights), plain(basis, weights), atol=1e-14)

    def loss(fn):
        return lambda b, w: jnp.sum(jnp.sin(fn(b, w)) * probe)

    for a, b in zip(
        jax.grad(loss(ours), (0, 1))(basis, weights),
        jax.grad(loss(plain), (0, 1))(basis, weights),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, atol=1e-13)

    def second(fn):  # d/dw of |dL/dbasis|^2: the force loss' structure
        return jax.grad(lambda w: jnp.sum(jax.grad(loss(fn))(basis, w) ** 2))

    np.testing.assert_allclose(second(ours)(weights), second(plain)(weights), atol=1e-12)
