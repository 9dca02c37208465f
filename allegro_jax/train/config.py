"""Frozen, validated training configuration (nequip/allegro key names where shared).

A YAML file is flat, as in nequip: keys that are fields of
:class:`~allegro_jax.config.AllegroConfig` (``r_max``, ``l_max``, ``num_layers``,
``num_scalar_features``, ``num_tensor_features``, ``avg_num_neighbors``, ...) go to the
model; the others are fields of :class:`TrainConfig`. A nested ``model:`` mapping is also
accepted. Unknown keys raise an error that suggests the close valid key (or lists them).

Model normalisation constants that are not given (``avg_num_neighbors``,
``per_type_energy_shifts``, ``per_type_energy_scales``) are computed from the training set
by :func:`allegro_jax.train.loop.train_and_evaluate` and written into the saved model config.
``type_names`` (or nequip 0.5's ``chemical_symbols``) defaults to the elements of the
training set, sorted by atomic number.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from allegro_jax.config import AllegroConfig

_MODEL_KEYS = frozenset(f.name for f in dataclasses.fields(AllegroConfig))
_OPTIMIZERS = ("Adam", "AMSGrad")
_SCHEDULERS = ("ReduceLROnPlateau", "cosine", "none")
_PATH_KEYS = ("dataset_file_name", "validation_dataset_file_name", "test_dataset_file_name")
_LOSS_KEYS = {"total_energy": "PerAtomMSELoss", "forces": "MSELoss", "stress": "MSELoss"}


#: Model keys whose values depend on the types (their number and names): checked with the
#: rest once ``type_names`` are known (given, or from the training set).
_PER_TYPE_KEYS = frozenset(
    {"per_type_energy_shifts", "per_type_energy_scales", "avg_num_neighbors", "pair_potential"}
)


def check_model_section(model: Mapping[str, Any]) -> None:
    """Validate the values of a (possibly incomplete) model section with :class:`AllegroConfig`.

    The statistics a run fills in (``avg_num_neighbors``, per-type shifts and scales) may be
    missing; without ``type_names`` the per-type keys are checked later, against the types
    of the training set.

    Raises:
        ValueError: ``model: <AllegroConfig's message, which names the key>``.
    """
    probe = {k: v for k, v in model.items() if "type_names" in model or k not in _PER_TYPE_KEYS}
    probe.setdefault("type_names", ("H",))
    try:
        AllegroConfig.from_dict(probe)
    except (TypeError, ValueError) as err:
        raise ValueError(f"model: {err}") from None


#: Environment variable naming the data directory that ``${ALLEGRO_JAX_DATA}/...`` paths (the
#: packaged configs') resolve against; ``allegro-jax train --data-dir DIR`` sets it.
DATA_DIR_ENV = "ALLEGRO_JAX_DATA"
#: The data directory when :data:`DATA_DIR_ENV` is unset, relative to the working
#: directory: ``../shared/data`` beside a checkout (the README's step 2 downloads there).
DEFAULT_DATA_DIR = "../shared/data"
_DATA_TOKENS = ("${" + DATA_DIR_ENV + "}", "$" + DATA_DIR_ENV)


def data_dir() -> Path:
    """The data directory: ``$ALLEGRO_JAX_DATA``, else :data:`DEFAULT_DATA_DIR`."""
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()


class ConfigError(ValueError):
    """A training config file cannot be used (the message names the file, the line and why)."""


def unknown_keys_message(what: str, unknown: list[str], valid: dict[str, list[str]]) -> str:
    """``unknown <what> key 'learning_rat' (did you mean 'learning_rate'?)``.

    Each unknown key gets its close valid keys (:func:`difflib.get_close_matches`); only when
    some key has none are the valid keys listed (``valid``: group name -> keys).

    Args:
        what: e.g. ``"config"``, ``"model"``, ``"loss_coeffs"``.
        unknown: the unknown keys.
        valid: the valid keys, by group (``{"training": [...], "model": [...]}``).
    """
    everything = sorted({k for keys in valid.values() for k in keys})
    parts, unmatched = [], False
    for key in unknown:
        close = difflib.get_close_matches(str(key), everything, n=3, cutoff=0.6)
        if close:
            parts.append(f"{key!r} (did you mean {' or '.join(repr(c) for c in close)}?)")
        else:
            parts.append(repr(key))
            unmatched = True
    text = f"unknown {what} key{'s' if len(unknown) > 1 else ''} " + ", ".join(parts)
    if unmatched:
        text += "; valid " + "; valid ".join(
            f"{group} keys: {sorted(keys)}" if group else f"keys: {sorted(keys)}"
            for group, keys in valid.items()
        )
    return text


def _loss_coeffs(value: Any) -> dict[str, float]:
    """Normalise ``loss_coeffs`` to ``{total_energy, forces, stress}`` floats.

    Accepts nequip's ``{forces: 1.0, total_energy: [1.0, PerAtomMSELoss]}`` form.
    """
    if not isinstance(value, Mapping):
        raise ValueError(f"loss_coeffs must be a mapping, got {value!r}")
    unknown = sorted(set(value) - set(_LOSS_KEYS))
    if unknown:
        raise ValueError(unknown_keys_message("loss_coeffs", unknown, {"": sorted(_LOSS_KEYS)}))
    out = {k: 0.0 for k in _LOSS_KEYS}
    for key, coeff in value.items():
        if isinstance(coeff, list | tuple):
            if len(coeff) != 2 or coeff[1] != _LOSS_KEYS[key]:
                raise ValueError(
                    f"loss_coeffs.{key}: only [coefficient, {_LOSS_KEYS[key]!r}] is supported, "
                    f"got {coeff!r}"
                )
            coeff = coeff[0]
        coeff = float(coeff)
        if not math.isfinite(coeff) or coeff < 0:
            raise ValueError(f"loss_coeffs.{key} must be finite and >= 0, got {coeff}")
        out[key] = coeff
    if not any(out.values()):
        raise ValueError(f"loss_coeffs must give at least one positive weight, got {out}")
    return out


def _config_type_weights(value: Any) -> dict[str, float]:
    """``config_type_weights`` as ``{name: weight}`` with finite weights >= 0."""
    if not isinstance(value, Mapping):
        raise ValueError(
            f"config_type_weights must be a mapping {{config_type: weight}}, got {value!r}"
        )
    out = {}
    for key, weight in value.items():
        try:
            w = float(weight)
        except (TypeError, ValueError):
            w = float("nan")
        if isinstance(weight, bool) or not (np.isfinite(w) and w >= 0):
            raise ValueError(f"config_type_weights.{key} must be a number >= 0, got {weight!r}")
        out[str(key)] = w
    return out


# validation metrics that can pick the best model (metrics.csv columns; lower is better)
METRICS_KEYS = ("validation_loss",) + tuple(
    f"validation_{quantity}_{stat}_{unit}"
    for quantity, unit in (
        ("energy", "mev"),
        ("energy_per_atom", "mev"),
        ("force", "mev_per_a"),
        ("stress", "mev_per_a3"),
    )
    for stat in ("mae", "rmse")
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs, apart from the work directory.

    Attributes:
        dataset_file_name: training data file (rMD17 npz, QM9 npz or anything ASE reads).
        validation_dataset_file_name: optional separate validation file; else the
            validation set is drawn from ``dataset_file_name``.
        test_dataset_file_name: optional file evaluated with the best model at the end.
        n_train: training structures (``None``: all not used for validation).
        n_val: validation structures.
        dataset_seed: seed of the train/validation split.
        validation_stratify_by: an ``info`` key of the frames (e.g. ``config_type``): the
            validation frames are drawn from each of its values in proportion to their
            number, at least one from every value with two or more frames when ``n_val``
            allows, none that takes a value's last training frame
            (:func:`allegro_jax.data.datasets.stratified_split`); ``None`` (the default):
            a plain random draw. Frames without the key form a group of their own.
        energy_key: energy label key for ASE files (``None``: the reader's default for the
            file, :func:`allegro_jax.data.datasets.recommended_read_kwargs`).
        forces_key: forces label key for ASE files (``None``: default; ``"none"``: ignore).
        stress_key: stress label key for ASE files (``None``: default; ``"none"``: ignore).
        seed: seed of the parameter initialisation and the data order.
        ensemble_size: number of models trained at once (one program, ``jax.vmap`` over
            stacked train states, :mod:`allegro_jax.nn.ensemble`). Member ``k`` is initialised
            with seed ``seed + k`` (member 0 is the single-model run); every member sees the
            same batches in the same order (the data order follows ``seed``).
        ensemble_strategy: how the one program runs the members' train steps: ``"vmap"``
            (vectorised; the natural choice on a GPU), ``"map"`` (``jax.lax.map``: one
            after the other, 3× faster than ``vmap`` on CPU, ``benchmarks/ensemble.py``) or
            ``"auto"`` (the default: ``map`` on a CPU backend, ``vmap`` on others).
        batch_size: structures per training batch.
        validation_batch_size: structures per validation batch (default ``batch_size``).
        max_epochs: maximum number of epochs.
        learning_rate: initial learning rate.
        optimizer_name: ``"Adam"`` or ``"AMSGrad"``.
        optimizer_amsgrad: nequip's flag; ``True`` is the same as ``optimizer_name: AMSGrad``.
        optimizer_betas: Adam's ``(b1, b2)``.
        optimizer_eps: Adam's epsilon.
        max_gradient_norm: clip the global gradient norm to this (``None``: no clipping).
        use_ema: keep an exponential moving average of the weights (used for validation
            and the saved model).
        ema_decay: EMA decay.
        ema_use_num_updates: warm the decay up as ``min(decay, (1 + n) / (10 + n))``.
        lr_scheduler_name: ``"ReduceLROnPlateau"`` (on the validation loss), ``"cosine"``
            (the rate of epoch ``e`` is ``learning_rate · (1 + cos(π e / max_epochs)) / 2``:
            a run of a fixed length that ends annealed, e.g. a fine-tune from
            ``initial_model``; the ``LR`` lower bound does not stop it) or ``"none"``.
        lr_scheduler_patience: epochs without improvement before the rate is reduced.
        lr_scheduler_factor: multiplier of the rate on a plateau.
        lr_scheduler_threshold: relative improvement that counts (torch's default 1e-4).
        metrics_key: the validation metric that picks the best model (``model/``), drives
            ``ReduceLROnPlateau`` and counts for early stopping (nequip's key):
            ``validation_loss`` (the default) or a validation error column of
            ``metrics.csv``, e.g. ``validation_force_mae_mev_per_a`` or
            ``validation_energy_per_atom_mae_mev`` (lower is better).
        early_stopping_patiences: ``{"validation_loss": epochs}``: stop after this many
            epochs without improvement of ``metrics_key``.
        early_stopping_lower_bounds: ``{"LR": value}``: stop when the rate falls below it.
        max_wall_time: stop (with a checkpoint) after this many seconds of this invocation.
        loss_coeffs: weights of the per-atom energy MSE (``total_energy``), the force MSE
            (``forces``) and the stress MSE (``stress``), in physical units (eV, Å).
        config_type_weights: ``{config_type: weight}``: every loss term of a training
            structure whose ``config_type`` (an extxyz comment key) is listed is multiplied
            by its weight (others: 1), e.g. ``{Surface: 10}`` for a kind of cell the data
            has few of; the metrics and the validation loss stay unweighted. Every listed
            type must occur in the training split.
        checkpoint_every: save a checkpoint every this many steps (``None``: every epoch);
            always also at the end of the run.
        checkpoint_keep: number of most recent checkpoints kept.
        log_every: steps between progress-bar updates and non-finite-loss checks.
        progress_bar: show a tqdm progress bar.
        tensorboard: also write the epoch metrics as TensorBoard scalars.
        prefetch: batches prepared ahead of the device by a host thread.
        data_parallel: split every batch over ``num_devices`` devices with replicated
            parameters (:mod:`allegro_jax.train.data_parallel`); one step equals the
            single-device step on the whole batch. ``batch_size`` stays the global size.
        num_devices: devices for ``data_parallel`` (``None``: all of ``jax.devices()``).
        workdir: default work directory (the CLI's ``--workdir`` overrides it).
        initial_model: a trained model (a model or run directory that
            :func:`allegro_jax.io.model.load_model` accepts) whose weights, type names
            and statistics a NEW run starts from (fine-tuning, or continuing a run whose
            checkpoints are gone); the optimiser, EMA and schedule start afresh. Ignored
            when the run directory has a checkpoint. Architecture keys given in ``model``
            must agree with the initial model's, except ``l_max`` when
            ``initial_model_grow`` is true.
        initial_model_grow: the model may have a higher ``l_max`` than ``initial_model``
            (every other architecture key equal): its weights are placed in the larger
            model so that it starts from the same energies and forces, the new
            tensor-product paths into the trained irreps at zero
            (:func:`allegro_jax.nn.grow.grow_params`; an ensemble member by member). Ignored
            without ``initial_model`` (as on a resume).
        model: the model's keys (an :class:`AllegroConfig` dict, possibly incomplete).
        source_dir: the YAML file's folder: relative data paths resolve against it first.
    """

    dataset_file_name: str
    n_val: int
    model: Mapping[str, Any]
    validation_dataset_file_name: str | None = None
    test_dataset_file_name: str | None = None
    n_train: int | None = None
    dataset_seed: int = 0
    validation_stratify_by: str | None = None
    energy_key: str | None = None
    forces_key: str | None = None
    stress_key: str | None = None
    seed: int = 0
    ensemble_size: int = 1
    ensemble_strategy: str = "auto"
    batch_size: int = 5
    validation_batch_size: int | None = None
    max_epochs: int = 1_000_000
    learning_rate: float = 0.002
    optimizer_name: str = "Adam"
    optimizer_amsgrad: bool = False
    optimizer_betas: tuple[float, float] = (0.9, 0.999)
    optimizer_eps: float = 1e-8
    max_gradient_norm: float | None = None
    use_ema: bool = True
    ema_decay: float = 0.99
    ema_use_num_updates: bool = True
    lr_scheduler_name: str = "ReduceLROnPlateau"
    lr_scheduler_patience: int = 50
    lr_scheduler_factor: float = 0.5
    lr_scheduler_threshold: float = 1e-4
    metrics_key: str = "validation_loss"
    early_stopping_patiences: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"validation_loss": 100}
    )
    early_stopping_lower_bounds: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"LR": 1e-5}
    )
    max_wall_time: float | None = None
    loss_coeffs: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"total_energy": 1.0, "forces": 1.0}
    )
    config_type_weights: Mapping[str, float] | None = None
    checkpoint_every: int | None = None
    checkpoint_keep: int = 3
    log_every: int = 10
    progress_bar: bool = True
    tensorboard: bool = True
    prefetch: int = 2
    data_parallel: bool = False
    num_devices: int | None = None
    workdir: str | None = None
    initial_model: str | None = None
    initial_model_grow: bool = False
    source_dir: str | None = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        if not isinstance(self.dataset_file_name, str | os.PathLike):
            raise ValueError("dataset_file_name must be a path")
        for name in (
            "n_val",
            "batch_size",
            "max_epochs",
            "checkpoint_keep",
            "log_every",
            "seed",
            "dataset_seed",
            "lr_scheduler_patience",
            "prefetch",
            "ensemble_size",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name} must be an int, got {v!r}")
        for name, minimum in (
            ("n_val", 1),
            ("batch_size", 1),
            ("max_epochs", 0),
            ("checkpoint_keep", 1),
            ("log_every", 1),
            ("prefetch", 1),
            ("ensemble_size", 1),
            ("lr_scheduler_patience", 0),
        ):
            if getattr(self, name) < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {getattr(self, name)}")
        if self.validation_stratify_by is not None and (
            not isinstance(self.validation_stratify_by, str) or not self.validation_stratify_by
        ):
            raise ValueError(
                "validation_stratify_by must be an info key of the frames (e.g. config_type), "
                f"got {self.validation_stratify_by!r}"
            )
        if self.ensemble_strategy not in ("auto", "vmap", "map"):
            raise ValueError(
                f"ensemble_strategy must be 'auto', 'vmap' or 'map', got {self.ensemble_strategy!r}"
            )
        for name in ("data_parallel", "initial_model_grow"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("n_train", "validation_batch_size", "checkpoint_every", "num_devices"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive int or null, got {v!r}")
        for name in ("learning_rate", "optimizer_eps", "lr_scheduler_factor"):
            v = float(getattr(self, name))
            if not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be finite and > 0, got {v}")
            set_(name, v)
        if not self.lr_scheduler_factor < 1:
            raise ValueError(f"lr_scheduler_factor must be < 1, got {self.lr_scheduler_factor}")
        if not 0 <= float(self.lr_scheduler_threshold) < 1:
            raise ValueError("lr_scheduler_threshold must be in [0, 1)")
        set_("lr_scheduler_threshold", float(self.lr_scheduler_threshold))
        if not 0 <= float(self.ema_decay) < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        set_("ema_decay", float(self.ema_decay))
        betas = tuple(float(b) for b in self.optimizer_betas)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"optimizer_betas must be two numbers in [0, 1), got {betas}")
        set_("optimizer_betas", betas)
        if self.optimizer_name not in _OPTIMIZERS:
            raise ValueError(
                f"optimizer_name must be one of {_OPTIMIZERS}, got {self.optimizer_name!r}"
            )
        if self.lr_scheduler_name not in _SCHEDULERS:
            raise ValueError(
                f"lr_scheduler_name must be one of {_SCHEDULERS}, got {self.lr_scheduler_name!r}"
            )
        for name in ("max_gradient_norm", "max_wall_time"):
            v = getattr(self, name)
            if v is not None:
                v = float(v)
                if not v > 0:
                    raise ValueError(f"{name} must be > 0 or null, got {v}")
                set_(name, v)
        if self.metrics_key not in METRICS_KEYS:
            raise ValueError(f"metrics_key must be one of {METRICS_KEYS}, got {self.metrics_key!r}")
        pat = dict(self.early_stopping_patiences or {})
        if set(pat) - {"validation_loss"}:
            raise ValueError(
                f"early_stopping_patiences supports only 'validation_loss', got {sorted(pat)}"
            )
        set_("early_stopping_patiences", {k: int(v) for k, v in pat.items()})
        low = dict(self.early_stopping_lower_bounds or {})
        if set(low) - {"LR"}:
            raise ValueError(f"early_stopping_lower_bounds supports only 'LR', got {sorted(low)}")
        set_("early_stopping_lower_bounds", {k: float(v) for k, v in low.items()})
        set_("loss_coeffs", _loss_coeffs(self.loss_coeffs))
        if self.config_type_weights is not None:
            set_("config_type_weights", _config_type_weights(self.config_type_weights))
        model = dict(self.model)
        unknown = sorted(set(model) - _MODEL_KEYS)
        if unknown:
            raise ValueError(unknown_keys_message("model", unknown, {"model": sorted(_MODEL_KEYS)}))
        if "r_max" not in model:
            raise ValueError("the model needs r_max")
        check_model_section(model)
        set_("model", model)

    # ---- derived ----------------------------------------------------------------------------
    @property
    def dtype(self) -> type[np.floating]:
        """The model's float type (:attr:`AllegroConfig.dtype` of ``model_dtype``)."""
        return np.float64 if self.model.get("model_dtype") == "float64" else np.float32

    @property
    def amsgrad(self) -> bool:
        return self.optimizer_amsgrad or self.optimizer_name == "AMSGrad"

    @property
    def val_batch_size(self) -> int:
        return self.validation_batch_size or self.batch_size

    def resolve_path(self, path: str | os.PathLike) -> Path:
        """A data path: absolute as given; a relative one against the config file's folder
        first (``source_dir``), then against the working directory; ``${ALLEGRO_JAX_DATA}/x``
        against the data directory (:func:`data_dir`).

        Raises:
            FileNotFoundError: no candidate exists (naming every path tried).
        """
        text = str(path)
        for token in _DATA_TOKENS:
            if text.startswith(token):
                root = data_dir()
                p = root / text[len(token) :].lstrip("/\\")
                if p.exists():
                    return p.resolve()
                source = (
                    f"${DATA_DIR_ENV}"
                    if os.environ.get(DATA_DIR_ENV)
                    else "the default, "
                    f"relative to the working directory; set {DATA_DIR_ENV} or --data-dir"
                )
                raise FileNotFoundError(
                    f"data file {text!r} not found: {str(p)!r} does not exist (data directory "
                    f"{str(root)!r}: {source}); the README's step 2 downloads the rMD17 files"
                )
        p = Path(path).expanduser()
        tried = [p]
        if not p.is_absolute():
            tried = [Path(self.source_dir) / p] if self.source_dir is not None else []
            tried.append(Path.cwd() / p)
        for candidate in tried:
            if candidate.exists():
                return candidate.resolve()
        distinct = list(dict.fromkeys(Path(os.path.abspath(t)) for t in tried))
        where = ""
        if len(tried) == 2:
            where = (
                " (the config's folder, then the working directory)"
                if len(distinct) == 2
                else " (the config's folder, which is the working directory)"
            )
        raise FileNotFoundError(
            f"data file {str(path)!r} not found; tried "
            + " and ".join(repr(str(t)) for t in distinct)
            + where
        )

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A flat dict (model keys at the top level, as in the YAML)."""
        d = dataclasses.asdict(self)
        model = d.pop("model")
        d.pop("source_dir")
        d["optimizer_betas"] = list(d["optimizer_betas"])
        return {**d, **model}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source_dir: str | None = None) -> TrainConfig:
        """Build from a flat (nequip-style) or nested (``model:``) mapping.

        Raises:
            ValueError: unknown keys (listing the valid ones) or invalid values.
        """
        d = dict(d)
        model = dict(d.pop("model", None) or {})
        if "chemical_symbols" in d:
            model["type_names"] = d.pop("chemical_symbols")
        train_keys = {f.name for f in dataclasses.fields(cls)} - {"model", "source_dir"}
        for key in list(d):
            if key in _MODEL_KEYS and key not in train_keys:
                model[key] = d.pop(key)
        unknown = sorted(set(d) - train_keys)
        if unknown:
            raise ValueError(
                unknown_keys_message(
                    "config",
                    unknown,
                    {
                        "training": sorted(train_keys),
                        "model": sorted(_MODEL_KEYS | {"chemical_symbols"}),
                    },
                )
            )
        missing = [k for k in ("dataset_file_name", "n_val") if k not in d]
        if missing:
            raise ValueError(f"config is missing required keys {missing}")
        return cls(model=model, source_dir=source_dir, **d)


def load_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read a YAML training config.

    Args:
        path: the YAML file.
        overrides: keys replacing those of the file (relative data paths among them are
            taken relative to the working directory).

    Returns:
        The validated config; its relative data paths resolve against the file's folder
        first, then the working directory (:meth:`TrainConfig.resolve_path`).

    Raises:
        FileNotFoundError: the config file does not exist.
        ConfigError: invalid YAML (naming the line) or config (a ``ValueError``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {str(path)!r}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not a text file (byte 0x{err.object[err.start]:02x} at offset "
            f"{err.start} is not UTF-8); a config is a YAML text file of 'key: value' lines"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(
            f"{path}: not valid YAML{where}: {problem}. Fix the file (a config is 'key: value' "
            "lines; nested values are indented with spaces, never tabs)."
        ) from None
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{path}: a config must be a YAML mapping of 'key: value' lines, got "
            f"{type(data).__name__}"
        )
    overrides = dict(overrides or {})
    for key in _PATH_KEYS:  # paths typed on the command line are relative to the cwd
        value = overrides.get(key)
        if isinstance(value, str | os.PathLike) and not Path(value).expanduser().is_absolute():
            overrides[key] = str(Path.cwd() / Path(value).expanduser())
    data = {**data, **overrides}
    try:
        return TrainConfig.from_dict(data, source_dir=str(path.resolve().parent))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path}: {err}") from err
