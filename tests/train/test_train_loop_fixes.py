"""Training-loop behaviour at clock stops and resumes, and data-path resolution.

* a ``max_wall_time`` stop in the middle of an epoch exports the partial epoch's EMA
  weights when they validate better (before: ``model/`` ignored them);
* the test file is evaluated once the run has finished, not at every clock stop;
* the best validation loss is kept in float64 (equal to the metrics row);
* relative data paths resolve against the config file's folder first;
* resuming with the same files spelled differently does not warn.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from flax import serialization
from systems import ASPIRIN, write_aspirin_subset

from allegro_jax.train.checkpoint import CheckpointStore
from allegro_jax.train.config import TrainConfig, load_config
from allegro_jax.train.loop import train_and_evaluate
from allegro_jax.train.resume import normalised_config, warn_config_changes

REPO = Path(__file__).resolve().parents[2]
TEST_YAML = REPO / "allegro_jax" / "train" / "configs" / "test.yaml"


def _npz(path: Path, start: int = 0, n: int = 20) -> Path:
    if not ASPIRIN.is_file():
        pytest.skip("rMD17 aspirin is not available")
    return write_aspirin_subset(path, start, n)


def _config(data: Path, **overrides) -> TrainConfig:
    cfg = yaml.safe_load(TEST_YAML.read_text())
    cfg.update(dataset_file_name=str(data), **overrides)
    return TrainConfig.from_dict(cfg)


# ---- paths -----------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_folder_first(tmp_path, monkeypatch):
    cfg_dir, cwd = tmp_path / "configs", tmp_path / "cwd"
    cfg_dir.mkdir()
    cwd.mkdir()
    _npz(cfg_dir / "d.npz", 0, 5)
    _npz(cwd / "d.npz", 5, 5)  # a different file of the same name in the working directory
    _npz(cwd / "only_cwd.npz", 0, 5)
    cfg = yaml.safe_load(TEST_YAML.read_text()) | {"dataset_file_name": "d.npz"}
    (cfg_dir / "c.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(cwd)
    config = load_config(cfg_dir / "c.yaml")
    assert config.resolve_path("d.npz") == (cfg_dir / "d.npz").resolve()
    assert config.resolve_path("only_cwd.npz") == (cwd / "only_cwd.npz").resolve()  # fallback
    with pytest.raises(FileNotFoundError, match="nope.npz.*configs.*and.*cwd"):
        config.resolve_path("nope.npz")
    # a path given on the command line is relative to the working directory
    overridden = load_config(cfg_dir / "c.yaml", {"dataset_file_name": "d.npz"})
    assert overridden.resolve_path(overridden.dataset_file_name) == (cwd / "d.npz").resolve()
    # the shipped configs resolve from any working directory, through the data directory
    monkeypatch.setenv("ALLEGRO_JAX_DATA", str(ASPIRIN.parents[1]))
    shipped = load_config(REPO / "allegro_jax" / "train" / "configs" / "rmd17_aspirin.yaml")
    assert shipped.resolve_path(shipped.dataset_file_name) == ASPIRIN.resolve()


def test_resume_with_the_same_files_spelled_differently_does_not_warn(tmp_path, monkeypatch):
    data = _npz(tmp_path / "d.npz")
    monkeypatch.chdir(tmp_path)
    saved = tmp_path / "train_config.yaml"
    first = _config(Path("d.npz"))  # relative to the working directory
    saved.write_text(yaml.safe_dump(normalised_config(first)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_config_changes(saved, _config(data.resolve()))  # absolute
        warn_config_changes(saved, _config(Path("../") / tmp_path.name / "d.npz"))
        # a train_config.yaml of an older version: relative path, keys missing, "1e-2"
        old = first.to_dict()
        old.pop("ensemble_size")
        old["learning_rate"] = "1e-2"
        saved.write_text(yaml.safe_dump(old))
        warn_config_changes(saved, _config(data.resolve()))
        # initial_model only acts on the first start: a resume without it is the same run
        started = normalised_config(first) | {"initial_model": "m", "initial_model_grow": True}
        saved.write_text(yaml.safe_dump(started))
        warn_config_changes(saved, _config(data.resolve()))
    with pytest.warns(UserWarning, match="learning_rate"):
        warn_config_changes(saved, _config(data, learning_rate=0.02))


# ---- clock stops, the exported model, the test set -----------------------------------------


@pytest.mark.slow
def test_clock_stop_exports_the_partial_epoch_and_the_test_set_waits_for_the_end(tmp_path, capsys):
    data = _npz(tmp_path / "d.npz")
    run = tmp_path / "run"
    # 1) stopped by the clock after the first step of epoch 1
    first = train_and_evaluate(
        _config(data, max_wall_time=1e-3, test_dataset_file_name=str(data)), run
    )
    assert first["stop_reason"] == "max_wall_time" and first["steps"] == 1
    assert "test" not in first and not (run / "test_metrics.json").exists()
    doc = json.loads((run / "model" / "config.json").read_text())
    assert doc["metadata"]["partial_epoch"] and doc["metadata"]["step"] == 1
    store = CheckpointStore(run)
    state = store.restore(1, None)[0]
    store.close()
    exported = serialization.msgpack_restore((run / "model" / "params.msgpack").read_bytes())
    jax.tree.map(np.testing.assert_array_equal, exported, state["ema_params"])

    assert "epoch 1" not in capsys.readouterr().err  # progress_bar: false (test.yaml)

    # 2) resumed to the end: the test set is evaluated, the best loss is exact (float64)
    done = train_and_evaluate(
        _config(data, max_epochs=2, test_dataset_file_name=str(data), progress_bar=True), run
    )
    assert "epoch 2" in capsys.readouterr().err  # the per-epoch progress bar
    assert done["stop_reason"] == "max_epochs" and done["epochs"] == 2
    assert json.loads((run / "test_metrics.json").read_text())["n_structures"] == 20
    assert done["test"]["n_structures"] == 20
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = min(rows, key=lambda r: r["validation_loss"])
    assert done["best_epoch"] == best["epoch"]
    assert done["best_validation_loss"] == best["validation_loss"]  # not float32-rounded

    # 3) more epochs, stopped by the clock again: no test evaluation at the clock stop
    (run / "test_metrics.json").unlink()
    again = train_and_evaluate(
        _config(data, max_epochs=4, max_wall_time=1e-3, test_dataset_file_name=str(data)), run
    )
    assert again["stop_reason"] == "max_wall_time" and again["steps"] == 9
    assert "test" not in again and not (run / "test_metrics.json").exists()
