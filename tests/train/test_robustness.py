"""Training faults (issue 17): nothing lost, nothing silent.

* two trainings on one work directory: the second is refused (run-directory lock);
* a kill during the metrics rewrite on resume loses no row (atomic rewrite);
* every checkpoint of ``checkpoints/`` damaged: resume from ``checkpoints_best/``; nothing
  usable at all: a refusal that keeps ``model/`` and the metrics, on every re-run;
* a damaged checkpoint without manifest: no "Event loop is closed" noise from orbax;
* the loss asks for forces the data does not have (another key): a clear error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from faults import kill_group, start_lock_holder
from systems import ASPIRIN, write_aspirin_subset

from allegro_jax.io.runlock import RunLockedError
from allegro_jax.train.config import TrainConfig
from allegro_jax.train.loop import train_and_evaluate

REPO = Path(__file__).resolve().parents[2]
TEST_YAML = REPO / "allegro_jax" / "train" / "configs" / "test.yaml"


def _npz(path: Path, start: int = 0, n: int = 20) -> Path:
    if not ASPIRIN.is_file():
        pytest.skip("rMD17 aspirin is not available")
    return write_aspirin_subset(path, start, n)


def _config_dict(data: Path, **overrides) -> dict:
    cfg = yaml.safe_load(TEST_YAML.read_text())
    cfg.update(dataset_file_name=str(data), **overrides)
    return cfg


def _config(data: Path, **overrides) -> TrainConfig:
    return TrainConfig.from_dict(_config_dict(data, **overrides))


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---- item 6: one training per work directory -------------------------------------------------


def test_a_second_training_on_a_locked_workdir_is_refused(tmp_path, capsys):
    from allegro_jax.cli import main

    data = _npz(tmp_path / "d.npz")
    run = tmp_path / "run"
    holder = start_lock_holder(run, "training")  # another process training in run/
    try:
        with pytest.raises(RunLockedError, match=rf"another training \(pid {holder.pid} "):
            train_and_evaluate(_config(data), run)
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump(_config_dict(data)))
        capsys.readouterr()
        assert main(["train", str(config), "--workdir", str(run)]) == 5
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "in use by another training" in err
        assert "Traceback" not in err
        # nothing of the refused run was written
        written = sorted(p.name for p in run.iterdir())
        assert written == [".allegro_jax.lock", ".allegro_jax.lock.json"]
    finally:
        kill_group(holder)
