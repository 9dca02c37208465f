"""nequip-allegro 0.8.x (current generation) and allegro-jax: models and configs.

``from_nequip(model)`` takes a ``nequip`` ``GraphModel`` (freshly built, loaded from a
checkpoint or from a ``nequip-package`` file via ``load_nequip``) and returns our
``(AllegroConfig, params)``; hyper-parameters are read off the modules, weights off the
state dict. Needs the ``parity`` extra (torch, nequip-allegro).

``to_nequip_model(config)`` goes the other way for the hyper-parameters: the
``AllegroModel`` mapping of a ``nequip-train`` config that builds the same architecture
(plain Python, no extra needed).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..config import AllegroConfig
from ..nn.allegro import allegro_tp_specs


def _np(t) -> np.ndarray:
    return (
        t.detach()
        .cpu()
        .numpy()
        .astype(np.float64 if str(t.dtype) == "torch.float64" else np.float32)
    )


_ACT_NAMES = {
    "SiLU": "silu",
    "Tanh": "tanh",
    "GELU": "gelu",
    "Mish": "mish",
    "ShiftedSoftplus": "ssp",
}


def _mlp_info(fn) -> tuple[list[int], str | None, list[np.ndarray]]:
    """Dims, nonlinearity and weight matrices of a nequip ``ScalarMLPFunction``."""
    dims = list(fn.dims)
    mlp = fn.mlp
    if hasattr(mlp, "weights"):  # DeepLinearMLP
        return dims, None, [_np(w) for w in mlp.weights]
    weights, act = [], None
    for m in mlp:
        name = type(m).__name__
        if name == "ScalarLinearLayer":
            if getattr(m, "bias", None) is not None:
                raise ValueError("nequip MLPs with biases are not supported")
            weights.append(_np(m.weight))
        elif name in _ACT_NAMES:
            act = _ACT_NAMES[name]
        elif name != "Identity":
            raise ValueError(f"unsupported nonlinearity module {name} in a nequip MLP")
    return dims, act, weights


def _mlp_params(fn) -> dict[str, np.ndarray]:
    _, _, ws = _mlp_info(fn)
    return {f"weight_{k}": w for k, w in enumerate(ws)}


def _find(model, cls_name: str):
    for _, m in model.named_modules():
        if type(m).__name__ == cls_name:
            return m
    return None


def _energy_model(model):
    """The ``SequentialGraphNetwork`` holding the named Allegro stages."""
    for _, m in model.named_modules():
        if type(m).__name__ == "SequentialGraphNetwork" and hasattr(m, "allegro"):
            return m
    raise ValueError("no Allegro energy model found (is this a nequip-allegro AllegroModel?)")


def from_nequip(model) -> tuple[AllegroConfig, dict[str, Any]]:
    """Convert a nequip-allegro 0.8 ``GraphModel`` to ``(config, params)``.

    Raises:
        ValueError: for features we do not implement (ZBL pair potential, per-edge-type
            cutoffs, spline embeddings, biases) rather than silently mis-converting.
    """
    net = _energy_model(model)
    names = set(dict(net.named_children()))
    if "pair_potential" in names:
        raise ValueError("nequip models with a pair potential (ZBL) are not supported yet")
    edge_norm = net.edge_norm
    if getattr(edge_norm, "_per_edge_type", False):
        raise ValueError("per_edge_type_cutoff is not supported yet")
    rce = net.radial_chemical_embed
    if not hasattr(rce, "bessel_encode"):
        raise ValueError(f"only TwoBodyBesselScalarEmbed is supported, got {type(rce).__name__}")
    bessel, type_embed = rce.bessel_encode, rce.type_embed
    allegro = net.allegro
    sh_irreps = net.tensor_embed.irreps_out[net.tensor_embed.tensor_basis_out_field]
    l_max = sh_irreps.lmax
    parity = any(ir.p != (-1) ** ir.l for _, ir in allegro.tensor_track_allowed_irreps)
    type_names = list(getattr(model, "type_names", []) or [])
    if not type_names:
        raise ValueError("the nequip model has no type_names metadata")

    s_dims, s_act, _ = _mlp_info(net.scalar_embed_mlp.mlp_module)
    l_dims, l_act, _ = _mlp_info(allegro.latents[0])
    r_dims, r_act, _ = _mlp_info(net.edge_readout.mlp_module)
    norm = _np(allegro.avg_num_neighbors_norm.norm_const).reshape(-1).astype(np.float64)
    ann = [float(1.0 / c**2) for c in norm]
    sc = net.per_type_energy_scale_shift
    scales = _np(sc.scales).reshape(-1).tolist() if sc.has_scales else None
    shifts = _np(sc.shifts).reshape(-1).tolist() if sc.has_shifts else None
    # a single shared value is stored once
    scales = scales[0] if scales is not None and len(scales) == 1 else scales
    shifts = shifts[0] if shifts is not None and len(shifts) == 1 else shifts
    cutoff = bessel.cutoff
    p = float(cutoff.p)
    dtype = str(getattr(model, "model_dtype", "torch.float32")).replace("torch.", "")

    cfg = AllegroConfig(
        type_names=tuple(type_names),
        r_max=float(edge_norm.r_max),
        generation="current",
        l_max=int(l_max),
        parity=bool(parity),
        num_layers=int(allegro.num_layers),
        num_scalar_features=int(allegro.num_scalar_features),
        num_tensor_features=int(allegro.num_tensor_features),
        num_bessels=int(bessel.num_bessels),
        bessel_trainable=bool(bessel.trainable),
        polynomial_cutoff_p=int(p) if p.is_integer() else p,
        radial_chemical_embed_dim=int(type_embed.center_embed.embedding_dim * 2),
        scalar_embed_mlp_hidden_layers_depth=len(s_dims) - 2,
        scalar_embed_mlp_hidden_layers_width=int(s_dims[1]) if len(s_dims) > 2 else 64,
        scalar_embed_mlp_nonlinearity=s_act,
        allegro_mlp_hidden_layers_depth=len(l_dims) - 2,
        allegro_mlp_hidden_layers_width=int(l_dims[1]) if len(l_dims) > 2 else 64,
        allegro_mlp_nonlinearity=l_act,
        tp_path_channel_coupling=bool(allegro.tps[0].path_channel_coupling),
        readout_mlp_hidden_layers_depth=len(r_dims) - 2,
        readout_mlp_hidden_layers_width=int(r_dims[1]) if len(r_dims) > 2 else 32,
        readout_mlp_nonlinearity=r_act,
        avg_num_neighbors=ann if len(ann) > 1 else ann[0],
        per_type_energy_scales=scales,
        per_type_energy_shifts=shifts,
        per_type_energy_scales_trainable=bool(sc.scales_trainable),
        per_type_energy_shifts_trainable=bool(sc.shifts_trainable),
        model_dtype=dtype,
    )
    for dims, name in ((s_dims, "scalar_embed"), (l_dims, "allegro"), (r_dims, "readout")):
        if len(dims) > 3:
            widths = set(dims[1:-1])
            if len(widths) > 1:
                raise ValueError(f"{name} MLP with unequal hidden widths {dims} unsupported")

    params: dict[str, Any] = {
        "center_embed": _np(type_embed.center_embed.weight),
        "neighbor_embed": _np(type_embed.neighbor_embed.weight),
        "basis_linear": _mlp_params(type_embed.basis_linear),
        "scalar_embed_mlp": _mlp_params(net.scalar_embed_mlp.mlp_module),
        "tensor_embed_linear": _mlp_params(net.tensor_embed.env_embed_linear),
        "first_layer_projection": _mlp_params(allegro.first_layer_env_embed_projection),
        "readout": _mlp_params(net.edge_readout.mlp_module),
    }
    if cfg.bessel_trainable:
        params["bessel_frequencies"] = _np(bessel.bessel_weights).reshape(-1)
    specs = allegro_tp_specs(cfg.l_max, cfg.parity, cfg.num_layers)
    for layer, (tp, spec) in enumerate(zip(allegro.tps, specs, strict=True)):
        if tp.num_paths != spec.num_paths:
            raise ValueError(
                f"layer {layer}: reference has {tp.num_paths} TP paths, "
                f"ours {spec.num_paths} ({spec})"
            )
        w = _np(tp.weights)
        shape = (
            (cfg.num_tensor_features, spec.num_paths)
            if cfg.tp_path_channel_coupling
            else (spec.num_paths,)
        )
        params[f"tp_{layer}"] = w.reshape(shape)
        ref_cg = _np(tp.w3j).reshape(
            (spec.num_paths,) + tuple(tp.w3j.shape[-3:]) if not tp.w3j_is_ij_diagonal else (-1,)
        )
        if not tp.w3j_is_ij_diagonal:
            ours = spec.coupling()
            err = float(np.max(np.abs(ref_cg - ours)))
            if err > 1e-6:
                raise ValueError(f"layer {layer}: coupling coefficients differ by {err}")
        params[f"latent_{layer}"] = _mlp_params(allegro.latents[layer])
    if cfg.per_type_energy_scales_trainable:
        params["per_type_energy_scales"] = _np(sc.scales).reshape(-1)
    if cfg.per_type_energy_shifts_trainable:
        params["per_type_energy_shifts"] = _np(sc.shifts).reshape(-1)
    return cfg, params


def load_nequip(path: str, compile_mode: str = "eager"):
    """Load a nequip checkpoint (``.ckpt``) or package (``.nequip.zip``) as a GraphModel."""
    from nequip.model.saved_models.load_utils import load_saved_model
    from nequip.utils.global_state import global_state_initialized, set_global_state

    if not global_state_initialized():
        set_global_state()
    models = load_saved_model(path, compile_mode=compile_mode)
    if isinstance(models, dict):
        if len(models) != 1:
            raise ValueError(f"{path} holds several models {list(models)}; pass one")
        models = next(iter(models.values()))
    return models


#: The AllegroConfig fields :func:`to_nequip_model` translates; any other field must keep its
#: default (nequip-allegro's AllegroModel has no such option, or its name is not mapped).
_NEQUIP_MODEL_KEYS = (
    "num_layers",
    "num_scalar_features",
    "num_tensor_features",
    "scalar_embed_mlp_hidden_layers_depth",
    "scalar_embed_mlp_hidden_layers_width",
    "allegro_mlp_hidden_layers_depth",
    "allegro_mlp_hidden_layers_width",
    "tp_path_channel_coupling",
    "readout_mlp_hidden_layers_depth",
    "readout_mlp_hidden_layers_width",
)
_NEQUIP_HANDLED = frozenset(
    {
        *_NEQUIP_MODEL_KEYS,
        "type_names",
        "r_max",
        "generation",
        "l_max",
        "parity",
        "num_bessels",
        "bessel_trainable",
        "polynomial_cutoff_p",
        "avg_num_neighbors",
        "per_type_energy_shifts",
        "per_type_energy_scales",
        "model_dtype",
    }
)


def _one_or_per_type(values: Any, type_names: tuple[str, ...]) -> Any:
    """A number if every type has the same value, else ``{type: value}``."""
    if values is None or isinstance(values, int | float):
        return values
    values = [float(v) for v in values]
    if len(set(values)) == 1:
        return values[0]
    return dict(zip(type_names, values, strict=True))


def to_nequip_model(config: AllegroConfig, *, seed: int = 0) -> dict[str, Any]:
    """The nequip-allegro 0.8 ``AllegroModel`` config of an allegro-jax model config.

    The ``training_module.model`` mapping of a ``nequip-train`` YAML that builds the same
    architecture with the same statistics (``from_nequip`` of the model it builds gives
    ``config`` back); nequip's defaults stand for ours where they agree (the ``silu``
    nonlinearities).

    Args:
        config: a ``generation: current`` model config.
        seed: nequip's initialisation seed.

    Raises:
        ValueError: the paper generation, or a field without a nequip counterpart here
            (``pair_potential``, ``radial_chemical_embed_dim``, ...) set to a non-default
            value.
    """
    if config.generation != "current":
        raise ValueError("only generation: current has a nequip-allegro 0.8 counterpart")
    defaults = {f.name: f.default for f in dataclasses.fields(AllegroConfig)}
    for name, default in defaults.items():
        value = getattr(config, name)
        if name.endswith("_nonlinearity"):
            if value != "silu":
                raise ValueError(f"{name}: {value!r} is not translated (nequip uses silu)")
        elif name not in _NEQUIP_HANDLED and value != default:
            raise ValueError(f"{name} = {value!r} has no nequip-allegro counterpart here")
    model: dict[str, Any] = {
        "_target_": "allegro.model.AllegroModel",
        "seed": seed,
        "model_dtype": config.model_dtype,
        "type_names": list(config.type_names),
        "r_max": config.r_max,
        "l_max": config.l_max,
        "parity": config.parity,
        "radial_chemical_embed": {
            "_target_": "allegro.nn.TwoBodyBesselScalarEmbed",
            "num_bessels": config.num_bessels,
            "bessel_trainable": config.bessel_trainable,
            "polynomial_cutoff_p": config.polynomial_cutoff_p,
        },
        **{name: getattr(config, name) for name in _NEQUIP_MODEL_KEYS},
    }
    ann = _one_or_per_type(config.avg_num_neighbors, config.type_names)
    if ann is not None:
        model["avg_num_neighbors"] = ann
    if config.per_type_energy_shifts is not None:
        model["per_type_energy_shifts"] = dict(
            zip(config.type_names, map(float, config.per_type_energy_shifts), strict=True)
        )
    scales = _one_or_per_type(config.per_type_energy_scales, config.type_names)
    if scales is not None:
        model["per_type_energy_scales"] = scales
    return model
