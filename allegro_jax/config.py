"""Frozen, validated model configuration.

Names follow nequip/allegro so that users can carry their configs over: ``r_max``,
``l_max``, ``parity``, ``num_layers``, ``num_scalar_features``, ``num_tensor_features``,
``avg_num_neighbors``, ``per_type_energy_scales``, ``per_type_energy_shifts``, ...

Two generations are supported (``generation``):
  * ``"current"``: allegro >= 0.7 (the one ``pip install nequip-allegro`` gives); weight-level
    parity with nequip-allegro 0.8.3.
  * ``"paper"``: allegro 0.2 as published (Musaelian et al. 2023): trainable normalised
    Bessel basis, two-body MLP on one-hot types, linear mixing after the tensor product,
    residual latent updates with a per-layer cutoff.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ase.data import atomic_numbers

_NONLINEARITIES = (None, "silu", "tanh", "gelu", "mish", "ssp")
_GENERATIONS = ("current", "paper")
_DTYPES = ("float32", "float64")


def _per_type(value, type_names: tuple[str, ...], name: str) -> tuple[float, ...] | None:
    """Normalise a scalar / per-type sequence / {symbol: value} mapping to a per-type tuple."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        missing = [t for t in type_names if t not in value]
        extra = [k for k in value if k not in type_names]
        if missing or extra:
            raise ValueError(
                f"`{name}` must give a value for each of type_names {list(type_names)}; "
                f"missing {missing}, unknown {extra}"
            )
        out = tuple(float(value[t]) for t in type_names)
    elif isinstance(value, int | float):
        out = (float(value),) * len(type_names)
    elif isinstance(value, Sequence):
        if len(value) != len(type_names):
            raise ValueError(
                f"`{name}` has {len(value)} entries but there are {len(type_names)} types "
                f"{list(type_names)}"
            )
        out = tuple(float(v) for v in value)
    else:
        raise TypeError(f"`{name}` must be a number, a sequence or a mapping, got {value!r}")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"`{name}` must be finite, got {out}")
    return out


@dataclasses.dataclass(frozen=True)
class AllegroConfig:
    """Hyper-parameters of an Allegro model.

    Attributes:
        type_names: chemical symbols of the atom types, in type-index order.
        r_max: cutoff radius in Å.
        generation: ``"current"`` (allegro 0.8) or ``"paper"`` (allegro 0.2).
        l_max: maximum rotation order of the spherical harmonics.
        parity: keep odd-parity features (O(3)); ``False`` keeps only the SH irreps.
        num_layers: number of Allegro layers (>= 1).
        num_scalar_features: width S of the scalar (latent) track (current generation).
        num_tensor_features: number of tensor channels C (``env_embed_multiplicity`` in 0.2).
        num_bessels: number of Bessel basis functions B.
        bessel_trainable: whether the Bessel frequencies are trainable.
        polynomial_cutoff_p: exponent p of the polynomial envelope.
        avg_num_neighbors: N_avg for edge-sum normalisation; a number or one per type.
        per_type_energy_scales: σ_t (number, per-type sequence or {symbol: value}).
        per_type_energy_shifts: μ_t (same forms).
        model_dtype: ``"float32"`` or ``"float64"`` for parameters and features.
    """

    type_names: tuple[str, ...]
    r_max: float
    generation: str = "current"
    l_max: int = 2
    parity: bool = True
    num_layers: int = 2
    num_scalar_features: int = 64
    num_tensor_features: int = 16
    num_bessels: int = 8
    bessel_trainable: bool = False
    polynomial_cutoff_p: int = 6
    # current generation
    radial_chemical_embed_dim: int | None = None
    scalar_embed_mlp_hidden_layers_depth: int = 1
    scalar_embed_mlp_hidden_layers_width: int = 64
    scalar_embed_mlp_nonlinearity: str | None = "silu"
    allegro_mlp_hidden_layers_depth: int = 1
    allegro_mlp_hidden_layers_width: int = 64
    allegro_mlp_nonlinearity: str | None = "silu"
    tp_path_channel_coupling: bool = True
    readout_mlp_hidden_layers_depth: int = 1
    readout_mlp_hidden_layers_width: int = 32
    readout_mlp_nonlinearity: str | None = "silu"
    # paper generation (allegro 0.2 names)
    two_body_latent_mlp_latent_dimensions: tuple[int, ...] = (128, 256, 512, 1024)
    latent_mlp_latent_dimensions: tuple[int, ...] = (1024, 1024, 1024)
    edge_eng_mlp_latent_dimensions: tuple[int, ...] = (128,)
    latent_resnet: bool = True
    latent_resnet_update_ratios_learnable: bool = False
    # normalisation and outputs
    avg_num_neighbors: float | tuple[float, ...] = 1.0
    per_type_energy_scales: Any = None
    per_type_energy_shifts: Any = None
    per_type_energy_scales_trainable: bool = False
    per_type_energy_shifts_trainable: bool = False
    model_dtype: str = "float32"

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        if isinstance(self.type_names, str) or not isinstance(self.type_names, Sequence):
            raise TypeError(f"type_names must be a sequence of symbols, got {self.type_names!r}")
        set_("type_names", tuple(str(t) for t in self.type_names))
        if len(self.type_names) == 0:
            raise ValueError("type_names must name at least one element")
        unknown = [t for t in self.type_names if t not in atomic_numbers or t == "X"]
        if unknown:
            raise ValueError(f"type_names contains unknown chemical symbols {unknown}")
        if len(set(self.type_names)) != len(self.type_names):
            raise ValueError(f"type_names has duplicates: {list(self.type_names)}")
        if not (isinstance(self.r_max, int | float) and math.isfinite(self.r_max)):
            raise ValueError(f"r_max must be a finite number, got {self.r_max!r}")
        if self.r_max <= 0:
            raise ValueError(f"r_max must be > 0, got {self.r_max}")
        set_("r_max", float(self.r_max))
        if self.generation not in _GENERATIONS:
            raise ValueError(f"generation must be one of {_GENERATIONS}, got {self.generation!r}")
        if self.model_dtype not in _DTYPES:
            raise ValueError(f"model_dtype must be one of {_DTYPES}, got {self.model_dtype!r}")
        for name in (
            "l_max",
            "num_layers",
            "num_scalar_features",
            "num_tensor_features",
            "num_bessels",
            "scalar_embed_mlp_hidden_layers_width",
            "allegro_mlp_hidden_layers_width",
            "readout_mlp_hidden_layers_width",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"{name} must be an int, got {v!r}")
        if self.l_max < 0:
            raise ValueError(f"l_max must be >= 0, got {self.l_max}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        for name in ("num_scalar_features", "num_tensor_features", "num_bessels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.polynomial_cutoff_p < 2:
            raise ValueError(f"polynomial_cutoff_p must be >= 2, got {self.polynomial_cutoff_p}")
        for name in (
            "scalar_embed_mlp_hidden_layers_depth",
            "allegro_mlp_hidden_layers_depth",
            "readout_mlp_hidden_layers_depth",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in (
            "scalar_embed_mlp_nonlinearity",
            "allegro_mlp_nonlinearity",
            "readout_mlp_nonlinearity",
        ):
            v = getattr(self, name)
            if v in ("None", "null"):
                set_(name, None)
            elif v not in _NONLINEARITIES:
                raise ValueError(f"{name} must be one of {_NONLINEARITIES}, got {v!r}")
        emb = self.embed_dim
        if self.generation == "current" and emb % 2:
            raise ValueError(f"radial_chemical_embed_dim must be even, got {emb}")
        for name in (
            "two_body_latent_mlp_latent_dimensions",
            "latent_mlp_latent_dimensions",
            "edge_eng_mlp_latent_dimensions",
        ):
            v = tuple(int(d) for d in getattr(self, name))
            if any(d < 1 for d in v):
                raise ValueError(f"{name} must be positive widths, got {v}")
            set_(name, v)
        if self.generation == "paper" and not self.two_body_latent_mlp_latent_dimensions:
            raise ValueError("two_body_latent_mlp_latent_dimensions must not be empty")
        if self.generation == "paper" and not self.latent_mlp_latent_dimensions:
            raise ValueError("latent_mlp_latent_dimensions must not be empty")
        # normalisation constants
        ann = self.avg_num_neighbors
        if ann is None:
            raise ValueError("avg_num_neighbors must be given (a number or one per type)")
        ann = _per_type(ann, self.type_names, "avg_num_neighbors")
        if any(v <= 0 for v in ann):
            raise ValueError(f"avg_num_neighbors must be > 0, got {ann}")
        set_("avg_num_neighbors", ann if len(set(ann)) > 1 else ann[0])
        set_(
            "per_type_energy_scales",
            _per_type(self.per_type_energy_scales, self.type_names, "per_type_energy_scales"),
        )
        set_(
            "per_type_energy_shifts",
            _per_type(self.per_type_energy_shifts, self.type_names, "per_type_energy_shifts"),
        )

    # ---- derived quantities -------------------------------------------------------------
    @property
    def num_types(self) -> int:
        return len(self.type_names)

    @property
    def embed_dim(self) -> int:
        """Width of the two-body radial-chemical embedding (current generation)."""
        if self.radial_chemical_embed_dim is None:
            return self.num_scalar_features
        return int(self.radial_chemical_embed_dim)

    @property
    def atomic_numbers(self) -> tuple[int, ...]:
        return tuple(atomic_numbers[t] for t in self.type_names)

    def avg_num_neighbors_per_type(self) -> tuple[float, ...]:
        a = self.avg_num_neighbors
        return a if isinstance(a, tuple) else (a,) * self.num_types

    def replace(self, **changes) -> AllegroConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> AllegroConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)
