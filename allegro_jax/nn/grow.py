"""A trained model's weights placed in a model of higher ``l_max`` that computes the same.

Raising ``l_max`` adds spherical-harmonic irreps to the tensor track: new columns in the
linear maps that produce the tensor embedding and the environment weights (one weight per
channel and irrep), new tensor-product paths and new irreps between layers.
:func:`grow_params` copies every trained weight to its place in the larger model and keeps
the larger model's random initial weights for the new columns and for the new paths into
a new irrep, but sets to zero the new paths into an irrep the trained model already had.
The trained model's features then never see a new irrep, so the grown model gives the
same energies (and forces and stress) as the trained one, to rounding. A zero path's
inputs are not zero (the new irreps carry random weights), so neither is the gradient
with respect to its weight, and training moves away from the trained model from the first
step (with the new paths into new irreps also at zero, both ends of such a path would be
zero and stay zero). Paths are matched by their irreps ``(in1, in2, out)``, not by
position: the order of paths changes with ``l_max``. Only the current generation; every
other architecture key must be equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..config import AllegroConfig
from .allegro import allegro_tp_specs
from .tensor_product import channel_major_columns

# statistics and names: they do not shape the weights and follow the trained model
_FREE_KEYS = frozenset(
    {"l_max", "type_names", "avg_num_neighbors", "per_type_energy_shifts", "per_type_energy_scales"}
)


def grow_differences(src: AllegroConfig, dst: AllegroConfig) -> list[str]:
    """Why ``src``'s weights cannot be grown into ``dst`` (an empty list: they can)."""
    a, b = src.to_dict(), dst.to_dict()
    out = []
    if a.get("generation") != "current" or b.get("generation") != "current":
        out.append("only the current generation can be grown")
    if b["l_max"] < a["l_max"]:
        out.append(f"l_max {b['l_max']} is below the trained model's {a['l_max']}")
    for key in sorted(set(a) | set(b)):
        if key in _FREE_KEYS or a.get(key) == b.get(key):
            continue
        out.append(f"{key}: {a.get(key)!r} in the trained model, {b.get(key)!r} here")
    return out


def _column_map(src_cfg: AllegroConfig, dst_cfg: AllegroConfig, offset: int) -> tuple:
    """(source columns, destination columns) of a channel-major ``[C * n_irreps]`` block
    at ``offset``: irrep ``l`` of channel ``c`` moves from ``c·n_src + l`` to ``c·n_dst + l``."""
    C = src_cfg.num_tensor_features
    n_src, n_dst = src_cfg.l_max + 1, dst_cfg.l_max + 1
    src = np.concatenate(channel_major_columns(offset, C, n_src))
    dst = np.concatenate(channel_major_columns(offset, C, n_dst)[:n_src])
    return src, dst


def grow_params(
    params: Mapping[str, Any],
    src_cfg: AllegroConfig,
    dst_cfg: AllegroConfig,
    dst_init: Mapping[str, Any],
) -> dict[str, Any]:
    """``params`` (a model of ``src_cfg``) in a model of ``dst_cfg`` that computes the same.

    Args:
        params: the trained model's parameters (as ``make_model``'s ``init_fn`` returns
            them).
        src_cfg, dst_cfg: the two model configs; ``dst_cfg.l_max >= src_cfg.l_max``, every
            other architecture key equal.
        dst_init: freshly initialised parameters of the ``dst_cfg`` model (same nesting);
            they supply the weights of the new columns.

    Returns:
        Parameters of the ``dst_cfg`` model (numpy arrays, ``dst_init``'s dtypes).
    """
    why = grow_differences(src_cfg, dst_cfg)
    if why:
        raise ValueError("cannot grow the trained model into this one: " + "; ".join(why))
    S = src_cfg.num_scalar_features
    irreps_cols = {  # name -> offset of its channel-major [C * n_irreps] block
        "tensor_embed_linear": 0,
        "first_layer_projection": S,
        **{f"latent_{k}": S for k in range(src_cfg.num_layers - 1)},
    }
    src_specs = allegro_tp_specs(src_cfg.l_max, src_cfg.parity, src_cfg.num_layers)
    dst_specs = allegro_tp_specs(dst_cfg.l_max, dst_cfg.parity, dst_cfg.num_layers)
    if set(params) != set(dst_init):
        raise ValueError(
            f"the trained model's parameters {sorted(params)} are not those of this model "
            f"{sorted(dst_init)}"
        )
    out: dict[str, Any] = {}
    for name, init in dst_init.items():
        got = params[name]
        if name.startswith("tp_"):
            out[name] = _grow_paths(got, init, src_specs[int(name[3:])], dst_specs[int(name[3:])])
        elif name in irreps_cols:  # an MLP whose last layer ends in a channel-major block
            last = f"weight_{len(init) - 1}"
            grown = {k: np.asarray(v, dtype=np.asarray(init[k]).dtype) for k, v in got.items()}
            w = np.array(init[last], copy=True)
            src_cols, dst_cols = _column_map(src_cfg, dst_cfg, irreps_cols[name])
            w[:, dst_cols] = np.asarray(got[last])[:, src_cols]
            w[:, : irreps_cols[name]] = np.asarray(got[last])[:, : irreps_cols[name]]
            grown[last] = w
            out[name] = grown
        else:  # shapes unchanged by l_max
            out[name] = _same(got, init, name)
    return out


def _same(got: Any, init: Any, name: str) -> Any:
    if isinstance(init, Mapping):
        return {k: _same(got[k], v, f"{name}/{k}") for k, v in init.items()}
    a = np.asarray(got)
    if a.shape != np.shape(init):
        raise ValueError(f"{name}: shape {a.shape} in the trained model, {np.shape(init)} here")
    return a.astype(np.asarray(init).dtype)


def _grow_paths(got: Any, init: Any, src_spec, dst_spec) -> np.ndarray:
    """Path weights ``[C, P]`` (or ``[P]``): each trained path at the destination's path of
    the same irreps; a new path zero if its output irrep is one the trained model has,
    else its initial weight."""

    def key(spec, p):
        i1, i2, io = spec.paths[p]
        return spec.irreps1[i1], spec.irreps2[i2], spec.irreps_out[io]

    where = {key(dst_spec, p): p for p in range(dst_spec.num_paths)}
    got = np.asarray(got)
    w = np.array(init, copy=True)
    for p in range(dst_spec.num_paths):
        if key(dst_spec, p)[2] in src_spec.irreps_out:
            w[..., p] = 0.0
    for p in range(src_spec.num_paths):
        w[..., where[key(src_spec, p)]] = got[..., p]
    return w
