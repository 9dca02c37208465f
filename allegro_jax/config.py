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

import numpy as np
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
class MorsePair:
    """A Morse pair term between atoms of types ``types`` (unordered).

    ``V(r) = D [(1 - exp(-a (r - r0)))² - 1] · u(r / r_cut)``.

    Attributes:
        types: the two chemical symbols (may be equal).
        D: well depth, eV (> 0).
        a: width parameter, 1/Å (> 0).
        r0: equilibrium distance, Å (> 0).
        r_cut: where the envelope brings the term to zero, Å (``r0 < r_cut <= r_max``).
    """

    types: tuple[str, str]
    D: float
    a: float
    r0: float
    r_cut: float


@dataclasses.dataclass(frozen=True)
class BarrierPair:
    """A smooth repulsive barrier between atoms of types ``types``, zero outside
    ``(r_lo, r_hi)``: ``V(r) = height · (1 - t²)³`` with ``t = (2r - r_lo - r_hi) /
    (r_hi - r_lo)``, peaking at the midpoint; ``V``, ``V'`` and ``V''`` vanish at both ends.

    Attributes:
        types: the two chemical symbols (may be equal).
        height: eV (> 0).
        r_lo, r_hi: the interval, Å (``0 < r_lo < r_hi <= r_max``).
    """

    types: tuple[str, str]
    height: float
    r_lo: float
    r_hi: float


_PAIR_KINDS = {"morse": MorsePair, "barrier": BarrierPair}


def pair_term_dict(term: MorsePair | BarrierPair) -> dict:
    """A pair term as the mapping a config file gives (``kind`` first)."""
    kind = next(k for k, cls in _PAIR_KINDS.items() if isinstance(term, cls))
    return {"kind": kind, **dataclasses.asdict(term)}


def _pair_order_problem(kind: str, nums: dict, r_max: float) -> str | None:
    """The ordering constraint of a pair term's distances, or ``None`` when it holds."""
    if kind == "morse" and not nums["r0"] < nums["r_cut"] <= r_max:
        return (
            f"need r0 < r_cut <= r_max ({r_max} Å), got r0 = {nums['r0']}, r_cut = {nums['r_cut']}"
        )
    if kind == "barrier" and not nums["r_lo"] < nums["r_hi"] <= r_max:
        return (
            f"need r_lo < r_hi <= r_max ({r_max} Å), got r_lo = {nums['r_lo']}, "
            f"r_hi = {nums['r_hi']}"
        )
    return None


def parse_pair_potential(value, type_names: Sequence[str], r_max: float) -> tuple:
    """Validate ``pair_potential`` (a list of mappings, :class:`MorsePair` or
    :class:`BarrierPair`) into a tuple of those dataclasses.

    Each mapping has ``kind`` (``morse``, the default, or ``barrier``) and that kind's
    fields. Errors name the offending entry.
    """
    if value is None:
        return ()
    if isinstance(value, Mapping | str | MorsePair | BarrierPair):
        value = [value]
    out = []
    seen = set()
    for k, item in enumerate(value):
        where = f"pair_potential[{k}]"
        if isinstance(item, MorsePair | BarrierPair):
            item = pair_term_dict(item)
        if not isinstance(item, Mapping):
            raise TypeError(f"{where} must be a mapping with a kind, got {item!r}")
        item = dict(item)
        kind = item.pop("kind", "morse")
        if kind not in _PAIR_KINDS:
            raise ValueError(f"{where}: unknown kind {kind!r}; supported: {sorted(_PAIR_KINDS)}")
        cls = _PAIR_KINDS[kind]
        keys = [f.name for f in dataclasses.fields(cls)]
        missing = [key for key in keys if key not in item]
        extra = sorted(set(item) - set(keys))
        if missing or extra:
            raise ValueError(f"{where} ({kind}): missing keys {missing}, unknown keys {extra}")
        types = item["types"]
        if isinstance(types, str) or len(types) != 2:
            raise ValueError(f"{where}: types must be two chemical symbols, got {types!r}")
        types = tuple(str(t) for t in types)
        unknown = [t for t in types if t not in type_names]
        if unknown:
            raise ValueError(f"{where}: types {unknown} are not in type_names {list(type_names)}")
        nums = {}
        for key in keys[1:]:
            v = item[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"{where}: {key} must be a finite number, got {v!r}")
            if v <= 0:
                raise ValueError(f"{where}: {key} must be > 0, got {v}")
            nums[key] = float(v)
        problem = _pair_order_problem(kind, nums, r_max)
        if problem:
            raise ValueError(f"{where}: {problem}")
        key = (kind, frozenset(types))
        if key in seen:
            raise ValueError(f"{where}: a second {kind} term for the pair {sorted(key[1])}")
        seen.add(key)
        out.append(cls(types=types, **nums))
    return tuple(out)


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
        pair_potential: fixed pair terms added to the learned energy
            (:mod:`allegro_jax.nn.pair`): a list of ``{kind: morse, types: [A, B], D, a, r0,
            r_cut}`` or ``{kind: barrier, types: [A, B], height, r_lo, r_hi}`` mappings.
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
    pair_potential: tuple = ()
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
        pairs = parse_pair_potential(self.pair_potential, self.type_names, self.r_max)
        set_("pair_potential", pairs)

    # ---- derived quantities -------------------------------------------------------------
    @property
    def dtype(self) -> type[np.floating]:
        """The float type of ``model_dtype``: ``numpy.float32`` or ``numpy.float64``."""
        return np.float64 if self.model_dtype == "float64" else np.float32

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
        out = dataclasses.asdict(self)
        out["pair_potential"] = [pair_term_dict(term) for term in self.pair_potential]
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> AllegroConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)
