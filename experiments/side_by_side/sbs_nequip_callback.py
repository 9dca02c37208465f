"""A Lightning callback for ``nequip-train``: per-epoch validation rows with wall time, and a
wall-clock deadline that stops training the way allegro-jax's ``max_wall_time`` does.

Loaded by the generated nequip config as ``_target_: sbs_nequip_callback.WallClockLog``
(``run.py`` puts this folder on ``PYTHONPATH``).

* ``on_validation_end``: appends one CSV row (epoch, step, lr, seconds since ``t0``, and
  every ``val0_epoch/*`` metric Lightning holds, energies in eV) and flushes it.
* ``on_train_batch_end``: after the absolute ``deadline`` (Unix time) sets
  ``trainer.should_stop``. Lightning then validates the unfinished epoch's EMA weights once
  more (and ``ModelCheckpoint`` keeps them if they are the best so far), which is what
  allegro-jax's loop does at a ``max_wall_time`` stop. With
  ``validate_partial_epoch=False`` the callback makes Lightning skip that validation (for
  comparison with a loop that tests the last complete epoch only).
"""

from __future__ import annotations

import csv
import os
import time

import lightning
import torch
from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop


class WallClockLog(lightning.Callback):
    """Per-epoch validation log with wall-clock times, and a deadline.

    Args:
        out_file: the CSV to write (overwritten at the start of training).
        t0: Unix time that the ``time_s`` column counts from (``run.py``'s launch time).
        deadline: Unix time after which training stops at the next batch end (``None``:
            no deadline).
        num_threads: torch intra-op threads (interop threads are set to 1).
        validate_partial_epoch: validate once more when the deadline stops an epoch.
    """

    def __init__(
        self,
        out_file: str,
        t0: float,
        deadline: float | None = None,
        num_threads: int = 1,
        validate_partial_epoch: bool = True,
    ):
        super().__init__()
        self.out_file = str(out_file)
        self.t0 = float(t0)
        self.deadline = None if deadline is None else float(deadline)
        self.expired = False
        self._header: list[str] | None = None
        torch.set_num_threads(int(num_threads))
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already started; harmless
            pass
        callback = self
        original = _TrainingEpochLoop._should_check_val_fx

        def _should_check_val_fx(loop, *args, **kwargs):
            if callback.expired and not validate_partial_epoch:
                return False
            return original(loop, *args, **kwargs)

        _TrainingEpochLoop._should_check_val_fx = _should_check_val_fx

    def on_train_start(self, trainer, pl_module):
        os.makedirs(os.path.dirname(os.path.abspath(self.out_file)), exist_ok=True)
        with open(self.out_file, "w"):
            pass
        self._header = None
        self._append({"event": "train_start", "time_s": time.time() - self.t0})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.deadline is not None and not self.expired and time.time() > self.deadline:
            self.expired = True
            trainer.should_stop = True
            self._append(
                {
                    "event": "deadline",
                    "time_s": time.time() - self.t0,
                    "epoch": trainer.current_epoch,
                    "step": trainer.global_step,
                }
            )

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        row = {
            "event": "validation_after_deadline" if self.expired else "validation",
            "time_s": time.time() - self.t0,
            "epoch": trainer.current_epoch + 1,
            "step": trainer.global_step,
            "lr": trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None,
        }
        for key, value in sorted(trainer.callback_metrics.items()):
            if key.startswith("val0_epoch/"):
                row[key.split("/", 1)[1]] = float(value)
        self._append(row)

    def _append(self, row: dict) -> None:
        # a fixed, generous header: events have different keys
        fields = [
            "event",
            "time_s",
            "epoch",
            "step",
            "lr",
            "weighted_sum",
            "per_atom_energy_mse",
            "forces_mse",
            "total_energy_mae",
            "total_energy_rmse",
            "forces_mae",
            "forces_rmse",
        ]
        new = not os.path.exists(self.out_file) or os.path.getsize(self.out_file) == 0
        with open(self.out_file, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
            f.flush()
