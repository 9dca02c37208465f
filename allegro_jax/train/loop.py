"""``train_and_evaluate(config, workdir)``: the training loop, its files and its resume logic.

Files in ``workdir``:

* ``train_config.yaml``: the training config as run; ``model_config.json``: the model
  config with the training-set statistics filled in; ``statistics.json``.
* ``metrics.csv`` and ``metrics.jsonl``: one row per epoch (losses, energy/force/stress MAE
  and RMSE in meV, meV/Å, meV/Å^3, learning rate, times); ``tensorboard/``: the same as
  TensorBoard scalars (:mod:`.tensorboard`, step = epoch).
* ``checkpoints/``, ``checkpoints_best/``: orbax states (:mod:`.checkpoint`).
* ``model/``: the best model (EMA weights), :func:`allegro_jax.train.export.load_model`.
* ``summary.json`` and, with a test file, ``test_metrics.json``.

Resume determinism: everything that influences the future lives in the checkpointed
:class:`~allegro_jax.train.state.TrainState` (parameters, optimiser and EMA state, the
plateau scheduler, the PRNG key, the partial error sums of the current epoch, the best
validation loss), and the data order of epoch ``e`` is a function of ``(seed, e)`` only.
A restarted run restores the newest checkpoint, drops the metric rows of later epochs,
and continues at batch ``step - epoch · n_batches`` of the same permutation, so its metric
rows equal those of an uninterrupted run bit for bit (on the same machine and software).
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from ase.data import chemical_symbols

from allegro_jax.config import AllegroConfig
from allegro_jax.data.datasets import random_split, read_dataset
from allegro_jax.data.statistics import DatasetStatistics, compute_statistics
from allegro_jax.nn.model import make_model
from allegro_jax.train.checkpoint import CheckpointStore
from allegro_jax.train.config import TrainConfig
from allegro_jax.train.data import SplitData, epoch_permutation, prefetch
from allegro_jax.train.export import save_model
from allegro_jax.train.loss import ErrorSums, summarize
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


def load_splits(config: TrainConfig) -> tuple[list, list]:
    """The seeded (train, validation) structures of a config."""
    data = read_structures(config, config.dataset_file_name)
    if config.validation_dataset_file_name:
        val_data = read_structures(config, config.validation_dataset_file_name)
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


def complete_model_config(
    model: dict[str, Any], train: list, *, neighbor_stats: bool = True
) -> tuple[AllegroConfig, DatasetStatistics]:
    """Fill ``type_names`` and the normalisation constants the user did not give.

    ``avg_num_neighbors`` ← mean number of neighbours of the training set;
    ``per_type_energy_shifts`` ← least-squares per-type shifts (the per-atom mean for a type
    without atoms); ``per_type_energy_scales`` ← RMS of the force components (or the
    per-atom energy residual RMS without forces).
    """
    model = dict(model)
    if "type_names" not in model:
        z = sorted({int(n) for s in train for n in np.unique(s.numbers)})
        model["type_names"] = [chemical_symbols[n] for n in z]
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
        with open(self.jsonl, "w") as f:
            for row in self.rows:
                f.write(json.dumps(row) + "\n")
        if self.rows:
            self.header = list(self.rows[0])
        with open(self.csv, "w", newline="") as f:
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


def evaluate_split(eval_step, params, split: SplitData, prefetch_size: int = 2) -> ErrorSums:
    """Error sums of ``params`` over a split (float64 on the host, in file order)."""
    total = np.zeros(len(ErrorSums._fields))
    for batch in prefetch(split.batches(), prefetch_size):
        total += np.asarray([np.float64(v) for v in jax.device_get(eval_step(params, batch))])
    return ErrorSums(*total)


def _count_params(params: Any) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def train_and_evaluate(config: TrainConfig, workdir: str | os.PathLike) -> dict[str, Any]:
    """Train (or resume training) a model; write metrics, checkpoints and the best model.

    Args:
        config: the training config.
        workdir: the run directory; if it has checkpoints, the run resumes from the newest
            good one.

    Returns:
        The summary (also written to ``summary.json``).

    Raises:
        NonFiniteLossError: the loss became NaN/inf (checkpoints stay as they were).
        FileNotFoundError: a data file is missing.
        allegro_jax.train.checkpoint.CheckpointError: every checkpoint is damaged.
    """
    t_start = time.perf_counter()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if config.model.get("model_dtype") == "float64":
        jax.config.update("jax_enable_x64", True)
    np_dtype = np.float64 if config.model.get("model_dtype") == "float64" else np.float32

    # ---- data and statistics ------------------------------------------------------------
    train_structs, val_structs = load_splits(config)
    model_config_path = workdir / "model_config.json"
    if model_config_path.exists():  # resume: the statistics of the first start
        model_config = AllegroConfig.from_dict(json.loads(model_config_path.read_text()))
        _warn_config_changes(workdir / "train_config.yaml", config)
    else:
        model_config, stats = complete_model_config(config.model, train_structs)
        _atomic_write(workdir / "statistics.json", stats.to_json(indent=2))
        _atomic_write(workdir / "train_config.yaml", yaml.safe_dump(config.to_dict()))
        _atomic_write(model_config_path, json.dumps(model_config.to_dict(), indent=2))
    types, r_max = model_config.type_names, model_config.r_max
    train = SplitData(train_structs, types, r_max, config.batch_size, np_dtype)
    val = SplitData(val_structs, types, r_max, config.val_batch_size, np_dtype)
    use_stress = config.loss_coeffs["stress"] > 0 and train.has_stress

    # ---- model, optimiser, state --------------------------------------------------------
    init_fn, apply_fn = make_model(model_config)
    init_key, state_key = jax.random.split(jax.random.PRNGKey(config.seed))
    params = jax.jit(init_fn)(init_key)  # jitted: faster than the eager init
    tx = make_optimizer(
        config.learning_rate,
        amsgrad=config.amsgrad,
        betas=config.optimizer_betas,
        eps=config.optimizer_eps,
        max_gradient_norm=config.max_gradient_norm,
    )
    state = create_train_state(params, tx, config.learning_rate, state_key)
    train_step = make_train_step(
        apply_fn,
        tx,
        config.loss_coeffs,
        use_ema=config.use_ema,
        ema_decay=config.ema_decay,
        ema_use_num_updates=config.ema_use_num_updates,
        stress=use_stress,
    )
    eval_step = make_eval_step(apply_fn, forces=val.has_forces, stress=val.has_stress)

    store = CheckpointStore(workdir, keep=config.checkpoint_keep)
    restored = store.restore_latest(state)
    last_saved = None
    if restored is not None:
        state, meta = restored
        last_saved = int(state.step)
        print(
            f"resuming from checkpoint step {int(state.step)} (epoch {int(state.epoch)}, "
            f"meta {meta})",
            flush=True,
        )
    log = _MetricsLog(workdir, int(state.epoch))
    writer = None
    if config.tensorboard:
        writer = SummaryWriter(
            workdir / "tensorboard", restart_step=int(state.epoch) + 1 if restored else None
        )

    n_batches = train.num_batches
    step, epoch = int(state.step), int(state.epoch)
    wall0 = float(state.wall_time)
    patience = config.early_stopping_patiences.get("validation_loss")
    min_lr = config.early_stopping_lower_bounds.get("LR")
    stop_reason = None
    # a resumed run that had already stopped for a final reason does not train again
    if epoch >= config.max_epochs:
        stop_reason = "max_epochs"
    elif epoch > 0 and patience is not None and epoch - int(state.best_epoch) >= patience:
        stop_reason = "early_stopping_patience"
    elif epoch > 0 and min_lr is not None and float(state.plateau.lr) < min_lr:
        stop_reason = "lr_below_min"

    def meta() -> dict:
        return {
            "step": int(state.step),
            "epoch": int(state.epoch),
            "n_batches": n_batches,
            "seed": config.seed,
        }

    def save(best: bool = False) -> None:
        nonlocal last_saved
        store.save(int(state.step), state, meta(), best=best)
        if not best:
            last_saved = int(state.step)

    def check_finite(where: str) -> None:
        bad = int(state.bad_step)
        if bad:
            last = (
                "no checkpoint was written yet"
                if last_saved is None
                else f"the last good checkpoint is {store.directory / str(last_saved)} "
                f"(step {last_saved})"
            )
            raise NonFiniteLossError(
                f"non-finite loss or gradient at step {bad} ({where}); that update was not "
                f"applied and training stopped; {last}. Lower learning_rate, set "
                f"max_gradient_norm, or check the data for outliers."
            )

    def elapsed() -> float:
        return time.perf_counter() - t_start

    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None

    try:
        while stop_reason is None:
            t_epoch = time.perf_counter()
            first = step - epoch * n_batches  # batches of this epoch already done
            order = epoch_permutation(len(train), config.seed, epoch)
            bar = None
            if tqdm is not None and config.progress_bar:
                bar = tqdm(
                    total=n_batches,
                    initial=first,
                    desc=f"epoch {epoch + 1}",
                    leave=False,
                    dynamic_ncols=True,
                )
            due = False  # a checkpoint fell due on the epoch's last step
            batches = prefetch(train.batches(order, first), config.prefetch)
            for b, batch in enumerate(batches, start=first):
                state, metrics = train_step(state, batch)
                step += 1
                last_batch = b == n_batches - 1
                if step % config.log_every == 0 or last_batch:
                    check_finite(f"epoch {epoch + 1}, batch {b + 1}/{n_batches}")
                    if bar is not None:
                        bar.set_postfix(
                            loss=f"{float(metrics['loss']):.4g}",
                            lr=f"{float(metrics['lr']):.3g}",
                            refresh=False,
                        )
                if bar is not None:
                    bar.update(1)
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    if last_batch:
                        due = True
                    else:
                        check_finite(f"epoch {epoch + 1}, batch {b + 1}/{n_batches}")
                        state = state.replace(wall_time=jnp.asarray(wall0 + elapsed(), jnp.float32))
                        save()
                if config.max_wall_time and elapsed() > config.max_wall_time and not last_batch:
                    stop_reason = "max_wall_time"
                    break
            batches.close()
            if bar is not None:
                bar.close()
            if stop_reason is not None:  # stopped mid-epoch by the clock
                check_finite(f"epoch {epoch + 1}")
                state = state.replace(wall_time=jnp.asarray(wall0 + elapsed(), jnp.float32))
                save()
                break

            # ---- end of epoch: validation with the EMA weights, scheduler, logs -------------
            check_finite(f"end of epoch {epoch + 1}")
            train_metrics = summarize(state.train_sums, config.loss_coeffs)
            val_metrics = summarize(
                evaluate_split(eval_step, state.ema_params, val, config.prefetch),
                config.loss_coeffs,
            )
            val_loss = val_metrics["loss"]
            if not math.isfinite(val_loss):
                raise NonFiniteLossError(
                    f"non-finite validation loss after epoch {epoch + 1}; the last good "
                    f"checkpoint is step {last_saved}"
                )
            lr_used = float(state.plateau.lr)
            plateau = state.plateau
            if config.lr_scheduler_name == "ReduceLROnPlateau":
                plateau = plateau_update(
                    plateau,
                    val_loss,
                    patience=config.lr_scheduler_patience,
                    factor=config.lr_scheduler_factor,
                    threshold=config.lr_scheduler_threshold,
                )
            improved = val_loss < float(state.best_val_loss)
            epoch += 1
            state = state.replace(
                epoch=jnp.asarray(epoch, jnp.int32),
                plateau=plateau,
                train_sums=ErrorSums.zeros(state.train_sums.n_e.dtype),
                best_val_loss=jnp.asarray(
                    val_loss if improved else state.best_val_loss, jnp.float32
                ),
                best_epoch=jnp.asarray(epoch if improved else state.best_epoch, jnp.int32),
                wall_time=jnp.asarray(wall0 + elapsed(), jnp.float32),
            )
            row = {
                "epoch": epoch,
                "step": step,
                "lr": lr_used,
                "wall_time_s": round(float(state.wall_time), 3),
                "epoch_time_s": round(time.perf_counter() - t_epoch, 3),
            }
            row |= {f"train_{k}": v for k, v in train_metrics.items()}
            row |= {f"validation_{k}": v for k, v in val_metrics.items()}
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
            f_mae = val_metrics.get("force_mae_mev_per_a", float("nan"))
            e_mae = val_metrics.get("energy_mae_mev", float("nan"))
            print(
                f"epoch {epoch:4d}  step {step:7d}  lr {lr_used:.3g}  "
                f"train loss {train_metrics['loss']:.4g}  val loss {val_loss:.4g}  "
                f"val E MAE {e_mae:.2f} meV  F MAE {f_mae:.2f} meV/Å  "
                f"({row['epoch_time_s']:.1f} s)",
                flush=True,
            )
            if improved:
                save_model(
                    workdir / "model",
                    model_config,
                    state.ema_params,
                    {"epoch": epoch, "step": step, "validation": val_metrics},
                )
                save(best=True)

            if epoch >= config.max_epochs:
                stop_reason = "max_epochs"
            elif patience is not None and epoch - int(state.best_epoch) >= patience:
                stop_reason = "early_stopping_patience"
            elif min_lr is not None and float(state.plateau.lr) < min_lr:
                stop_reason = "lr_below_min"
            elif config.max_wall_time and elapsed() > config.max_wall_time:
                stop_reason = "max_wall_time"
            if due or config.checkpoint_every is None or stop_reason is not None:
                save()

        if last_saved != int(state.step):
            save()
    finally:
        store.close()
        if writer is not None:
            writer.close()
    summary = {
        "stop_reason": stop_reason,
        "epochs": int(state.epoch),
        "steps": int(state.step),
        "best_epoch": int(state.best_epoch),
        "best_validation_loss": float(state.best_val_loss),
        "best_validation": next((r for r in log.rows if r["epoch"] == int(state.best_epoch)), None),
        "train_wall_time_s": float(state.wall_time),
        "invocation_time_s": elapsed(),
        "n_params": _count_params(state.params),
        "n_train": len(train),
        "n_val": len(val),
        "train_budget": vars(train.budget) if hasattr(train.budget, "__dict__") else None,
        "compiled_train_shapes": _cache_size(train_step),
        "compiled_eval_shapes": _cache_size(eval_step),
        "backend": jax.default_backend(),
    }
    if config.test_dataset_file_name and (workdir / "model").exists():
        from allegro_jax.train.evaluate import evaluate_model

        test_metrics = evaluate_model(
            workdir,
            config.resolve_path(config.test_dataset_file_name),
            read_fn=lambda p: read_structures(config, str(p)),
        )
        _atomic_write(workdir / "test_metrics.json", json.dumps(test_metrics, indent=2))
        summary["test"] = test_metrics
    _atomic_write(workdir / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary


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


def _warn_config_changes(saved_path: Path, config: TrainConfig) -> None:
    """Warn when a resumed run's config differs from the first start's in a relevant key."""
    if not saved_path.exists():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    current = yaml.safe_load(yaml.safe_dump(config.to_dict()))
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
