"""experiments/rmd17: every config loads, run.py resolves the data and renders the table.

No training here (the training loop has its own tests in tests/train).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.rmd17 import run as rmd17_run

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run():
    return rmd17_run


@pytest.mark.parametrize("variant", ["cpu", "mid", "full"])
def test_every_molecule_config_loads_with_the_papers_protocol(run, variant, tmp_path):
    for mol in run.MOLECULES:
        cfg = run.make_config(mol, variant, tmp_path, budget_minutes=2.5)
        assert cfg.n_train == 950 and cfg.n_val == 50 and cfg.batch_size == 5
        assert cfg.learning_rate == 0.002 and cfg.use_ema
        assert cfg.lr_scheduler_name == "ReduceLROnPlateau"
        assert cfg.lr_scheduler_patience == 50 and cfg.lr_scheduler_factor == 0.5
        assert cfg.early_stopping_patiences == {"validation_loss": 100}
        assert cfg.early_stopping_lower_bounds == {"LR": 1e-5}
        assert cfg.max_wall_time == 150.0
        assert cfg.dataset_file_name == str(tmp_path / f"rmd17_{mol}_train_01.npz")
        assert cfg.model["generation"] == "current"
        assert cfg.model["num_tensor_features"] == {"cpu": 16, "mid": 32, "full": 64}[variant]


def test_config_paths_resolve_from_the_repo_root(run, monkeypatch):
    from allegro_jax.train.config import load_config

    data = run.default_data_dir()
    if not (data / "rmd17_ethanol_train_01.npz").exists():
        pytest.skip("rMD17 data not available")
    monkeypatch.chdir(REPO)
    cfg = load_config(run.CONFIGS / "ethanol.yaml")
    assert (
        cfg.resolve_path(cfg.dataset_file_name) == (data / "rmd17_ethanol_train_01.npz").resolve()
    )


def test_table_marks_missing_molecules_and_keeps_the_readme_text(run, tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text(f"# intro\n\n{run.TABLE_START}\nold\n{run.TABLE_END}\n\nafter\n")
    monkeypatch.setattr(run, "README", readme)
    entry = {
        "energy_mae_mev": 1.234,
        "force_mae_mev_per_a": 5.678,
        "energy_rmse_mev": 2.0,
        "force_rmse_mev_per_a": 7.0,
        "epochs": 3,
        "s_per_epoch_median": 50.0,
        "wall_s": 180.0,
        "stop_reason": "max_wall_time",
        "budget": {"variant": "cpu", "minutes_per_invocation": 3.0, "invocations": 1},
        "hardware": "some CPU, 2 cores (CPU)",
        "n_params": 123,
    }
    few = dict(entry, force_mae_mev_per_a=30.0, budget=dict(entry["budget"]))
    run.update_readme(json.loads(json.dumps({"ethanol": {"cpu": entry, "cpu-n50": few}})))
    text = readme.read_text()
    assert text.startswith("# intro") and text.rstrip().endswith("after") and "old" not in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    # two tables (950 and 50 training frames): header + one row per molecule each
    assert len(rows) == 2 * (1 + len(run.MOLECULES))
    assert "| ethanol | 1.2 | 5.7 |" in text
    assert "| ethanol | 1.2 | 30.0 | 6.7 / 32.6 | 8.7 / 40.2 | yes |" in text  # below MACE
    assert sum("not yet run" in line for line in rows) == 2 * (len(run.MOLECULES) - 1)
    assert "2.7×" in text  # the force MAE over the paper's (5.678 / 2.1)


def test_a_fine_tuned_row_counts_the_steps_and_epochs_of_every_run(run):
    row = {"steps": 700, "epochs": 40, "stop_reason": "max_epochs"}
    assert run._totals(row) == (700, 40, "max_epochs")
    row["training"] = [
        {"steps": 4890, "epochs": 25, "stop_reason": "max_wall_time"},
        {"steps": 700, "epochs": 40, "stop_reason": "max_epochs"},
    ]
    assert run._totals(row) == (5590, 65, "max_epochs (2 runs)")


def test_the_low_data_setting_trains_on_50_frames_in_its_own_folder(run, tmp_path):
    assert run.setting_name("cpu", 950) == "cpu" and run.setting_name("cpu", 50) == "cpu-n50"
    assert run.split_setting("cpu-n50") == ("cpu", 50) and run.split_setting("mid") == ("mid", 950)
    cfg = run.make_config("ethanol", "cpu", tmp_path, 1.0, n_train=50)
    assert cfg.n_train == 50 and cfg.n_val == 50 and cfg.initial_model is None
    model = tmp_path / "models" / "cpu-n50" / "ethanol"
    cfg = run.make_config("ethanol", "cpu", tmp_path, 1.0, n_train=50, initial_model=model)
    assert cfg.initial_model == str(model)
    assert cfg.lr_scheduler_name == "ReduceLROnPlateau"


def test_a_cosine_fine_tune_is_a_run_that_finishes(run, tmp_path):
    model = tmp_path / "models" / "mid" / "benzene"
    cfg = run.make_config("benzene", "mid", tmp_path, 30.0, initial_model=model, cosine_epochs=80)
    assert (cfg.lr_scheduler_name, cfg.max_epochs) == ("cosine", 80)
    assert cfg.initial_model == str(model) and cfg.n_train == 950
    assert "max_epochs" in run.FINISHED  # its stop reason counts as finished


def test_the_learning_curve_is_thinned_and_keeps_the_last_epoch(run):
    rows = [
        {"cpu_time_s": 36.0 * i, "validation_force_mae_mev_per_a": 100.0 / i}
        for i in range(1, 1002)
    ]
    pts = run.curve(rows, points=200)
    assert len(pts) <= 201 and pts[0] == [0.01, 100.0] and pts[-1] == [10.01, 0.1]
    assert all(a[0] < b[0] for a, b in zip(pts, pts[1:], strict=False))
    assert run.curve(rows[:3]) == [[0.01, 100.0], [0.02, 50.0], [0.03, 33.333]]


def test_publish_copies_the_best_model_and_its_record(run, tmp_path, monkeypatch):
    monkeypatch.setattr(run, "MODELS", tmp_path / "models")
    workdir = tmp_path / "runs" / "mid" / "ethanol"
    with pytest.raises(SystemExit, match="no trained model to publish"):
        run.publish("ethanol", "mid", workdir)
    (workdir / "model").mkdir(parents=True)
    (workdir / "model" / "config.json").write_text("{}")
    (workdir / "model" / "params.msgpack").write_bytes(b"w")
    (workdir / "metrics.csv").write_text("epoch\n1\n")
    (workdir / "checkpoints").mkdir()  # not published
    data = run.REPO.parent / "shared" / "data" / "rmd17" / "rmd17_ethanol_test_01.npz"
    (workdir / "test_metrics.json").write_text(json.dumps({"data": str(data), "n": 1}))
    dest = run.publish("ethanol", "mid", workdir)
    assert dest == tmp_path / "models" / "mid" / "ethanol"
    assert sorted(p.name for p in dest.iterdir()) == [
        "config.json",
        "metrics.csv",
        "params.msgpack",
        "test_metrics.json",
    ]
    # recorded like every experiment path: relative to the repository, no machine prefix
    test = json.loads((dest / "test_metrics.json").read_text())
    assert test == {"data": "../shared/data/rmd17/rmd17_ethanol_test_01.npz", "n": 1}
    (workdir / "model" / "params.msgpack").write_bytes(b"w2")
    run.publish("ethanol", "mid", workdir)  # replaces
    assert (dest / "params.msgpack").read_bytes() == b"w2"
    assert not dest.with_name("ethanol.tmp").exists()


def test_evaluate_only_needs_a_run(run, tmp_path):
    with pytest.raises(SystemExit, match="no finished or stopped run to evaluate"):
        run.main(["ethanol", "--runs-dir", str(tmp_path), "--evaluate-only"])


def test_a_fine_tuned_curve_continues_the_recorded_one(run):
    old = {"curve": [[0.01, 90.0], [0.05, 40.0], [0.07, 30.0]]}
    entry = {"curve": [[0.07, 35.0], [0.1, 20.0]], "training": [{}, {}]}
    assert run.joined_curve(old, entry) == [[0.01, 90.0], [0.05, 40.0], [0.07, 35.0], [0.1, 20.0]]
    assert run.joined_curve(None, entry) == entry["curve"]
    assert run.joined_curve(old, {"curve": [[0.2, 5.0]]}) == [[0.2, 5.0]]  # a run from scratch
