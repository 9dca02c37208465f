"""experiments/qm9: the config is the paper's split and an energy-only 1-layer model; the
test molecules are exactly those the training loop's split leaves out; the table renders.

No training here (the training loop has its own tests in tests/train).
"""

from __future__ import annotations

import numpy as np
import pytest

from allegro_jax.data.datasets import random_split
from experiments.qm9 import run as qm9_run


@pytest.fixture(scope="module")
def run():
    return qm9_run


def test_config_is_the_papers_split_with_a_one_layer_energy_only_model(run, tmp_path):
    cfg = run.make_config(tmp_path / "qm9.npz", 30.0, None)
    assert (cfg.n_train, cfg.n_val) == (110_000, 10_000)
    assert cfg.model["num_layers"] == 1
    assert cfg.loss_coeffs["forces"] == 0 and cfg.loss_coeffs["total_energy"] > 0
    assert cfg.max_wall_time == 1800.0 and cfg.initial_model is None
    assert cfg.dataset_file_name == str(tmp_path / "qm9.npz")


def test_the_test_molecules_are_the_rest_of_the_loops_split(run, tmp_path):
    cfg = run.make_config(tmp_path / "qm9.npz", 1.0, None)
    n = 130_831
    test = run.test_indices(cfg, n)
    # the training loop draws (train, validation) with the same call (load_splits)
    train, val = random_split(n, (cfg.n_train, cfg.n_val), cfg.dataset_seed)
    assert len(test) == n - 120_000
    assert not set(test) & set(train) and not set(test) & set(val)
    assert np.array_equal(np.sort(np.concatenate([train, val, test])), np.arange(n))


def test_table_lists_every_target_beside_the_paper(run):
    entry = {
        "energy_mae_mev": 11.4,
        "energy_rmse_mev": 20.0,
        "validation_energy_mae_mev": 11.0,
        "steps": 100,
        "epochs": 2,
        "cpu_hours": 1.5,
        "stop_reason": "max_wall_time",
        "hardware": "some CPU",
        "n_params": 10,
    }
    text = run.render_table({"U0": entry})
    assert "| U0 | 11.4 | 20.0 | 5.7 | 2.0× |" in text
    assert sum("not yet run" in line for line in text.splitlines()) == 3


def test_a_run_stopped_inside_its_first_epoch_is_recorded(run, tmp_path, monkeypatch):
    """A budget-stopped run may have no epoch row yet (no CPU time, no validation row):
    --evaluate-only --record still writes results.json, the table and the model."""
    import json

    runs = tmp_path / "runs"
    workdir = runs / "U0"
    (workdir / "model").mkdir(parents=True)
    (workdir / "model" / "config.json").write_text("{}")
    (workdir / "metrics.jsonl").write_text("")
    summary = {"stop_reason": "max_wall_time", "epochs": 0, "steps": 160, "n_params": 7}
    (workdir / "summary.json").write_text(json.dumps(summary))
    data = tmp_path / "qm9.npz"
    data.write_bytes(b"")
    readme = tmp_path / "README.md"
    readme.write_text(f"# QM9\n{run.TABLE_START}\n{run.TABLE_END}\n")
    for name, value in {
        "RESULTS": tmp_path / "results.json",
        "README": readme,
        "PLOT": tmp_path / "curve.png",
        "MODELS": tmp_path / "models",
    }.items():
        monkeypatch.setattr(run, name, value)
    monkeypatch.setattr(
        run,
        "evaluate",
        lambda *a: {"energy_mae_mev": 50.0, "energy_rmse_mev": 70.0, "n_structures": 10831},
    )
    argv = ["--runs-dir", str(runs), "--data", str(data), "--evaluate-only", "--record"]
    assert run.main(argv) == 0
    entry = json.loads((tmp_path / "results.json").read_text())["U0"]
    assert entry["cpu_hours"] is None and entry["curve"] == [] and entry["steps"] == 160
    assert "| U0 | 50.0 | 70.0 | 5.7 | 8.8× | – | 160 | 0 | – |" in readme.read_text()
    assert (tmp_path / "models" / "U0_1layer" / "config.json").exists()
    assert not (tmp_path / "curve.png").exists()
