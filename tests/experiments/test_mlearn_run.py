"""experiments/mlearn: the cosine fine-tune config, and a fine-tuned model that keeps the
runs it came from (publish) so the results row can name every stage's hardware and time.

No training here (the training loop and the cosine schedule have their own tests).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from experiments import runinfo
from experiments.mlearn import run as mlearn


def test_cosine_fine_tune_config(tmp_path):
    plain = mlearn.make_config("Si", tmp_path, 30.0, None)
    assert plain.lr_scheduler_name == "ReduceLROnPlateau" and plain.initial_model is None
    tuned = mlearn.make_config("Cu", tmp_path, 30.0, tmp_path / "model", cosine_epochs=40)
    assert tuned.lr_scheduler_name == "cosine" and tuned.max_epochs == 40
    # a cosine run ends annealed: no early stopping (the plain run keeps the config's)
    assert tuned.early_stopping_patiences == {}
    assert "validation_loss" in plain.early_stopping_patiences
    assert tuned.initial_model == str(tmp_path / "model")
    assert tuned.loss_coeffs.get("stress", 0.0) == 0.0  # Cu has no stress labels
    assert plain.loss_coeffs["stress"] > 0
    assert tuned.dataset_file_name == str(tmp_path / "Cu_train.extxyz")
    assert tuned.test_dataset_file_name is None  # the test file waits for `evaluate`


def test_study_settings_override_the_config_and_bad_ones_are_refused(tmp_path, monkeypatch):
    settings = mlearn.parse_settings(["r_max=6.0", "num_layers=3", "model_dtype=float64"])
    assert settings == {"r_max": 6.0, "num_layers": 3, "model_dtype": "float64"}
    cfg = mlearn.make_config("Mo", tmp_path, 30.0, None, settings=settings)
    model = cfg.model
    assert (model["r_max"], model["num_layers"], model["model_dtype"]) == (6.0, 3, "float64")
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        mlearn.parse_settings(["r_max"])
    # a misspelt key: one line naming it, no traceback, no training started
    started = []
    monkeypatch.setattr("allegro_jax.train.loop.train_and_evaluate", lambda *a: started.append(a))
    with pytest.raises(SystemExit, match="r_maxx"):
        mlearn.main(["train", "Mo", "--set", "r_maxx=6", "--runs-dir", str(tmp_path)])
    assert not started


def test_from_scratch_does_not_start_from_the_published_model(tmp_path, monkeypatch):
    models = tmp_path / "models"
    (models / "Mo").mkdir(parents=True)
    (models / "Mo" / "config.json").write_text("{}")
    monkeypatch.setattr(mlearn, "MODELS", models)
    seen = []
    monkeypatch.setattr(
        "allegro_jax.train.loop.train_and_evaluate", lambda cfg, wd: seen.append(cfg.initial_model)
    )
    runs = ["--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path)]
    mlearn.main(["train", "Mo", *runs])
    mlearn.main(["train", "Mo", "--from-scratch", "--set", "r_max=6.0", *runs])
    assert seen == [str(models / "Mo"), None]


def _fake_run(workdir: Path, summary: dict) -> None:
    (workdir / "model").mkdir(parents=True)
    (workdir / "model" / "config.json").write_text(json.dumps({"model": {}, "metadata": {}}))
    (workdir / "summary.json").write_text(json.dumps(summary))


def test_publish_keeps_the_stages_a_model_was_fine_tuned_from(tmp_path, monkeypatch):
    models = tmp_path / "models"
    monkeypatch.setattr(mlearn, "MODELS", models)
    gpu_stage = {
        "stop_reason": "max_wall_time",
        "epochs": 164,
        "steps": 6397,
        "device_kind": "H200",
        "train_wall_time_s": 420.0,
        "train_cpu_time_s": 247.1,
        "best_validation_force_mae_mev_per_a": 48.2,
    }
    # what the training loop writes for a run from initial_model (tests/train)
    cpu = {
        "stop_reason": "max_epochs",
        "epochs": 100,
        "steps": 4000,
        "device_kind": "cpu",
        "train_wall_time_s": 900.0,
        "train_cpu_time_s": 1700.0,
        "previous_stages": [gpu_stage],
    }
    _fake_run(tmp_path / "cpu" / "Si", cpu)
    mlearn.publish(argparse.Namespace(elements=["Si"], runs_dir=str(tmp_path / "cpu")))
    summary = json.loads((models / "Si" / "summary.json").read_text())
    assert (models / "Si" / "config.json").exists()
    assert summary["previous_stages"] == [gpu_stage]
    stages = runinfo.training_stages(summary)
    assert [s["hardware"] for s in stages] == ["H200", "cpu"]
    assert [s["epochs"] for s in stages] == [164, 100]
    assert stages[1]["cpu_hours"] == round(1700.0 / 3600.0, 3)
    assert runinfo.previous_cpu_hours(summary) == pytest.approx(247.1 / 3600.0)
    assert runinfo.previous_cpu_hours({"epochs": 3}) == 0.0
    with pytest.raises(SystemExit, match="no trained model to publish"):
        mlearn.publish(argparse.Namespace(elements=["Ge"], runs_dir=str(tmp_path / "cpu")))


def test_the_table_names_every_training_stage_and_evaluate_needs_a_published_model(
    tmp_path, monkeypatch
):
    row = {
        "training": [
            {"hardware": "NVIDIA H200", "epochs": 164, "wall_minutes": 7.0, "cpu_hours": 0.07},
            {"hardware": "cpu", "epochs": 100, "wall_minutes": 20.0, "cpu_hours": 0.309},
        ]
    }
    assert mlearn._trained(row) == "7.0 min NVIDIA H200 (164) + 0.31 CPU h (100)"
    monkeypatch.setattr(mlearn, "MODELS", tmp_path / "models")
    args = argparse.Namespace(elements=["Si"], data_dir=str(tmp_path), again=False)
    with pytest.raises(SystemExit, match="no published model; run `publish Si` first"):
        mlearn.evaluate(args)


def test_evaluating_a_new_model_keeps_the_earlier_test_numbers(tmp_path, monkeypatch):
    import allegro_jax.train.evaluate as evaluate_module

    models = tmp_path / "models"
    (models / "Si").mkdir(parents=True)
    monkeypatch.setattr(mlearn, "MODELS", models)
    monkeypatch.setattr(mlearn, "RESULTS", tmp_path / "results.json")
    maes = iter([81.0, 75.0])
    group_by = []

    def fake_evaluate(*a, **k):
        group_by.append(k.get("group_by"))
        groups = {"Surface": {"n_structures": 2, "force_mae_mev_per_a": 30.0}}
        return {
            "energy_per_atom_mae_mev": 3.0,
            "force_mae_mev_per_a": next(maes),
            "force_rmse_mev_per_a": 100.0,
            "n_structures": 25,
            "groups": groups if k.get("group_by") else {},
        }

    monkeypatch.setattr(evaluate_module, "evaluate_model", fake_evaluate)
    (tmp_path / "Si_test.extxyz").write_text('1\nLattice="1 0 0 0 1 0 0 0 1" config_type=Surface\n')
    args = argparse.Namespace(elements=["Si"], data_dir=str(tmp_path), again=False)
    # a later stage may end at the same epoch and step: the weights tell the models apart
    for weights in (b"stage 2", b"stage 3"):
        config = {"metadata": {"epoch": 100, "step": 3500}}
        (models / "Si" / "config.json").write_text(json.dumps(config))
        (models / "Si" / "params.msgpack").write_bytes(weights)
        mlearn.evaluate(args)
        mlearn.evaluate(args)  # the same model again: refused, the row unchanged
    row = json.loads((tmp_path / "results.json").read_text())["elements"]["Si"]
    assert row["force_mae_ev_per_a"] == 0.075
    assert group_by == ["config_type", "config_type"]  # the file labels its cells' kinds
    surface = row["by_config_type"]["Surface"]
    assert surface["n_test"] == 2 and surface["force_mae_ev_per_a"] == 0.03
    assert surface["stress_mae_gpa"] is None
    (earlier,) = row["previous_evaluations"]
    assert earlier["force_mae_ev_per_a"] == 0.081
    assert earlier["model_id"]["params_sha256"] != row["model_id"]["params_sha256"]
    assert "previous_evaluations" not in earlier
