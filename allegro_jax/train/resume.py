"""Resume and start policy of a training run: which checkpoint, which model, which config.

* :func:`restore_or_refuse`: the newest good checkpoint, or a start from step 0 only when
  that loses nothing (:class:`~allegro_jax.train.checkpoint.CheckpointError` otherwise);
* :func:`check_ensemble_size`, :func:`warn_config_changes`: a resumed run's config
  against the first start's (``train_config.yaml``);
* :func:`initial_model_config`, :func:`start_from_model`: a new run from a trained model
  (``initial_model``); :func:`record_previous_stages`: the training runs behind it;
* :func:`exported_losses`, :func:`read_model_metadata`: what ``model/`` holds;
* :func:`remove_empty_run_dirs`: a run that failed before writing anything leaves no
  folder; :func:`test_not_evaluated`: why a clock-stopped run has no test errors.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from flax import serialization

from allegro_jax.config import AllegroConfig
from allegro_jax.io.atomic import atomic_write_text
from allegro_jax.io.model import PARAMS_FILE, find_model_dir, read_ensemble_size, read_model_config
from allegro_jax.io.runlock import HOLDER_FILE, LOCK_FILE
from allegro_jax.nn.ensemble import member, stack_members
from allegro_jax.nn.grow import grow_differences, grow_params
from allegro_jax.train.checkpoint import CheckpointError, CheckpointStore
from allegro_jax.train.config import TrainConfig
from allegro_jax.train.state import create_train_state


def first(x: Any) -> Any:
    """The first element of a (possibly stacked, ``[K]``) state scalar."""
    return np.asarray(x).reshape(-1)[0]


def losses_to_json(values: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(v) else float(v) for v in values]


def losses_from_json(values: Any) -> np.ndarray:
    values = values if isinstance(values, list) else [values]
    return np.asarray([math.inf if v is None else float(v) for v in values], np.float64)


def exported_losses(
    model_dir: Path, n_members: int, key: str = "validation_loss"
) -> tuple[np.ndarray, Any]:
    """The validation metric ``key`` (``metrics_key``) recorded in an exported model (inf
    where unknown) and its params."""
    name = key.removeprefix("validation_")
    inf = np.full(n_members, np.inf)
    try:
        doc = json.loads((model_dir / "config.json").read_text())
        meta = doc.get("metadata", {})
        entries = meta.get("members") if n_members > 1 else [meta]
        losses = np.asarray(
            [e.get("validation", {}).get(name, math.inf) for e in entries], np.float64
        )
        if losses.shape != (n_members,):
            return inf, None
        params = None
        if n_members > 1:
            params = serialization.msgpack_restore((model_dir / "params.msgpack").read_bytes())
        return losses, params
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return inf, None


def remove_empty_run_dirs(created: Sequence[Path]) -> None:
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


def resume_line(state: Any, best_val: np.ndarray, checkpoint: Path | None, ensemble: bool) -> str:
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
        f"resuming from checkpoint step {int(first(state.step))} (epoch "
        f"{int(first(state.epoch))} completed); {best}; checkpoint {checkpoint}"
    )


def shown_path(path: str | os.PathLike) -> str:
    """A path as a user types it here: relative to the working directory when inside it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def test_not_evaluated(config: TrainConfig, workdir: Path, stop_reason: str | None) -> str:
    """Why a run with a test file reports no test errors, and the command that gives them."""
    test_file = config.resolve_path(config.test_dataset_file_name)
    model, data = shown_path(workdir), shown_path(test_file)
    command = shlex.join(["allegro-jax", "evaluate", "--model", model, "--data", data])
    return (
        f"test set not evaluated: the run stopped at {stop_reason}, and the test file "
        f"{shown_path(test_file)} is evaluated only when training has finished (max_epochs, "
        f"early stopping or the learning-rate bound). Run the same command again to continue "
        f"training, or evaluate the best model so far now with: {command}"
    )


_STATISTICS_KEYS = (
    "type_names",
    "avg_num_neighbors",
    "per_type_energy_shifts",
    "per_type_energy_scales",
)


def initial_model_config(initial_dir: Path, config: TrainConfig, n_members: int) -> AllegroConfig:
    """The model config of ``initial_model``, checked against the run's config."""
    model_config = read_model_config(initial_dir)
    if read_ensemble_size(initial_dir) != n_members:
        raise ValueError(
            f"initial_model {initial_dir} holds {read_ensemble_size(initial_dir)} model(s), "
            f"this run trains ensemble_size {n_members}"
        )
    given = {k: v for k, v in config.model.items() if k not in _STATISTICS_KEYS}
    theirs = model_config.to_dict()
    if config.initial_model_grow and "l_max" in given:
        grown = AllegroConfig.from_dict(theirs | {"l_max": given.pop("l_max")})
        why = grow_differences(model_config, grown)
        if why:
            raise ValueError(f"initial_model {initial_dir} cannot be grown: " + "; ".join(why))
        model_config = grown
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
            + (
                "; a higher l_max can grow the model: initial_model_grow: true"
                if "l_max" in differ and not config.initial_model_grow
                else ""
            )
        )
    return model_config


def start_from_model(
    initial_dir: Path,
    state: Any,
    tx: Any,
    config: TrainConfig,
    n_members: int,
    model_config: AllegroConfig,
):
    """A fresh train state whose parameters (and EMA) are ``initial_model``'s weights
    (grown into ``model_config``'s larger ``l_max`` with ``initial_model_grow``)."""

    path = find_model_dir(initial_dir) / PARAMS_FILE
    loaded = serialization.from_state_dict(
        state.params, serialization.msgpack_restore(path.read_bytes())
    )
    grown = ""
    src_config = read_model_config(initial_dir)
    if config.initial_model_grow and model_config.l_max != src_config.l_max:

        def grow(trained, init):
            return grow_params(trained, src_config, model_config, init)

        if n_members > 1:  # member k grows into member k (its own random new columns)
            loaded = stack_members(
                [grow(member(loaded, k), member(state.params, k)) for k in range(n_members)]
            )
        else:
            loaded = grow(loaded, state.params)
        grown = f", grown from l_max {src_config.l_max} to {model_config.l_max}"
    want, want_def = jax.tree.flatten(state.params)
    got, got_def = jax.tree.flatten(loaded)
    if want_def != got_def or any(
        np.shape(a) != np.shape(b) for a, b in zip(want, got, strict=True)
    ):
        raise ValueError(f"{path}: its parameters do not fit this run's model")
    params = jax.tree.map(lambda w, a: jnp.asarray(a, w.dtype), state.params, loaded)
    print(f"starting from the weights of {initial_dir}{grown} (new optimiser and EMA)", flush=True)
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


PREVIOUS_STAGES_FILE = "previous_stages.json"
STAGE_KEYS = (
    "stop_reason",
    "epochs",
    "steps",
    "train_wall_time_s",
    "train_cpu_time_s",
    "backend",
    "device_kind",
)


def record_previous_stages(initial_dir: Path, workdir: Path) -> list[dict[str, Any]]:
    """Write ``workdir/previous_stages.json``: the runs that trained ``initial_model``.

    A run that starts from a trained model continues that model's training; its
    ``summary.json`` then lists under ``previous_stages`` (oldest first) what each earlier
    run trained (epochs, steps, wall and CPU seconds, device, stop reason, best validation
    force MAE), read once, at the start, from the ``summary.json`` found beside the
    initial model's weights (none: an empty list). Later resumes keep the file.
    """
    found = find_model_dir(initial_dir)
    summary_path = next(
        (d / "summary.json" for d in (found, found.parent) if (d / "summary.json").exists()),
        None,
    )
    stages: list[dict[str, Any]] = []
    if summary_path is not None:
        old = json.loads(summary_path.read_text())
        stages = list(old.get("previous_stages") or [])
        stage = {k: old[k] for k in STAGE_KEYS if k in old}
        best = old.get("best_validation") or {}
        if "validation_force_mae_mev_per_a" in best:
            stage["best_validation_force_mae_mev_per_a"] = best["validation_force_mae_mev_per_a"]
        stages.append(stage)
    atomic_write_text(workdir / PREVIOUS_STAGES_FILE, json.dumps(stages, indent=2))
    return stages


def read_previous_stages(workdir: Path) -> list[dict[str, Any]] | None:
    """The stages :func:`record_previous_stages` wrote (None: the run started afresh)."""
    path = workdir / PREVIOUS_STAGES_FILE
    return json.loads(path.read_text()) if path.exists() else None


def restore_or_refuse(store: CheckpointStore, target: Any, workdir: Path) -> tuple | None:
    """The newest good checkpoint (:meth:`CheckpointStore.restore_latest`), or None.

    None (a start from step 0) only when that loses nothing: a directory without usable
    checkpoints that holds results beyond the first epoch (``model/``, metrics rows) is
    refused with a :class:`CheckpointError` saying what to do, on every invocation, rather
    than trained again from step 0 over them.
    """
    try:
        restored = store.restore_latest(target)
    except CheckpointError as err:
        previous = previous_results(workdir)
        if previous is not None:
            raise CheckpointError(f"{err}. {refusal(workdir, previous)}") from err
        print(
            f"{err}; this run had not finished its first epoch: training starts again from step 0",
            flush=True,
        )
        return None
    if restored is None:
        previous = previous_results(workdir)
        if previous is not None:
            raise CheckpointError(
                f"no checkpoint in {store.directory} or {store.best_directory} (deleted or "
                f"moved away?). {refusal(workdir, previous)}"
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


def previous_results(workdir: Path) -> str | None:
    """What a training from step 0 would overwrite in ``workdir`` beyond its first epoch."""
    epochs = []
    if (workdir / "metrics.jsonl").exists():
        for line in (workdir / "metrics.jsonl").read_text().splitlines():
            try:
                epochs.append(int(json.loads(line)["epoch"]))
            except (ValueError, KeyError, TypeError):
                continue
    meta = read_model_metadata(workdir / "model")
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


def refusal(workdir: Path, previous: str) -> str:
    return (
        f"The run directory {workdir} holds {previous}, which a training from step 0 would "
        "replace, so nothing was trained and they were left as they are. To keep them and "
        "train again, use a new --workdir; to start over in this directory, first move "
        "model/, metrics.csv and metrics.jsonl elsewhere."
    )


def read_model_metadata(model_dir: Path) -> dict:
    try:
        return json.loads((model_dir / "config.json").read_text()).get("metadata", {})
    except (OSError, ValueError):
        return {}


# keys that may change between a run and its resumption without breaking reproducibility
# (``initial_model`` and its ``initial_model_grow`` only act on a run's first start)
_RESUMABLE_CHANGES = frozenset(
    {
        "initial_model",
        "initial_model_grow",
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


def normalised_config(config: TrainConfig) -> dict[str, Any]:
    """``config.to_dict()`` with the data paths that exist resolved to absolute paths."""
    d = config.to_dict()
    for key in _PATH_KEYS:
        if d.get(key):
            try:
                d[key] = str(config.resolve_path(d[key]))
            except FileNotFoundError:
                pass
    return yaml.safe_load(yaml.safe_dump(d))  # YAML's types (lists, not tuples)


def check_ensemble_size(saved_path: Path, n_members: int) -> None:
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


def warn_config_changes(saved_path: Path, config: TrainConfig) -> None:
    """Warn when a resumed run's config differs from the first start's in a relevant key.

    Values are compared after normalisation: defaults filled in, numbers as numbers, and
    data paths as the files they resolve to (a relative path in an older
    ``train_config.yaml`` is taken relative to the working directory).
    """
    if not saved_path.exists():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    current = normalised_config(config)
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
            stacklevel=4,
        )
