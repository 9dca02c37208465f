"""``train_and_evaluate(config, workdir)``: the training loop, its files and its resume logic.

Files in ``workdir``:

* ``train_config.yaml``: the training config as run; ``model_config.json``: the model
  config with the training-set statistics filled in; ``statistics.json``.
* ``metrics.csv`` and ``metrics.jsonl``: one row per epoch (losses, energy/force/stress MAE
  and RMSE in meV, meV/Å, meV/Å^3, learning rate, times); ``tensorboard/``: the same as
  TensorBoard scalars (tensorboardX, step = epoch).
* ``checkpoints/``, ``checkpoints_best/``: orbax states (:mod:`.checkpoint`).
* ``model/``: the best model (EMA weights; for an ensemble each member's best),
  :func:`allegro_jax.io.model.load_model`.
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

import dataclasses
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from tensorboardX import SummaryWriter
from tqdm.auto import tqdm

from allegro_jax.compiling import WatchedFunction, watch_compiles
from allegro_jax.config import AllegroConfig
from allegro_jax.io.atomic import atomic_write_text
from allegro_jax.io.model import save_model
from allegro_jax.io.runlock import RunLock
from allegro_jax.nn.ensemble import member, stack_members
from allegro_jax.nn.model import make_model
from allegro_jax.nn.xla_options import compiler_options
from allegro_jax.train.checkpoint import CheckpointStore
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
from allegro_jax.train.metrics_log import MetricsLog, epoch_line, tensorboard_scalars
from allegro_jax.train.optimizer import cosine_lr, make_optimizer, plateau_update
from allegro_jax.train.resume import (
    check_ensemble_size,
    exported_losses,
    first,
    initial_model_config,
    losses_from_json,
    losses_to_json,
    normalised_config,
    read_model_metadata,
    read_previous_stages,
    record_previous_stages,
    remove_empty_run_dirs,
    restore_or_refuse,
    resume_line,
    start_from_model,
    test_not_evaluated,
    warn_config_changes,
)
from allegro_jax.train.run_data import (  # noqa: F401  (importable from here, as before)
    check_loss_labels,
    complete_model_config,
    default_type_names,
    info_values,
    load_splits,
    read_structures,
)
from allegro_jax.train.state import create_train_state
from allegro_jax.train.step import make_eval_step, make_train_step

FINAL_STOPS = ("max_epochs", "early_stopping_patience", "lr_below_min")


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient became NaN/inf; the run stopped, checkpoints are untouched."""


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

    Global state: for a float64 model (``model_dtype: float64``) this turns on
    ``jax_enable_x64`` for the process, first thing, before any array is made (the other
    library functions leave JAX's configuration alone and ask for it; only the command-line
    entry points switch it on too).

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
    if config.dtype == np.float64:  # see "Global state" above
        jax.config.update("jax_enable_x64", True)
    workdir = Path(workdir).resolve()
    # a missing data file is reported before the run directory is created
    for key in ("dataset_file_name", "validation_dataset_file_name", "test_dataset_file_name"):
        if getattr(config, key):
            config.resolve_path(getattr(config, key))
    created = [p for p in (workdir, *workdir.parents) if not p.exists()]
    try:
        with RunLock(workdir, purpose="training"):
            run = setup_run(config, workdir, t_start)
            with CheckpointStore(workdir, keep=config.checkpoint_keep) as store:
                restore_run(run, store)
                exporter = ModelExporter.from_dir(
                    workdir / "model", run.n_members, config.metrics_key
                )
                log = MetricsLog(workdir, run.epoch)
                stop_reason = train_epochs(run, exporter, log)
            return finalise(run, stop_reason, log, exporter)
    except BaseException:
        remove_empty_run_dirs(created)
        raise


# ---- setup ------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """The state of one invocation of :func:`train_and_evaluate` (its pieces share it)."""

    config: TrainConfig
    workdir: Path
    t_start: float
    model_config: AllegroConfig
    initial_dir: Path | None
    train: Any  # SplitData, or DataParallelSplit with ``data_parallel``
    val: Any
    tx: Any
    train_step: WatchedFunction
    eval_step: WatchedFunction
    state: Any
    store: CheckpointStore | None = None
    restored: bool = False
    # the best validation loss per member, float64 on the host (the state's float32 field
    # is a copy; the exact value travels in the checkpoint's JSON metadata)
    best_val: np.ndarray = dataclasses.field(default_factory=lambda: np.full(1, np.inf))
    last_saved: int | None = None  # the step of the newest checkpoint to fall back to
    last_saved_dir: Path | None = None
    wall0: float = 0.0

    @property
    def n_members(self) -> int:
        return self.config.ensemble_size

    @property
    def ensemble(self) -> bool:
        return self.n_members > 1

    @property
    def step(self) -> int:
        return int(first(self.state.step))

    @property
    def epoch(self) -> int:
        return int(first(self.state.epoch))

    @property
    def n_batches(self) -> int:
        return self.train.num_batches

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def over_time(self) -> bool:
        return bool(self.config.max_wall_time) and self.elapsed() > self.config.max_wall_time

    def stamp_wall_time(self) -> None:
        wall = jnp.full(np.shape(self.state.wall_time), self.wall0 + self.elapsed(), jnp.float32)
        self.state = self.state.replace(wall_time=wall)

    def meta(self) -> dict:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "n_batches": self.n_batches,
            "seed": self.config.seed,
            "ensemble_size": self.n_members,
            "best_val_loss": losses_to_json(self.best_val),
        }

    def save(self, best: bool = False) -> None:
        directory = self.store.save(self.step, self.state, self.meta(), best=best)
        if not best:
            self.last_saved, self.last_saved_dir = self.step, directory

    def check_finite(self, where: str) -> None:
        bad = int(np.max(np.asarray(self.state.bad_step)))
        if bad:
            last = (
                "no checkpoint was written yet"
                if self.last_saved is None
                else f"the last good checkpoint is {self.last_saved_dir} (step {self.last_saved})"
            )
            raise NonFiniteLossError(
                f"non-finite loss or gradient at step {bad} ({where}); that update was not "
                f"applied and training stopped; {last}. Lower learning_rate, set "
                f"max_gradient_norm, or check the data for outliers."
            )


def prepare_model_config(
    config: TrainConfig, workdir: Path, initial_dir: Path | None
) -> AllegroConfig | None:
    """The model config of a resumed run (its first start's) or of ``initial_model``; None
    for a new run (the statistics are computed by :func:`setup_run`)."""
    model_config_path = workdir / "model_config.json"
    if model_config_path.exists():  # resume: the statistics of the first start
        check_ensemble_size(workdir / "train_config.yaml", config.ensemble_size)
        model_config = AllegroConfig.from_dict(json.loads(model_config_path.read_text()))
        warn_config_changes(workdir / "train_config.yaml", config)
        return model_config
    if initial_dir is not None:  # a new run from a trained model: its types and statistics
        return initial_model_config(initial_dir, config, config.ensemble_size)
    return None


def config_type_weights(
    structures: list, weights: dict[str, float] | None, source: str
) -> list[float] | None:
    """Each training structure's loss weight from its ``info["config_type"]`` (1 when not
    listed); every listed type must occur (a misspelt one would silently weigh nothing)."""
    if not weights:
        return None
    kinds = info_values(structures, "config_type")
    present = {str(k) for k in kinds if k is not None}
    missing = sorted(set(weights) - present)
    if missing:
        have = ", ".join(sorted(present)) if present else "none: no frame has a config_type"
        raise ValueError(
            f"config_type_weights: {', '.join(map(repr, missing))} not among the config_type "
            f"values of the training frames of {source} ({have})"
        )
    return [weights.get(str(k), 1.0) if k is not None else 1.0 for k in kinds]


def setup_run(config: TrainConfig, workdir: Path, t_start: float) -> Run:
    """Data, statistics and model config (written to ``workdir`` on a first start), model,
    optimiser, initial state and the jitted steps."""
    np_dtype = config.dtype
    n_members = config.ensemble_size
    train_structs, val_structs = load_splits(config)
    initial_dir = config.resolve_path(config.initial_model) if config.initial_model else None
    model_config = prepare_model_config(config, workdir, initial_dir)
    if model_config is not None:
        types, r_max = model_config.type_names, model_config.r_max
    else:
        types = config.model.get("type_names") or default_type_names(train_structs)
        r_max = config.model["r_max"]
    # neighbour lists first: they validate every structure (errors name the file and frame)
    train_file = str(config.resolve_path(config.dataset_file_name))
    val_file = train_file
    if config.validation_dataset_file_name:
        val_file = str(config.resolve_path(config.validation_dataset_file_name))
    train = SplitData(
        train_structs,
        types,
        r_max,
        config.batch_size,
        np_dtype,
        source=train_file,
        weights=config_type_weights(train_structs, config.config_type_weights, train_file),
    )
    val = SplitData(val_structs, types, r_max, config.val_batch_size, np_dtype, source=val_file)
    model_config_path = workdir / "model_config.json"
    if not model_config_path.exists():
        from_data, stats = complete_model_config(config.model, train_structs)
        model_config = model_config or from_data
        atomic_write_text(workdir / "statistics.json", stats.to_json(indent=2))
        atomic_write_text(workdir / "train_config.yaml", yaml.safe_dump(normalised_config(config)))
        atomic_write_text(model_config_path, json.dumps(model_config.to_dict(), indent=2))
    use_stress = config.loss_coeffs["stress"] > 0 and train.has_stress

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

    states = [member_state(k) for k in range(n_members)]
    state = stack_members(states) if n_members > 1 else states[0]
    train_step = make_train_step(
        apply_fn,
        tx,
        config.loss_coeffs,
        use_ema=config.use_ema,
        ema_decay=config.ema_decay,
        ema_use_num_updates=config.ema_use_num_updates,
        stress=use_stress,
        # XLA options (a CPU: no YNNPACK fusions, benchmarks/NOTES.md 11) on the outermost
        # program only: the ensemble's wraps this step
        compiler_options=compiler_options() if n_members == 1 else None,
    )
    if n_members > 1:  # one program: the step vmapped over the members, the batch shared
        train_step = make_ensemble_train_step(train_step, config.ensemble_strategy)
        eval_step = make_ensemble_eval_step(apply_fn, forces=val.has_forces, stress=val.has_stress)
    else:
        eval_step = make_eval_step(
            apply_fn,
            forces=val.has_forces,
            stress=val.has_stress,
            compiler_options=compiler_options(),
        )
    if config.data_parallel:  # each batch split over the devices, parameters replicated
        train, val, train_step, eval_step, state = setup_data_parallel(
            config, apply_fn, tx, train, val, state, stress=use_stress
        )
    # "compiling ...", then the seconds, at each step's first call (and again if a later
    # call compiles new shapes, e.g. a restored state's)
    members = f", {n_members} members" if n_members > 1 else ""
    return Run(
        config=config,
        workdir=workdir,
        t_start=t_start,
        model_config=model_config,
        initial_dir=initial_dir,
        train=train,
        val=val,
        tx=tx,
        train_step=watch_compiles(
            train_step, f"the training step (batches of {config.batch_size}{members})"
        ),
        eval_step=watch_compiles(
            eval_step, f"the validation step (batches of {config.val_batch_size}{members})"
        ),
        state=state,
        best_val=np.full(n_members, np.inf),
    )


def restore_run(run: Run, store: CheckpointStore) -> None:
    """Continue from the newest good checkpoint (or start from ``initial_model``'s weights,
    or from scratch): the state, the best validation losses, the fallback checkpoint."""
    run.store = store
    restored = restore_or_refuse(store, run.state, run.workdir)
    run.last_saved_dir = store.restored_from
    if restored is None and run.initial_dir is not None:
        run.state = start_from_model(
            run.initial_dir, run.state, run.tx, run.config, run.n_members, run.model_config
        )
        record_previous_stages(run.initial_dir, run.workdir)
    if restored is not None:
        state, meta = restored
        if not run.config.data_parallel:
            # orbax returns arrays committed to a device, a fresh state's are not; jit keys
            # its cache on that, so the same step would compile twice more after a resume
            state = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), state)
        run.state, run.restored, run.last_saved = state, True, int(first(state.step))
        if "best_val_loss" in meta:
            run.best_val = losses_from_json(meta["best_val_loss"])
        else:  # a checkpoint of an older version
            run.best_val = np.asarray(state.best_val_loss, np.float64).reshape(-1)
        print(resume_line(state, run.best_val, store.restored_from, run.ensemble), flush=True)
    run.wall0 = float(first(run.state.wall_time))


# ---- validation and the exported model ---------------------------------------------------


def validate(run: Run) -> tuple[list[dict], dict | None]:
    """Validation metrics of the EMA weights: per member, and of the ensemble mean."""
    config = run.config
    if not run.ensemble:
        sums = evaluate_split(run.eval_step, run.state.ema_params, run.val, config.prefetch)
        return [summarize(sums, config.loss_coeffs)], None
    member_sums, mean_sums, unc = evaluate_ensemble_split(
        run.eval_step, run.state.ema_params, run.val, config.prefetch
    )
    members = [summarize(s, config.loss_coeffs) for s in member_sums]
    return members, summarize(mean_sums, config.loss_coeffs) | summarize_uncertainty(unc)


def selection_values(val_metrics: list[dict], key: str) -> np.ndarray:
    """``[K]`` values of the validation metric ``key`` (``metrics_key``: a ``metrics.csv``
    column, ``validation_`` + a :func:`~allegro_jax.train.loss.summarize` key) per member.

    Raises:
        ValueError: the validation data does not give that metric (e.g. a stress error
            without stress labels); the message lists those it gives.
    """
    name = key.removeprefix("validation_")
    if name not in val_metrics[0]:
        have = sorted(f"validation_{k}" for k in val_metrics[0])
        raise ValueError(f"metrics_key {key!r}: the validation data gives only {have}")
    return np.asarray([m[name] for m in val_metrics], np.float64)


@dataclasses.dataclass
class ModelExporter:
    """``model/``: only ever replaced by weights with a lower validation loss (per member).

    Attributes:
        losses: ``[K]`` validation losses of what ``model/`` holds (inf where unknown).
        params: for an ensemble, the exported stacked parameters (members that did not
            improve are kept).
        changed: this invocation wrote ``model/``.
    """

    losses: np.ndarray
    params: Any = None
    changed: bool = False

    @classmethod
    def from_dir(cls, model_dir: Path, n_members: int, key: str) -> ModelExporter:
        return cls(*exported_losses(model_dir, n_members, key))

    def export(self, run: Run, val_metrics: list[dict], info: dict) -> bool:
        """Write ``model/`` where a member's validation loss beats the exported one."""
        losses = selection_values(val_metrics, run.config.metrics_key)
        better = losses < self.losses
        if not better.any():
            return False
        model_dir = run.workdir / "model"
        if not run.ensemble:
            metadata = info | {"validation": val_metrics[0]}
            save_model(model_dir, run.model_config, run.state.ema_params, metadata)
        else:
            ema = jax.tree.map(np.asarray, run.state.ema_params)
            if self.params is None:
                self.params = ema
            else:  # keep the members that did not improve
                mask = lambda x: better.reshape((-1,) + (1,) * (np.ndim(x) - 1))  # noqa: E731
                self.params = jax.tree.map(
                    lambda new, old: np.where(mask(new), new, old), ema, self.params
                )
            entries = read_model_metadata(model_dir).get("members") or [
                {} for _ in range(run.n_members)
            ]
            entries = [
                info | {"validation": val_metrics[k]} if better[k] else entries[k]
                for k in range(run.n_members)
            ]
            save_model(
                model_dir,
                run.model_config,
                self.params,
                {"ensemble_size": run.n_members, "members": entries},
                ensemble_size=run.n_members,
            )
        self.losses = np.where(better, losses, self.losses)
        self.changed = True
        return True


# ---- epochs ------------------------------------------------------------------------------


def final_stop_reason(run: Run) -> str | None:
    """max_epochs / early stopping / lr bound (over all members for an ensemble)."""
    config, epoch = run.config, run.epoch
    patience = config.early_stopping_patiences.get("validation_loss")
    min_lr = config.early_stopping_lower_bounds.get("LR")
    if epoch >= config.max_epochs:
        return "max_epochs"
    last_improved = int(np.max(np.asarray(run.state.best_epoch)))
    if epoch > 0 and patience is not None and epoch - last_improved >= patience:
        return "early_stopping_patience"
    if config.lr_scheduler_name == "cosine":  # the schedule ends the run at max_epochs
        min_lr = None
    if epoch > 0 and min_lr is not None and float(np.max(run.state.plateau.lr)) < min_lr:
        return "lr_below_min"
    return None


def train_epochs(run: Run, exporter: ModelExporter, log: MetricsLog) -> str | None:
    """Epochs until a stop; returns the stop reason (None: nothing to train)."""
    config = run.config
    # CPU seconds of this process (all threads), added to those of the rows kept on resume
    # (work after the last completed epoch of a killed run is not counted)
    cpu0 = float(log.rows[-1].get("cpu_time_s", 0.0)) if log.rows else 0.0
    process_cpu0 = time.process_time()
    cpu_time = lambda: round(cpu0 + time.process_time() - process_cpu0, 1)  # noqa: E731
    writer = None
    if config.tensorboard:
        # a resumed run: TensorBoard drops what a killed run wrote from this step on
        purge_step = run.epoch + 1 if run.restored else None
        writer = SummaryWriter(str(run.workdir / "tensorboard"), purge_step=purge_step)
    # a resumed run that had already stopped for a final reason does not train again
    stop_reason = final_stop_reason(run)
    try:
        while stop_reason is None:
            t_epoch = time.perf_counter()
            stop_reason, due = train_epoch(run)
            if stop_reason is not None:  # stopped mid-epoch by the clock
                stop_mid_epoch(run, exporter)
                break
            val_metrics, row, shown, improved = end_epoch(run, t_epoch, cpu_time)
            log.append(row)
            if writer is not None:
                for tag, value in tensorboard_scalars(row).items():
                    writer.add_scalar(tag, value, run.epoch)
                writer.flush()  # on disk with the epoch's metrics rows
            print(epoch_line(row, shown), flush=True)
            exporter.export(run, val_metrics, {"epoch": run.epoch, "step": run.step})
            if improved.any():
                run.save(best=True)
            stop_reason = final_stop_reason(run)
            if stop_reason is None and run.over_time():
                stop_reason = "max_wall_time"
            if due or config.checkpoint_every is None or stop_reason is not None:
                run.save()
        if run.last_saved != run.step:
            run.save()
    finally:
        if writer is not None:
            writer.close()
    return stop_reason


def _open_bar(run: Run, done: int) -> Any:
    """The epoch's progress bar, opened once steps are timed (its ETA leaves out the
    compilation of the first step)."""
    if not run.config.progress_bar:
        return None
    return tqdm(
        total=run.n_batches,
        initial=done,
        desc=f"epoch {run.epoch + 1}",
        leave=False,
        dynamic_ncols=True,
    )


def train_epoch(run: Run) -> tuple[str | None, bool]:
    """The training steps of one epoch (from where a resumed run stopped), with the
    mid-epoch checkpoints and the clock.

    Returns:
        ``(stop_reason, due)``: ``"max_wall_time"`` if the clock stopped the epoch before
        its last batch (else None), and whether a checkpoint fell due on its last step.
    """
    config, n_batches, epoch = run.config, run.n_batches, run.epoch
    step = run.step
    first_batch = step - epoch * n_batches  # batches of this epoch already done
    order = epoch_permutation(len(run.train), config.seed, epoch)
    bar = _open_bar(run, first_batch) if run.train_step.calls else None
    stop_reason, due = None, False
    batches = prefetch(run.train.batches(order, first_batch), config.prefetch)
    try:
        for b, batch in enumerate(batches, start=first_batch):
            compiled_now = run.train_step.calls == 0
            run.state, metrics = run.train_step(run.state, batch)
            step += 1
            if compiled_now:  # the bar starts after the compiled first step
                bar = _open_bar(run, b + 1)
            last_batch = b == n_batches - 1
            where = f"epoch {epoch + 1}, batch {b + 1}/{n_batches}"
            if step % config.log_every == 0 or last_batch:
                run.check_finite(where)
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
                    run.check_finite(where)
                    run.stamp_wall_time()
                    run.save()
            if run.over_time() and not last_batch:
                stop_reason = "max_wall_time"
                break
    finally:
        batches.close()
        if bar is not None:
            bar.close()
    return stop_reason, due


def stop_mid_epoch(run: Run, exporter: ModelExporter) -> None:
    """A clock stop inside an epoch: checkpoint, then validate the partial epoch's EMA
    weights and export them if they are better (the state and the loss curve unchanged)."""
    epoch, step, n_batches = run.epoch, run.step, run.n_batches
    run.check_finite(f"epoch {epoch + 1}")
    run.stamp_wall_time()
    run.save()
    val_metrics, ens_metrics = validate(run)
    exported = exporter.export(
        run, val_metrics, {"epoch": epoch, "step": step, "partial_epoch": True}
    )
    shown = ens_metrics or val_metrics[0]
    print(
        f"stopped by max_wall_time at step {step} (epoch {epoch + 1}, batch "
        f"{step - epoch * n_batches}/{n_batches}): val loss {shown['loss']:.4g}; "
        + ("exported to model/" if exported else "model/ kept (it is better)"),
        flush=True,
    )


def end_epoch(
    run: Run, t_epoch: float, cpu_time: Callable[[], float]
) -> tuple[list[dict], dict, dict, np.ndarray]:
    """The end of an epoch: validation of the EMA weights, the plateau scheduler, the best
    losses, the epoch counter and its metrics row.

    Returns:
        ``(val_metrics, row, shown, improved)``: the members' validation metrics, the
        metrics row, the metrics the epoch line shows (the ensemble mean's for an
        ensemble) and which members improved.
    """
    config, ensemble, n_members = run.config, run.ensemble, run.n_members
    state = run.state
    run.check_finite(f"end of epoch {run.epoch + 1}")
    train_metrics = [
        summarize(member(state.train_sums, k) if ensemble else state.train_sums, config.loss_coeffs)
        for k in range(n_members)
    ]
    val_metrics, ens_metrics = validate(run)
    val_losses = selection_values(val_metrics, config.metrics_key)
    if not np.all(np.isfinite(val_losses)) or not all(np.isfinite(m["loss"]) for m in val_metrics):
        raise NonFiniteLossError(
            f"non-finite validation loss after epoch {run.epoch + 1}; the last good "
            f"checkpoint is step {run.last_saved}"
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
    elif config.lr_scheduler_name == "cosine":  # the rate of the next epoch
        lr_next = cosine_lr(config.learning_rate, run.epoch + 1, config.max_epochs)
        plateau = plateau.replace(lr=jnp.full_like(plateau.lr, lr_next))
    improved = val_losses < run.best_val
    run.best_val = np.where(improved, val_losses, run.best_val)
    epoch = run.epoch + 1
    best_epoch = np.where(improved, epoch, np.asarray(state.best_epoch).reshape(-1))
    shape = np.shape(state.epoch)
    run.state = state.replace(
        epoch=jnp.full(shape, epoch, jnp.int32),
        plateau=plateau,
        train_sums=jax.tree.map(jnp.zeros_like, state.train_sums),
        best_val_loss=jnp.asarray(run.best_val.reshape(shape), jnp.float32),
        best_epoch=jnp.asarray(best_epoch.reshape(shape), jnp.int32),
    )
    run.stamp_wall_time()
    row = {
        "epoch": epoch,
        "step": run.step,
        "lr": float(np.mean(lrs)),
        "wall_time_s": round(float(first(run.state.wall_time)), 3),
        "epoch_time_s": round(time.perf_counter() - t_epoch, 3),
        "cpu_time_s": cpu_time(),
    }
    if not ensemble:
        row |= {f"train_{k}": v for k, v in train_metrics[0].items()}
        row |= {f"validation_{k}": v for k, v in val_metrics[0].items()}
        return val_metrics, row, val_metrics[0], improved
    row |= {f"train_{k}": float(np.mean([m[k] for m in train_metrics])) for k in train_metrics[0]}
    row |= {f"validation_{k}": v for k, v in ens_metrics.items()}
    for k in range(n_members):
        row[f"member{k}_lr"] = float(lrs[k])
        row |= {f"member{k}_train_{n}": v for n, v in train_metrics[k].items()}
        row |= {f"member{k}_validation_{n}": v for n, v in val_metrics[k].items()}
    return val_metrics, row, ens_metrics, improved


# ---- finalisation ------------------------------------------------------------------------


def finalise(run: Run, stop_reason: str | None, log: MetricsLog, exporter: ModelExporter) -> dict:
    """``summary.json`` (returned) and, once training has finished, the test metrics."""
    config, workdir, state, ensemble = run.config, run.workdir, run.state, run.ensemble
    best_epochs = [int(e) for e in np.asarray(state.best_epoch).reshape(-1)]
    best_losses = losses_to_json(run.best_val)
    summary = {
        "stop_reason": stop_reason,
        "epochs": run.epoch,
        "steps": run.step,
        "best_epoch": best_epochs if ensemble else best_epochs[0],
        "metrics_key": config.metrics_key,
        "best_validation_loss": best_losses if ensemble else best_losses[0],
        "best_validation": (
            None if ensemble else next((r for r in log.rows if r["epoch"] == best_epochs[0]), None)
        ),
        "train_wall_time_s": float(first(state.wall_time)),
        "train_cpu_time_s": log.rows[-1].get("cpu_time_s") if log.rows else None,
        "invocation_time_s": run.elapsed(),
        "n_params": _count_params(member(state.params, 0) if ensemble else state.params),
        "n_train": len(run.train),
        "n_val": len(run.val),
        "train_budget": vars(run.train.budget) if hasattr(run.train.budget, "__dict__") else None,
        "compiled_train_shapes": _cache_size(run.train_step),
        "compiled_eval_shapes": _cache_size(run.eval_step),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
    }
    if ensemble:
        summary["ensemble_size"] = run.n_members
    previous = read_previous_stages(workdir)
    if previous is not None:
        summary["previous_stages"] = previous
    test_path = workdir / "test_metrics.json"
    finished = stop_reason in FINAL_STOPS
    if config.test_dataset_file_name and not finished:
        note = test_not_evaluated(config, workdir, stop_reason)
        summary["test_not_evaluated"] = note
        print(note, flush=True)
    if config.test_dataset_file_name and (workdir / "model").exists() and finished:
        if exporter.changed or not test_path.exists():
            test_metrics = evaluate_model(
                workdir,
                config.resolve_path(config.test_dataset_file_name),
                read_fn=lambda p: read_structures(config, str(p)),
            )
            atomic_write_text(test_path, json.dumps(test_metrics, indent=2))
        summary["test"] = json.loads(test_path.read_text())
    atomic_write_text(workdir / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def _count_params(params: Any) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def _cache_size(fn: Callable) -> int | None:
    try:
        return int(fn._cache_size())
    except Exception:  # noqa: BLE001 - private API
        warnings.warn("could not read the jit cache size", stacklevel=2)
        return None
