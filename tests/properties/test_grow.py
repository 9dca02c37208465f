"""Growing a trained model into a higher ``l_max`` (``allegro_jax.nn.grow``): the grown
model computes the same energies, forces and stress, and its new paths can train."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from systems import random_periodic

from allegro_jax import AllegroConfig, make_model
from allegro_jax.data.padding import build_graph
from allegro_jax.nn.allegro import allegro_tp_specs
from allegro_jax.nn.grow import grow_params

TYPE_NAMES = ("Si", "O")


def config(**kw) -> AllegroConfig:
    base = dict(
        type_names=TYPE_NAMES,
        r_max=3.5,
        generation="current",
        l_max=1,
        num_layers=2,
        num_scalar_features=16,
        num_tensor_features=4,
        avg_num_neighbors=4.0,
        per_type_energy_scales=(1.0, 1.5),
        per_type_energy_shifts=(-1.0, -2.0),
        model_dtype="float64",
    )
    return AllegroConfig(**(base | kw))


def trained_params(cfg: AllegroConfig):
    """Initial weights pushed away from the init (a stand-in for trained ones)."""
    params = make_model(cfg)[0](jax.random.PRNGKey(7))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
    return jax.tree.unflatten(
        tree,
        [
            p * (1.0 + 0.5 * jax.random.normal(k, p.shape, p.dtype))
            for p, k in zip(leaves, keys, strict=True)
        ],
    )


def new_path_mask(src: AllegroConfig, dst: AllegroConfig, layer: int) -> np.ndarray:
    def irreps(spec):
        return [(spec.irreps1[a], spec.irreps2[b], spec.irreps_out[c]) for a, b, c in spec.paths]

    old = set(irreps(allegro_tp_specs(src.l_max, src.parity, src.num_layers)[layer]))
    new = irreps(allegro_tp_specs(dst.l_max, dst.parity, dst.num_layers)[layer])
    return np.array([p not in old for p in new])


def old_output_mask(src: AllegroConfig, dst: AllegroConfig, layer: int) -> np.ndarray:
    old = allegro_tp_specs(src.l_max, src.parity, src.num_layers)[layer].irreps_out
    spec = allegro_tp_specs(dst.l_max, dst.parity, dst.num_layers)[layer]
    return np.array([spec.irreps_out[c] in old for _, _, c in spec.paths])


@pytest.mark.parametrize(
    "l_src, l_dst, kw",
    [
        (1, 2, {}),
        (1, 3, {"parity": False, "num_layers": 3}),
        (2, 3, {"tp_path_channel_coupling": False}),
    ],
    ids=["1to2", "1to3-noparity-3layers", "2to3-uncoupled"],
)
def test_the_grown_model_computes_the_same(l_src, l_dst, kw):
    src, dst = config(l_max=l_src, **kw), config(l_max=l_dst, **kw)
    params = trained_params(src)
    init_dst = make_model(dst)[0](jax.random.PRNGKey(11))
    grown = grow_params(params, src, dst, init_dst)
    structures = [random_periodic(np.random.default_rng(s), 6, numbers=(14, 8)) for s in (0, 1)]
    graph = build_graph(structures, TYPE_NAMES, 3.5, dtype=np.float64)
    apply_src = jax.jit(make_model(src)[1], static_argnames=("forces", "stress"))
    apply_dst = jax.jit(make_model(dst)[1], static_argnames=("forces", "stress"))
    a = apply_src(params, graph, stress=True)
    b = apply_dst(grown, graph, stress=True)
    for key in ("energy", "forces", "stress"):
        x, y = np.asarray(a[key]), np.asarray(b[key])
        assert np.abs(x).max() > 1e-3, key  # not trivially zero
        np.testing.assert_allclose(y, x, rtol=0, atol=1e-10 * np.abs(x).max(), err_msg=key)

    # the new paths into the trained irreps start at zero, and training moves each of
    # them: its gradient is not zero
    grad = jax.grad(lambda p: apply_dst(p, graph, forces=False)["energy"].sum())(grown)
    for layer in range(dst.num_layers):
        zero = new_path_mask(src, dst, layer) & old_output_mask(src, dst, layer)
        assert zero.any()
        w, g = np.asarray(grown[f"tp_{layer}"]), np.asarray(grad[f"tp_{layer}"])
        assert np.all(w[..., zero] == 0)
        assert np.all(np.abs(g[..., zero]).max(axis=0 if g.ndim == 2 else None) > 1e-9)
    # control: with the new paths at their random init the energies change
    mixed = dict(grown)
    last = f"tp_{dst.num_layers - 1}"
    mixed[last] = np.where(new_path_mask(src, dst, dst.num_layers - 1), init_dst[last], grown[last])
    c = apply_dst(mixed, graph, forces=False)
    assert np.abs(np.asarray(c["energy"]) - np.asarray(a["energy"])).max() > 1e-6


@pytest.mark.parametrize(
    "dst_kw, message",
    [
        ({"l_max": 2, "num_layers": 3}, "num_layers: 2 in the trained model, 3 here"),
        ({"l_max": 2, "num_tensor_features": 8}, "num_tensor_features: 4 in the trained model"),
        ({"l_max": 0}, "l_max 0 is below the trained model's 1"),
    ],
)
def test_growing_refuses_other_changes(dst_kw, message):
    src, dst = config(), config(**dst_kw)
    with pytest.raises(ValueError, match=message):
        grow_params({}, src, dst, {})  # refused before any weight is read
