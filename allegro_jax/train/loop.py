"""``train_and_evaluate(config, workdir)``: the training loop, its files and its resume logic.

Files in ``workdir``:

* ``train_config.yaml``: the training config as run; ``model_config.json``: the model
  config with the training-set statistics filled in; ``statistics.json``.
* ``metrics.csv`` and ``metrics.jsonl``: one row per epoch (losses, energy/force/stress MAE
  and RMSE in meV, meV/Å, meV/Å^3, learning rate, times); ``tensorboard/``: the same as
  TensorBoard scalars (:mod:`.tensorboard`, step = epoch).
* ``checkpoints/``, ``checkpoints_best/``: orbax states (:mod:`.checkpoint`).
* ``model/``: the best model (EMA weights; for an ensemble each member's best),
  :func:`allegro_jax.train.export.load_model`.
* ``summary.json`` and, with a test file, ``test_metrics.json`` (written when the run has
  finished; after a clock stop ``summary.json`` has no ``test`` but ``test_not_evaluated``,
  which says why and gives the ``allegro-jax evaluate`` command).

Progress: ``compiling the training step…`` and the compile time before the first step (and
the validation step's before the first validation), a note if a later step compiles new
shapes, then one tqdm bar per epoch (``progress_bar``), opened once the first step has
compiled so that its rate and ETA leave compilation out.

Resume determinism: everything that influences the future lives in the checkpointed
:class:`~allegro_jax.train.state.TrainState` (parameters, optimiser and EMA state, the
plateau scheduler, the PRNG key, the partial error sums of the current epoch; the best
validation loss, in float64, in the checkpoint's JSON metadata), and the data order of
epoch ``e`` is a function of ``(seed, e)`` only.
A restarted run restores the newest checkpoint, drops the metric rows of later epochs,
and continues at batch ``step - epoch · n_batches`` of the same permutation, so its metric
rows equal those of an uninterrupted run bit for bit (on the same machine and software).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from ase.data import chemical_symbols
from flax import serialization
from tqdm.auto import tqdm

from allegro_jax.compiling import watch_compiles
from allegro_jax.config import AllegroConfig
from allegro_jax.data.datasets import (
    DataKeyError,
    describe_frame_keys,
    random_split,
    read_dataset,
    recommended_read_kwargs,
)
from allegro_jax.data.statistics import DatasetStatistics, compute_statistics
from allegro_jax.io.atomic import atomic_open, atomic_write_text
from allegro_jax.io.model import (
    PARAMS_FILE,
    find_model_dir,
    read_ensemble_size,
    read_model_config,
    save_model,
)
from allegro_jax.io.runlock import HOLDER_FILE, LOCK_FILE, RunLock
from allegro_jax.nn.ensemble import member, stack_members
from allegro_jax.nn.model import make_model, subtract_pair_potential
from allegro_jax.train.checkpoint import CheckpointError, CheckpointStore
from allegro_jax.train.config import TrainConfig
from allegro_jax.train.data import SplitData, epoch_permutation, prefetch
from allegro_jax.train.data_parallel import setup_data_parallel
from allegro_jax.train.ensemble import (
    evaluate_ensemble_split,
    make_ensemble_eval_step,
    make_ensemble_train_step,
    summarize_uncertainty,
)
from allegro_jax.train.evaluate import evaluate_model, evaluate_split
from allegro_jax.train.loss import summarize
from allegro_jax.train.optimizer import make_optimizer, plateau_update
from allegro_jax.train.state import create_train_state
from allegro_jax.train.step import make_eval_step, make_train_step
from allegro_jax.train.tensorboard import SummaryWriter


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient became NaN/inf; the run stopped, checkpoints are untouched."""


def read_structures(config: TrainConfig, path: str) -> list:
    """Read a data file: the npz readers, or ASE with the config's label keys.

    Keys left ``None`` take the reader's default for the file; ``"none"`` ignores a label.
    Only the energy is required; frames without forces or stress get masked labels.
    """
    resolved = config.resolve_path(path)
    if resolved.suffix == ".npz":
        return read_dataset(resolved)
    kwargs: dict[str, Any] = {"required": ("energy",)}
    for name in ("energy_key", "forces_key", "stress_key"):
        value = getattr(config, name)
        if value is not None:
            kwargs[name] = None if value.lower() == "none" else value
    return read_dataset(resolved, **kwargs)


def check_loss_labels(config: TrainConfig, path: str, structures: Sequence) -> None:
    """The labels the loss uses must be in the file: at least one frame with forces (stress).

    Frames without forces or stress are fine (their labels are masked), but a file where
    none has them while ``loss_coeffs`` weighs them would train silently without that term
    (the forces under another key than the config's, e.g.).

    Raises:
        DataKeyError: naming the file, the key looked up, the keys the first frame has and
            the two ways out (``forces_key``/``stress_key``, or a zero loss weight).
    """
    for label in ("forces", "stress"):
        weight = config.loss_coeffs[label]
        if weight <= 0 or any(getattr(s, label) is not None for s in structures):
            continue
        resolved = config.resolve_path(path)
        key = getattr(config, f"{label}_key")
        if key is None:
            key = recommended_read_kwargs(resolved).get(f"{label}_key", label)
        if resolved.suffix == ".npz":
            found = "this npz file has none"
        elif key.lower() == "none":
            found = f"{label}_key is none (ignored)"
        else:
            found = f"no frame has {label} under the key {key!r}; {describe_frame_keys(resolved)}"
        raise DataKeyError(
            f"{resolved}: the loss uses {label} (loss_coeffs.{label} = {weight:g}) but {found}. "
            f"Set {label}_key to the key that holds them, or loss_coeffs.{label}: 0 to train "
            f"without {label}."
        )


def load_splits(config: TrainConfig) -> tuple[list, list]:
    """The seeded (train, validation) structures of a config (see :func:`check_loss_labels`)."""
    data = read_structures(config, config.dataset_file_name)
    check_loss_labels(config, config.dataset_file_name, data)
    if config.validation_dataset_file_name:
        val_data = read_structures(config, config.validation_dataset_file_name)
        check_loss_labels(config, config.validation_dataset_file_name, val_data)
        n_train = config.n_train or len(data)
        (train_idx,) = random_split(len(data), (n_train,), config.dataset_seed)
        (val_idx,) = random_split(len(val_data), (config.n_val,), config.dataset_seed + 1)
        return [data[i] for i in train_idx], [val_data[i] for i in val_idx]
    n_train = config.n_train or len(data) - config.n_val
    if n_train < 1:
        raise ValueError(
            f"{config.dataset_file_name} has {len(data)} structures; n_val = "
            f"{config.n_val} leaves none for training"
        )
    train_idx, val_idx = random_split(len(data), (n_train, config.n_val), config.dataset_seed)
    return [data[i] for i in train_idx], [data[i] for i in val_idx]


def default_type_names(structures: Sequence) -> list[str]:
    """The elements of a data set, sorted by atomic number (the default ``type_names``)."""
    z = sorted({int(n) for s in structures for n in np.unique(s.numbers)})
    return [chemical_symbols[n] for n in z]


def complete_model_config(
    model: dict[str, Any], train: list, *, neighbor_stats: bool = True
) -> tuple[AllegroConfig, DatasetStatistics]:
    """Fill ``type_names`` and the normalisation constants the user did not give.

    ``avg_num_neighbors`` ← mean number of neighbours of the training set;
    ``per_type_energy_shifts`` ← least-squares per-type shifts (the per-atom mean for a type
    without atoms); ``per_type_energy_scales`` ← RMS of the force components (or the
    per-atom energy residual RMS without forces). With a ``pair_potential``, energies and
    forces are those left after subtracting it: what the network learns.
    """
    model = dict(model)
    if "type_names" not in model:
        model["type_names"] = default_type_names(train)
    if model.get("pair_potential"):  # statistics of what the network learns
        probe = AllegroConfig.from_dict({**model, "avg_num_neighbors": 1.0})
        train = subtract_pair_potential(probe, train)
    stats = compute_statistics(train, model["type_names"], model["r_max"])
    model.setdefault("avg_num_neighbors", stats.avg_num_neighbors)
    if "per_type_energy_shifts" not in model and stats.per_type_energy_shifts is not None:
        mean = stats.per_atom_energy_mean
        model["per_type_energy_shifts"] = [
            mean if v is None else v for v in stats.per_type_energy_shifts
        ]
    if "per_type_energy_scales" not in model:
        scale = stats.forces_rms or stats.per_atom_energy_residual_rms or 1.0
        model["per_type_energy_scales"] = scale if scale > 0 else 1.0
    return AllegroConfig.from_dict(model), stats


class _MetricsLog:
    """``metrics.csv`` + ``metrics.jsonl``, truncated to the restored epoch on resume."""

    def __init__(self, workdir: Path, completed_epochs: int):
        self.csv = workdir / "metrics.csv"
        self.jsonl = workdir / "metrics.jsonl"
        self.header: list[str] | None = None
        rows = []
        if self.jsonl.exists():
            for line in self.jsonl.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    break  # a line cut by a kill
                if row["epoch"] <= completed_epochs:
                    rows.append(row)
        self.rows = rows
        self._rewrite()

    def _rewrite(self) -> None:
        """Rewrite both files atomically: a kill at any point leaves every row in one of them.

        ``metrics.jsonl`` (the one read back) is replaced first, then ``metrics.csv``.
        """
        with atomic_open(self.jsonl) as f:
            for row in self.rows:
                f.write(json.dumps(row) + "\n")
        if self.rows:
            self.header = list(self.rows[0])
        with atomic_open(self.csv, newline="") as f:
            if self.header:
                writer = csv.DictWriter(f, fieldnames=self.header)
                writer.writeheader()
                writer.writerows(self.rows)

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if self.header is None:
            self.header = list(row)
            with open(self.csv, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=self.header).writeheader()
        with open(self.csv, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.header, extrasaction="ignore").writerow(row)
            f.flush()
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())  # on disk before the epoch's checkpoint


def _count_params(params: Any) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def _first(x: Any) -> Any:
    """The first element of a (possibly stacked, ``[K]``) state scalar."""
    return np.asarray(x).reshape(-1)[0]


def _full_like(x: Any, value: Any, dtype: Any) -> jax.Array:
    """``value`` in the shape of ``x`` (``()`` for one model, ``[K]`` for an ensemble)."""
    return jnp.full(np.shape(x), value, dtype)


def _losses_to_json(values: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(v) else float(v) for v in values]


def _losses_from_json(values: Any) -> np.ndarray:
    values = values if isinstance(values, list) else [values]
    return np.asarray([math.inf if v is None else float(v) for v in values], np.float64)


def _exported_losses(model_dir: Path, n_members: int) -> tuple[np.ndarray, Any]:
    """Validation losses recorded in an exported model (inf where unknown) and its params."""
    inf = np.full(n_members, np.inf)
    try:
        doc = json.loads((model_dir / "config.json").read_text())
        meta = doc.get("metadata", {})
        entries = meta.get("members") if n_members > 1 else [meta]
        losses = np.asarray(
            [e.get("validation", {}).get("loss", math.inf) for e in entries], np.float64
        )
        if losses.shape != (n_members,):
            return inf, None
        params = None
        if n_members > 1:
            params = serialization.msgpack_restore((model_dir / "params.msgpack").read_bytes())
        return losses, params
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return inf, None


def train_and_evaluate(config: TrainConfig, workdir: str | os.PathLike) -> dict[str, Any]:
    """Train (or resume training) a model or an ensemble; write metrics, checkpoints, model.

    Stopping and the exported model:

    * An epoch ends with a validation of the EMA weights, the plateau scheduler, a metrics
      row and the stop checks (``max_epochs``, early stopping, ``lr`` below its bound, the
      wall clock).
    * ``model/`` always holds the lowest-validation-loss EMA weights of every validation
      made so far. Besides the epoch ends, a run stopped by ``max_wall_time`` in the
      middle of an epoch validates the current EMA weights (the partial epoch's updates)
      once more and exports them if they are better (``metadata.partial_epoch``); that
      extra validation changes neither the checkpointed state nor the loss curve, so a
      resumed run still reproduces an uninterrupted one.
    * The test file (``test_dataset_file_name``) is evaluated once the run has really
      finished (``max_epochs``, early stopping or ``lr`` below its bound), not at a
      clock stop (``allegro-jax evaluate`` does it on demand: the stop prints the command
      and records it in ``summary.json`` as ``test_not_evaluated``), and again only if
      the model changed since ``test_metrics.json`` was written.

    Ensembles (``ensemble_size: K > 1``): the K train states are stacked (a leading member
    axis on every leaf) and ONE jitted ``jax.vmap`` of the train step updates them on the
    same batch (``ensemble_strategy: map``: a ``jax.lax.map`` instead). Each member keeps
    its own optimiser, EMA, plateau scheduler and best validation loss, so member ``k``
    trains as a single run with seed ``seed + k`` would (same data order); the run stops
    on ``max_epochs``, when NO member improved for ``early_stopping_patiences`` epochs, or
    when EVERY member's rate fell below its bound.
    ``model/`` holds each member's own best EMA weights (stacked). ``metrics.csv`` then has
    ``member<k>_*`` columns (each member's ``lr``, training and validation metrics);
    ``validation_*`` are the errors of the ENSEMBLE-MEAN prediction plus its spread
    (``validation_force_std_mean_mev_per_a``, ...; :mod:`allegro_jax.train.ensemble`);
    ``train_*`` and ``lr`` are the means of the members' values.

    Args:
        config: the training config.
        workdir: the run directory; if it has checkpoints, the run resumes from the newest
            good one.

    Returns:
        The summary (also written to ``summary.json``).

    Raises:
        NonFiniteLossError: the loss became NaN/inf (checkpoints stay as they were).
        FileNotFoundError: a data file is missing.
        ValueError: resuming a run with a different ``ensemble_size``.
        allegro_jax.train.checkpoint.CheckpointError: every checkpoint is damaged.
        allegro_jax.io.runlock.RunLockedError: another process is training in ``workdir``
            (the run directory is locked for the whole call, see :mod:`allegro_jax.io.runlock`).
    """
    t_start = time.perf_counter()
    workdir = Path(workdir).resolve()
    # a missing data file is reported before the run directory is created
    for key in ("dataset_file_name", "validation_dataset_file_name", "test_dataset_file_name"):
        if getattr(config, key):
            config.resolve_path(getattr(config, key))
    created = [p for p in (workdir, *workdir.parents) if not p.exists()]
    try:
        with RunLock(workdir, purpose="training"):
            return _train_and_evaluate(config, workdir, t_start)
    except BaseException:
        _remove_empty_run_dirs(created)
        raise


def _remove_empty_run_dirs(created: Sequence[Path]) -> None:
    """Remove the directories this call created (innermost first) that hold nothing but the
    run lock's files: a run that failed before writing anything leaves no empty folder."""
    for directory in created:
        try:
            names = {p.name for p in directory.iterdir()}
            if not names <= {LOCK_FILE, HOLDER_FILE}:
                return
            for name in names:
                (directory / name).unlink(missing_ok=True)
            directory.rmdir()
        except OSError:
            return


def _train_and_evaluate(config: TrainConfig, workdir: Path, t_start: float) -> dict[str, Any]:
    """:func:`train_and_evaluate` with the run directory locked."""
    if config.model.get("model_dtype") == "float64":
        jax.config.update("jax_enable_x64", True)
    np_dtype = np.float64 if config.model.get("model_dtype") == "float64" else np.float32
    n_members = config.ensemble_size
    ensemble = n_members > 1

    # ---- data and statistics ------------------------------------------------------------
    train_structs, val_structs = load_splits(config)
    model_config_path = workdir / "model_config.json"
    model_config = None
    initial_dir = None
    if config.initial_model:
        initial_dir = config.resolve_path(config.initial_model)
    if model_config_path.exists():  # resume: the statistics of the first start
        _check_ensemble_size(workdir / "train_config.yaml", n_members)
        model_config = AllegroConfig.from_dict(json.loads(model_config_path.read_text()))
        _warn_config_changes(workdir / "train_config.yaml", config)
        types, r_max = model_config.type_names, model_config.r_max
    elif initial_dir is not None:  # a new run from a trained model: its types and statistics
        model_config = _initial_model_config(initial_dir, config, n_members)
        types, r_max = model_config.type_names, model_config.r_max
    else:
        types = config.model.get("type_names") or default_type_names(train_structs)
        r_max = config.model["r_max"]
    # neighbour lists first: they validate every structure (errors name the file and frame)
    train_file = str(config.resolve_path(config.dataset_file_name))
    val_file = train_file
    if config.validation_dataset_file_name:
        val_file = str(config.resolve_path(config.validation_dataset_file_name))
    train = SplitData(train_structs, types, r_max, config.batch_size, np_dtype, source=train_file)
    val = SplitData(val_structs, types, r_max, config.val_batch_size, np_dtype, source=val_file)
    if not model_config_path.exists():
        from_data, stats = complete_model_config(config.model, train_structs)
        model_config = model_config or from_data
        atomic_write_text(workdir / "statistics.json", stats.to_json(indent=2))
        atomic_write_text(workdir / "train_config.yaml", yaml.safe_dump(_normalised_config(config)))
        atomic_write_text(model_config_path, json.dumps(model_config.to_dict(), indent=2))
    use_stress = config.loss_coeffs["stress"] > 0 and train.has_stress

    # ---- model, optimiser, state --------------------------------------------------------
    init_fn, apply_fn = make_model(model_config)
    init = jax.jit(init_fn)  # jitted: faster than the eager init
    tx = make_optimizer(
        config.learning_rate,
        amsgrad=config.amsgrad,
        betas=config.optimizer_betas,
        eps=config.optimizer_eps,
        max_gradient_norm=config.max_gradient_norm,
    )

    def member_state(k: int):
        init_key, state_key = jax.random.split(jax.random.PRNGKey(config.seed + k))
        return create_train_state(init(init_key), tx, config.learning_rate, state_key)

    if ensemble:
        state = stack_members([member_state(k) for k in range(n_members)])
    else:
        state = member_state(0)
    train_step = make_train_step(
        apply_fn,
        tx,
        config.loss_coeffs,
        use_ema=config.use_ema,
        ema_decay=config.ema_decay,
        ema_use_num_updates=config.ema_use_num_updates,
        stress=use_stress,
    )
    if ensemble:  # one program: the step vmapped over the members, the batch shared
        train_step = make_ensemble_train_step(train_step, config.ensemble_strategy)
        eval_step = make_ensemble_eval_step(apply_fn, forces=val.has_forces, stress=val.has_stress)
    else:
        eval_step = make_eval_step(apply_fn, forces=val.has_forces, stress=val.has_stress)
    if config.data_parallel:  # each batch split over the devices, parameters replicated
        train, val, train_step, eval_step, state = setup_data_parallel(
            config, apply_fn, tx, train, val, state, stress=use_stress
        )
    # "compiling ...", then the seconds, at each step's first call (and again if a later
    # call compiles new shapes, e.g. a restored state's)
    members = f", {n_members} members" if ensemble else ""
    train_step = watch_compiles(
        train_step, f"the training step (batches of {config.batch_size}{members})"
    )
    eval_step = watch_compiles(
        eval_step, f"the validation step (batches of {config.val_batch_size}{members})"
    )

    store = CheckpointStore(workdir, keep=config.checkpoint_keep)
    try:
        restored = _restore_or_refuse(store, state, workdir)
    except BaseException:
        store.close()
        raise
    last_saved = None  # the step of the newest checkpoint this run can fall back to
    last_saved_dir = store.restored_from
    # the best validation loss per member, float64 on the host (the state's float32 field
    # is a copy; the exact value travels in the checkpoint's JSON metadata)
    best_val = np.full(n_members, np.inf)
    if restored is None and initial_dir is not None:
        state = _start_from_model(initial_dir, state, tx, config, n_members)
    if restored is not None:
        state, meta = restored
        if not config.data_parallel:
            # orbax returns arrays committed to a device, a fresh state's are not; jit keys
            # its cache on that, so the same step would compile twice more after a resume
            state = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), state)
        last_saved = int(_first(state.step))
        if "best_val_loss" in meta:
            best_val = _losses_from_json(meta["best_val_loss"])
        else:  # a checkpoint of an older version
            best_val = np.asarray(state.best_val_loss, np.float64).reshape(-1)
        print(_resume_line(state, best_val, store.restored_from, ensemble), flush=True)
    # what model/ holds (its validation losses): it is only replaced by better weights
    exported_val, exported_params = _exported_losses(workdir / "model", n_members)
    model_changed = False
    log = _MetricsLog(workdir, int(_first(state.epoch)))
    # CPU seconds of this process (all threads), added to those of the rows kept on resume
    # (work after the last completed epoch of a killed run is not counted)
    cpu0 = float(log.rows[-1].get("cpu_time_s", 0.0)) if log.rows else 0.0
    process_cpu0 = time.process_time()
    writer = None
    if config.tensorboard:
        writer = SummaryWriter(
            workdir / "tensorboard",
            restart_step=int(_first(state.epoch)) + 1 if restored else None,
        )

    n_batches = train.num_batches
    step, epoch = int(_first(state.step)), int(_first(state.epoch))
    wall0 = float(_first(state.wall_time))
    patience = config.early_stopping_patiences.get("validation_loss")
    min_lr = config.early_stopping_lower_bounds.get("LR")
    stop_reason = None

    def final_stop_reason() -> str | None:
        """max_epochs / early stopping / lr bound (over all members for an ensemble)."""
        if epoch >= config.max_epochs:
            return "max_epochs"
        last_improved = int(np.max(np.asarray(state.best_epoch)))
        if epoch > 0 and patience is not None and epoch - last_improved >= patience:
            return "early_stopping_patience"
        if epoch > 0 and min_lr is not None and float(np.max(state.plateau.lr)) < min_lr:
            return "lr_below_min"
        return None

    # a resumed run that had already stopped for a final reason does not train again
    stop_reason = final_stop_reason()

    def meta() -> dict:
        return {
            "step": int(_first(state.step)),
            "epoch": int(_first(state.epoch)),
            "n_batches": n_batches,
            "seed": config.seed,
            "ensemble_size": n_members,
            "best_val_loss": _losses_to_json(best_val),
        }

    def save(best: bool = False) -> None:
        nonlocal last_saved, last_saved_dir
        directory = store.save(int(_first(state.step)), state, meta(), best=best)
        if not best:
            last_saved, last_saved_dir = int(_first(state.step)), directory

    def check_finite(where: str) -> None:
        bad = int(np.max(np.asarray(state.bad_step)))
        if bad:
            last = (
                "no checkpoint was written yet"
                if last_saved is None
                else f"the last good checkpoint is {last_saved_dir} (step {last_saved})"
            )
            raise NonFiniteLossError(
                f"non-finite loss or gradient at step {bad} ({where}); that update was not "
                f"applied and training stopped; {last}. Lower learning_rate, set "
                f"max_gradient_norm, or check the data for outliers."
            )

    def elapsed() -> float:
        return time.perf_counter() - t_start

    def stamp_wall_time() -> None:
        nonlocal state
        state = state.replace(wall_time=_full_like(state.wall_time, wall0 + elapsed(), jnp.float32))

    def validate() -> tuple[list[dict], dict | None]:
        """Validation metrics of the EMA weights: per member, and of the ensemble mean."""
        if not ensemble:
            sums = evaluate_split(eval_step, state.ema_params, val, config.prefetch)
            return [summarize(sums, config.loss_coeffs)], None
        member_sums, mean_sums, unc = evaluate_ensemble_split(
            eval_step, state.ema_params, val, config.prefetch
        )
        members = [summarize(s, config.loss_coeffs) for s in member_sums]
        return members, summarize(mean_sums, config.loss_coeffs) | summarize_uncertainty(unc)

    def export(val_metrics: list[dict], info: dict) -> bool:
        """Write model/ where a member's validation loss beats the exported one."""
        nonlocal exported_val, exported_params, model_changed
        losses = np.asarray([m["loss"] for m in val_metrics], np.float64)
        better = losses < exported_val
        if not better.any():
            return False
        if not ensemble:
            save_model(
                workdir / "model",
                model_config,
                state.ema_params,
                info | {"validation": val_metrics[0]},
            )
        else:
            ema = jax.tree.map(np.asarray, state.ema_params)
            if exported_params is None:
                exported_params = ema
            else:  # keep the members that did not improve
                mask = lambda x: better.reshape((-1,) + (1,) * (np.ndim(x) - 1))  # noqa: E731
                exported_params = jax.tree.map(
                    lambda new, old: np.where(mask(new), new, old), ema, exported_params
                )
            old_doc = _read_model_metadata(workdir / "model")
            entries = old_doc.get("members") or [{} for _ in range(n_members)]
            entries = [
                info | {"validation": val_metrics[k]} if better[k] else entries[k]
                for k in range(n_members)
            ]
            save_model(
                workdir / "model",
                model_config,
                exported_params,
                {"ensemble_size": n_members, "members": entries},
                ensemble_size=n_members,
            )
        exported_val = np.where(better, losses, exported_val)
        model_changed = True
        return True

    def open_bar(done: int):
        """The epoch's progress bar, opened once steps are timed (its ETA leaves out the
        compilation of the first step)."""
        if not config.progress_bar:
            return None
        return tqdm(
            total=n_batches,
            initial=done,
            desc=f"epoch {epoch + 1}",
            leave=False,
            dynamic_ncols=True,
        )

    try:
        while stop_reason is None:
            t_epoch = time.perf_counter()
            first = step - epoch * n_batches  # batches of this epoch already done
            order = epoch_permutation(len(train), config.seed, epoch)
            bar = open_bar(first) if train_step.calls else None
            due = False  # a checkpoint fell due on the epoch's last step
            batches = prefetch(train.batches(order, first), config.prefetch)
            for b, batch in enumerate(batches, start=first):
                compiled_now = train_step.calls == 0
                state, metrics = train_step(state, batch)
                step += 1
                if compiled_now:  # the bar starts after the compiled first step
                    bar = open_bar(b + 1)
                last_batch = b == n_batches - 1
                if step % config.log_every == 0 or last_batch:
                    check_finite(f"epoch {epoch + 1}, batch {b + 1}/{n_batches}")
                    if bar is not None:
                        bar.set_postfix(
                            loss=f"{float(np.mean(metrics['loss'])):.4g}",
                            lr=f"{float(np.mean(metrics['lr'])):.3g}",
                            refresh=False,
                        )
                if bar is not None and not compiled_now:
                    bar.update(1)
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    if last_batch:
                        due = True
                    else:
                        check_finite(f"epoch {epoch + 1}, batch {b + 1}/{n_batches}")
                        stamp_wall_time()
                        save()
                if config.max_wall_time and elapsed() > config.max_wall_time and not last_batch:
                    stop_reason = "max_wall_time"
                    break
            batches.close()
            if bar is not None:
                bar.close()
            if stop_reason is not None:  # stopped mid-epoch by the clock
                check_finite(f"epoch {epoch + 1}")
                stamp_wall_time()
                save()
                # validate the partial epoch's EMA weights; export them if they are better
                val_metrics, ens_metrics = validate()
                exported = export(
                    val_metrics, {"epoch": epoch, "step": step, "partial_epoch": True}
                )
                shown = ens_metrics or val_metrics[0]
                print(
                    f"stopped by max_wall_time at step {step} (epoch {epoch + 1}, batch "
                    f"{step - epoch * n_batches}/{n_batches}): val loss {shown['loss']:.4g}; "
                    + ("exported to model/" if exported else "model/ kept (it is better)"),
                    flush=True,
                )
                break

            # ---- end of epoch: validation with the EMA weights, scheduler, logs -------------
            check_finite(f"end of epoch {epoch + 1}")
            train_metrics = [
                summarize(
                    member(state.train_sums, k) if ensemble else state.train_sums,
                    config.loss_coeffs,
                )
                for k in range(n_members)
            ]
            val_metrics, ens_metrics = validate()
            val_losses = np.asarray([m["loss"] for m in val_metrics], np.float64)
            if not np.all(np.isfinite(val_losses)):
                raise NonFiniteLossError(
                    f"non-finite validation loss after epoch {epoch + 1}; the last good "
                    f"checkpoint is step {last_saved}"
                )
            lrs = np.asarray(state.plateau.lr, np.float64).reshape(-1)
            plateau = state.plateau
            if config.lr_scheduler_name == "ReduceLROnPlateau":
                plateau = plateau_update(
                    plateau,
                    val_losses if ensemble else val_losses[0],
                    patience=config.lr_scheduler_patience,
                    factor=config.lr_scheduler_factor,
                    threshold=config.lr_scheduler_threshold,
                )
            improved = val_losses < best_val
            best_val = np.where(improved, val_losses, best_val)
            epoch += 1
            best_epoch = np.where(improved, epoch, np.asarray(state.best_epoch).reshape(-1))
            shape = np.shape(state.epoch)
            state = state.replace(
                epoch=_full_like(state.epoch, epoch, jnp.int32),
                plateau=plateau,
                train_sums=jax.tree.map(jnp.zeros_like, state.train_sums),
                best_val_loss=jnp.asarray(best_val.reshape(shape), jnp.float32),
                best_epoch=jnp.asarray(best_epoch.reshape(shape), jnp.int32),
            )
            stamp_wall_time()
            row = {
                "epoch": epoch,
                "step": step,
                "lr": float(np.mean(lrs)),
                "wall_time_s": round(float(_first(state.wall_time)), 3),
                "epoch_time_s": round(time.perf_counter() - t_epoch, 3),
                "cpu_time_s": round(cpu0 + time.process_time() - process_cpu0, 1),
            }
            if not ensemble:
                row |= {f"train_{k}": v for k, v in train_metrics[0].items()}
                row |= {f"validation_{k}": v for k, v in val_metrics[0].items()}
                shown = val_metrics[0]
            else:
                row |= {
                    f"train_{k}": float(np.mean([m[k] for m in train_metrics]))
                    for k in train_metrics[0]
                }
                row |= {f"validation_{k}": v for k, v in ens_metrics.items()}
                for k in range(n_members):
                    row[f"member{k}_lr"] = float(lrs[k])
                    row |= {f"member{k}_train_{n}": v for n, v in train_metrics[k].items()}
                    row |= {f"member{k}_validation_{n}": v for n, v in val_metrics[k].items()}
                shown = ens_metrics
            log.append(row)
            if writer is not None:
                writer.scalars(
                    {
                        k.replace("train_", "train/", 1).replace("validation_", "validation/", 1): v
                        for k, v in row.items()
                        if k not in ("epoch", "step")
                    },
                    epoch,
                )
            f_mae = shown.get("force_mae_mev_per_a", float("nan"))
            e_mae = shown.get("energy_mae_mev", float("nan"))
            print(
                f"epoch {epoch:4d}  step {step:7d}  lr {row['lr']:.3g}  "
                f"train loss {row['train_loss']:.4g}  val loss {shown['loss']:.4g}  "
                f"val E MAE {e_mae:.2f} meV  F MAE {f_mae:.2f} meV/Å"
                + (
                    f"  F std {shown['force_std_mean_mev_per_a']:.2f} meV/Å"
                    if "force_std_mean_mev_per_a" in shown
                    else ""
                )
                + f"  ({row['epoch_time_s']:.1f} s)",
                flush=True,
            )
            export(val_metrics, {"epoch": epoch, "step": step})
            if improved.any():
                save(best=True)

            stop_reason = final_stop_reason()
            if stop_reason is None and config.max_wall_time and elapsed() > config.max_wall_time:
                stop_reason = "max_wall_time"
            if due or config.checkpoint_every is None or stop_reason is not None:
                save()

        if last_saved != int(_first(state.step)):
            save()
    finally:
        store.close()
        if writer is not None:
            writer.close()
    best_epochs = [int(e) for e in np.asarray(state.best_epoch).reshape(-1)]
    summary = {
        "stop_reason": stop_reason,
        "epochs": int(_first(state.epoch)),
        "steps": int(_first(state.step)),
        "best_epoch": best_epochs if ensemble else best_epochs[0],
        "best_validation_loss": (
            _losses_to_json(best_val) if ensemble else _losses_to_json(best_val)[0]
        ),
        "best_validation": (
            None if ensemble else next((r for r in log.rows if r["epoch"] == best_epochs[0]), None)
        ),
        "train_wall_time_s": float(_first(state.wall_time)),
        "train_cpu_time_s": log.rows[-1].get("cpu_time_s") if log.rows else None,
        "invocation_time_s": elapsed(),
        "n_params": _count_params(member(state.params, 0) if ensemble else state.params),
        "n_train": len(train),
        "n_val": len(val),
        "train_budget": vars(train.budget) if hasattr(train.budget, "__dict__") else None,
        "compiled_train_shapes": _cache_size(train_step),
        "compiled_eval_shapes": _cache_size(eval_step),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
    }
    if ensemble:
        summary["ensemble_size"] = n_members
    test_path = workdir / "test_metrics.json"
    finished = stop_reason in ("max_epochs", "early_stopping_patience", "lr_below_min")
    if config.test_dataset_file_name and not finished:
        note = _test_not_evaluated(config, workdir, stop_reason)
        summary["test_not_evaluated"] = note
        print(note, flush=True)
    if config.test_dataset_file_name and (workdir / "model").exists() and finished:
        if model_changed or not test_path.exists():
            test_metrics = evaluate_model(
                workdir,
                config.resolve_path(config.test_dataset_file_name),
                read_fn=lambda p: read_structures(config, str(p)),
            )
            atomic_write_text(test_path, json.dumps(test_metrics, indent=2))
        summary["test"] = json.loads(test_path.read_text())
    atomic_write_text(workdir / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def _resume_line(state: Any, best_val: np.ndarray, checkpoint: Path | None, ensemble: bool) -> str:
    """``resuming at epoch 3 (batch 2 of 5), step 12; best validation loss 0.0123 (epoch 2);
    checkpoint runs/x/checkpoints/12``."""
    losses = [float(v) for v in np.asarray(best_val).reshape(-1)]
    epochs = [int(e) for e in np.asarray(state.best_epoch).reshape(-1)]
    if not any(math.isfinite(v) for v in losses):
        best = "no validation yet"
    elif not ensemble:
        best = f"best validation loss {losses[0]:.4g} (epoch {epochs[0]})"
    else:
        best = "best validation losses " + ", ".join(
            f"{v:.4g} (epoch {e})" if math.isfinite(v) else "none"
            for v, e in zip(losses, epochs, strict=True)
        )
    return (
        f"resuming from checkpoint step {int(_first(state.step))} (epoch "
        f"{int(_first(state.epoch))} completed); {best}; checkpoint {checkpoint}"
    )


def _shown_path(path: str | os.PathLike) -> str:
    """A path as a user types it here: relative to the working directory when inside it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _test_not_evaluated(config: TrainConfig, workdir: Path, stop_reason: str | None) -> str:
    """Why a run with a test file reports no test errors, and the command that gives them."""
    test_file = config.resolve_path(config.test_dataset_file_name)
    model, data = _shown_path(workdir), _shown_path(test_file)
    command = shlex.join(["allegro-jax", "evaluate", "--model", model, "--data", data])
    return (
        f"test set not evaluated: the run stopped at {stop_reason}, and the test file "
        f"{_shown_path(test_file)} is evaluated only when training has finished (max_epochs, "
        f"early stopping or the learning-rate bound). Run the same command again to continue "
        f"training, or evaluate the best model so far now with: {command}"
    )


_STATISTICS_KEYS = (
    "type_names",
    "avg_num_neighbors",
    "per_type_energy_shifts",
    "per_type_energy_scales",
)


def _initial_model_config(initial_dir: Path, config: TrainConfig, n_members: int) -> AllegroConfig:
    """The model config of ``initial_model``, checked against the run's config."""
    model_config = read_model_config(initial_dir)
    if read_ensemble_size(initial_dir) != n_members:
        raise ValueError(
            f"initial_model {initial_dir} holds {read_ensemble_size(initial_dir)} model(s), "
            f"this run trains ensemble_size {n_members}"
        )
    given = {k: v for k, v in config.model.items() if k not in _STATISTICS_KEYS}
    theirs = model_config.to_dict()
    differ = {
        k: (v, theirs[k])
        for k, v in given.items()
        if k in theirs and json.dumps(v, default=str) != json.dumps(theirs[k], default=str)
    }
    if differ:
        detail = ", ".join(f"{k}: {a!r} here, {b!r} there" for k, (a, b) in sorted(differ.items()))
        raise ValueError(
            f"initial_model {initial_dir} has another architecture than this config ({detail}); "
            "remove those keys from the config or start without initial_model"
        )
    return model_config


def _start_from_model(initial_dir: Path, state: Any, tx: Any, config: TrainConfig, n_members: int):
    """A fresh train state whose parameters (and EMA) are ``initial_model``'s weights."""
    path = find_model_dir(initial_dir) / PARAMS_FILE
    loaded = serialization.from_state_dict(
        state.params, serialization.msgpack_restore(path.read_bytes())
    )
    want, want_def = jax.tree.flatten(state.params)
    got, got_def = jax.tree.flatten(loaded)
    if want_def != got_def or any(
        np.shape(a) != np.shape(b) for a, b in zip(want, got, strict=True)
    ):
        raise ValueError(f"{path}: its parameters do not fit this run's model")
    params = jax.tree.map(lambda w, a: jnp.asarray(a, w.dtype), state.params, loaded)
    print(f"starting from the weights of {initial_dir} (new optimiser and EMA)", flush=True)
    if n_members > 1:
        return stack_members(
            [
                create_train_state(
                    member(params, k), tx, config.learning_rate, member(state.rng, k)
                )
                for k in range(n_members)
            ]
        )
    return create_train_state(params, tx, config.learning_rate, state.rng)


def _restore_or_refuse(store: CheckpointStore, target: Any, workdir: Path) -> tuple | None:
    """The newest good checkpoint (:meth:`CheckpointStore.restore_latest`), or None.

    None (a start from step 0) only when that loses nothing: a directory without usable
    checkpoints that holds results beyond the first epoch (``model/``, metrics rows) is
    refused with a :class:`CheckpointError` saying what to do, on every invocation, rather
    than trained again from step 0 over them.
    """
    try:
        restored = store.restore_latest(target)
    except CheckpointError as err:
        previous = _previous_results(workdir)
        if previous is not None:
            raise CheckpointError(f"{err}. {_refusal(workdir, previous)}") from err
        print(
            f"{err}; this run had not finished its first epoch: training starts again from step 0",
            flush=True,
        )
        return None
    if restored is None:
        previous = _previous_results(workdir)
        if previous is not None:
            raise CheckpointError(
                f"no checkpoint in {store.directory} or {store.best_directory} (deleted or "
                f"moved away?). {_refusal(workdir, previous)}"
            )
        return None
    if store.problems:
        from_best = store.restored_from.parent == store.best_directory
        what = (
            f"every checkpoint in {store.directory} is damaged; falling back to the best checkpoint"
            if from_best and not store.steps()
            else "resuming from the newest good checkpoint"
        )
        print(
            f"{len(store.problems)} damaged checkpoint(s) moved to "
            f"{workdir / 'corrupt_checkpoints'}; {what} {store.restored_from}: the epochs after "
            "it are trained again and their metrics rows replaced",
            flush=True,
        )
    return restored


def _previous_results(workdir: Path) -> str | None:
    """What a training from step 0 would overwrite in ``workdir`` beyond its first epoch."""
    epochs = []
    if (workdir / "metrics.jsonl").exists():
        for line in (workdir / "metrics.jsonl").read_text().splitlines():
            try:
                epochs.append(int(json.loads(line)["epoch"]))
            except (ValueError, KeyError, TypeError):
                continue
    meta = _read_model_metadata(workdir / "model")
    entries = [e for e in meta.get("members") or [meta] if isinstance(e, dict) and "epoch" in e]
    model_epoch = max((int(e["epoch"]) for e in entries), default=None)
    if max([*epochs, model_epoch or 0]) <= 1:
        return None
    parts = []
    if model_epoch is not None:
        losses = [e.get("validation", {}).get("loss") for e in entries]
        shown = ", ".join(f"{v:.4g}" for v in losses if isinstance(v, int | float))
        parts.append(f"a trained model (model/: epoch {model_epoch}, validation loss {shown})")
    if epochs:
        parts.append(f"{len(epochs)} metrics rows (epochs {min(epochs)}-{max(epochs)})")
    return " and ".join(parts)


def _refusal(workdir: Path, previous: str) -> str:
    return (
        f"The run directory {workdir} holds {previous}, which a training from step 0 would "
        "replace, so nothing was trained and they were left as they are. To keep them and "
        "train again, use a new --workdir; to start over in this directory, first move "
        "model/, metrics.csv and metrics.jsonl elsewhere."
    )


def _read_model_metadata(model_dir: Path) -> dict:
    try:
        return json.loads((model_dir / "config.json").read_text()).get("metadata", {})
    except (OSError, ValueError):
        return {}


# keys that may change between a run and its resumption without breaking reproducibility
_RESUMABLE_CHANGES = frozenset(
    {
        "max_epochs",
        "max_wall_time",
        "progress_bar",
        "log_every",
        "prefetch",
        "workdir",
        "checkpoint_keep",
        "test_dataset_file_name",
        "validation_batch_size",
        "early_stopping_patiences",
        "early_stopping_lower_bounds",
    }
)
_PATH_KEYS = ("dataset_file_name", "validation_dataset_file_name", "test_dataset_file_name")


def _normalised_config(config: TrainConfig) -> dict[str, Any]:
    """``config.to_dict()`` with the data paths that exist resolved to absolute paths."""
    d = config.to_dict()
    for key in _PATH_KEYS:
        if d.get(key):
            try:
                d[key] = str(config.resolve_path(d[key]))
            except FileNotFoundError:
                pass
    return yaml.safe_load(yaml.safe_dump(d))  # YAML's types (lists, not tuples)


def _check_ensemble_size(saved_path: Path, n_members: int) -> None:
    """Refuse to resume a run with a different ensemble size (its checkpoints cannot fit)."""
    if not saved_path.exists():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    before = int(saved.get("ensemble_size", 1))
    if before != n_members:
        raise ValueError(
            f"this run directory was started with ensemble_size {before} ({saved_path}); "
            f"resuming it with ensemble_size {n_members} is not possible: use a new --workdir"
        )


def _warn_config_changes(saved_path: Path, config: TrainConfig) -> None:
    """Warn when a resumed run's config differs from the first start's in a relevant key.

    Values are compared after normalisation: defaults filled in, numbers as numbers, and
    data paths as the files they resolve to (a relative path in an older
    ``train_config.yaml`` is taken relative to the working directory).
    """
    if not saved_path.exists():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    current = _normalised_config(config)
    try:  # fill the defaults of keys an older version did not write
        filled = TrainConfig.from_dict(saved).to_dict()
        saved = yaml.safe_load(
            yaml.safe_dump({**filled, **{k: saved[k] for k in _PATH_KEYS if k in saved}})
        )
    except (TypeError, ValueError):
        pass
    for key in _PATH_KEYS:
        value = saved.get(key)
        if isinstance(value, str) and not Path(value).is_absolute() and Path(value).exists():
            saved[key] = str(Path(value).resolve())
    changed = sorted(
        k
        for k in set(saved) | set(current)
        if k not in _RESUMABLE_CHANGES and saved.get(k) != current.get(k)
    )
    if changed:
        warnings.warn(
            f"resuming with a config that differs from {saved_path} in {changed}; the model "
            f"config (and its statistics) of the first start is kept, the rest follows the new "
            f"config, so the run will not reproduce an uninterrupted one",
            stacklevel=3,
        )


def _cache_size(fn: Any) -> int | None:
    try:
        return int(fn._cache_size())
    except Exception:  # noqa: BLE001 - private API
        warnings.warn("could not read the jit cache size", stacklevel=2)
        return None
