"""experiments/rmd17/size_study.py: budgets are compared at equal CPU hours."""

from __future__ import annotations

import json

import pytest

from experiments.rmd17 import size_study


@pytest.fixture(scope="module")
def study():
    return size_study


def test_best_within_budget_uses_only_epochs_inside_it(study):
    points = [(0.05, 50.0), (0.2, 30.0), (0.6, 20.0), (1.1, 25.0)]
    assert study.best_within(points, 0.25) == 30.0
    assert study.best_within(points, 1.0) == 20.0
    assert study.best_within(points, 2.0) is None  # not trained that long yet
    assert study.best_within([], 0.1) is None


def test_every_size_config_loads(study, tmp_path):
    from allegro_jax.train.config import load_config

    params = {}
    for size, overrides in study.SIZES.items():
        cfg = load_config(study.CONFIGS / "aspirin.yaml", overrides)
        assert cfg.batch_size == 5 and cfg.n_train == 950  # the paper's protocol for all
        params[size] = (cfg.model["num_layers"], cfg.model["num_tensor_features"])
    assert params == {"small": (2, 16), "mid": (2, 32), "full": (3, 64)}


def test_report_reads_cpu_hours_from_the_metrics(study, tmp_path, monkeypatch):
    monkeypatch.setattr(study, "HERE", tmp_path)  # outputs next to the (fake) script
    run = tmp_path / "runs" / "small" / "ethanol"
    run.mkdir(parents=True)
    rows = [
        {"epoch": e, "cpu_time_s": 900.0 * e, "validation_force_mae_mev_per_a": 40.0 / e}
        for e in range(1, 6)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "summary.json").write_text(json.dumps({"n_params": 123}))
    out = study.main(["report", "--runs-dir", str(tmp_path / "runs"), "--molecules", "ethanol"])
    assert out == 0
    rep = json.loads((tmp_path / "size_study.json").read_text())["runs"]["small/ethanol"]
    assert rep["cpu_hours"] == 1.25 and rep["n_params"] == 123
    assert rep["best_within_budget"]["1.0"] == 10.0  # epoch 4 at 1.0 CPU h
    assert rep["best_within_budget"]["2.0"] is None
    assert (tmp_path / "size_study.png").stat().st_size > 0
