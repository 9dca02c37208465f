"""Per-epoch metrics: ``metrics.csv`` + ``metrics.jsonl``, the TensorBoard scalars, the
printed epoch line."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from allegro_jax.io.atomic import atomic_open


class MetricsLog:
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


def tensorboard_scalars(row: dict) -> dict[str, float]:
    """A metrics row as TensorBoard tags: ``train/loss``, ``validation/force_mae_mev_per_a``,
    ``lr``, ... (``epoch`` and ``step`` are the step axis, not scalars; values that are not
    numbers are left out)."""
    return {
        k.replace("train_", "train/", 1).replace("validation_", "validation/", 1): v
        for k, v in row.items()
        if k not in ("epoch", "step") and isinstance(v, int | float) and not isinstance(v, bool)
    }


def epoch_line(row: dict, shown: dict) -> str:
    """The line printed after an epoch; ``shown`` are the validation metrics it quotes (the
    force MAE only where the validation frames have forces: an energy-only set, QM9 say,
    has none and its force MAE is NaN)."""
    f_mae = shown.get("force_mae_mev_per_a", float("nan"))
    e_mae = shown.get("energy_mae_mev", float("nan"))
    return (
        f"epoch {row['epoch']:4d}  step {row['step']:7d}  lr {row['lr']:.3g}  "
        f"train loss {row['train_loss']:.4g}  val loss {shown['loss']:.4g}  "
        f"val E MAE {e_mae:.2f} meV"
        + (f"  F MAE {f_mae:.2f} meV/Å" if math.isfinite(f_mae) else "")
        + (
            f"  F std {shown['force_std_mean_mev_per_a']:.2f} meV/Å"
            if "force_std_mean_mev_per_a" in shown
            else ""
        )
        + f"  ({row['epoch_time_s']:.1f} s)"
    )
