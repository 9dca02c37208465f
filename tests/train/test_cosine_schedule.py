"""The cosine learning-rate schedule: a fixed-length run that ends annealed.

The rate of epoch ``e`` is ``lr · (1 + cos(π e / max_epochs)) / 2``; it lives in the
checkpointed train state, so a run stopped by the clock and resumed follows the same
curve; the run ends at ``max_epochs`` (the ``LR`` lower bound does not stop it early).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from systems import ASPIRIN, write_aspirin_subset

from allegro_jax.train.config import TrainConfig
from allegro_jax.train.loop import train_and_evaluate
from allegro_jax.train.optimizer import cosine_lr

TEST_YAML = Path(__file__).resolve().parents[2] / "allegro_jax/train/configs/test.yaml"


def test_cosine_lr_values():
    assert cosine_lr(0.01, 0, 4) == pytest.approx(0.01)
    assert cosine_lr(0.01, 2, 4) == pytest.approx(0.005)
    assert cosine_lr(0.01, 1, 4) == pytest.approx(0.005 * (1 + math.cos(math.pi / 4)))
    assert cosine_lr(0.01, 4, 4) == pytest.approx(0.0, abs=1e-15)
    assert cosine_lr(0.01, 9, 4) == pytest.approx(0.0, abs=1e-15)  # past the end: 0


def test_cosine_schedule_survives_a_clock_stop_and_ends_at_max_epochs(tmp_path):
    if not ASPIRIN.is_file():
        pytest.skip("rMD17 aspirin is not available")
    data = write_aspirin_subset(tmp_path / "d.npz", 0, 20)
    cfg = yaml.safe_load(TEST_YAML.read_text()) | {
        "dataset_file_name": str(data),
        "lr_scheduler_name": "cosine",
        "max_epochs": 4,
        # above the rate of epoch 1 (0.0085): under ReduceLROnPlateau this bound would
        # stop the run; the cosine schedule ends it at max_epochs instead
        "early_stopping_lower_bounds": {"LR": 0.009},
    }
    run = tmp_path / "run"
    first = train_and_evaluate(TrainConfig.from_dict(cfg | {"max_wall_time": 1e-3}), run)
    assert first["stop_reason"] == "max_wall_time" and first["epochs"] == 0
    done = train_and_evaluate(TrainConfig.from_dict(cfg), run)
    assert done["stop_reason"] == "max_epochs" and done["epochs"] == 4
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    expected = [cosine_lr(0.01, e, 4) for e in range(4)]  # the rate each epoch trained at
    assert [r["lr"] for r in rows] == pytest.approx(expected, rel=1e-6)
