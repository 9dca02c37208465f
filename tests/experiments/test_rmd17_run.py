"""experiments/rmd17: every config loads, run.py resolves the data and renders the table.

No training here (the training loop has its own tests in tests/train).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import systems

REPO = Path(__file__).resolve().parents[2]
RUN_PY = REPO / "experiments" / "rmd17" / "run.py"


@pytest.fixture(scope="module")
def run():
    return systems.load_script("rmd17_run", RUN_PY)


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
    run.update_readme(json.loads(json.dumps({"ethanol": {"cpu": entry}})))
    text = readme.read_text()
    assert text.startswith("# intro") and text.rstrip().endswith("after") and "old" not in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(run.MOLECULES)  # header + one row per molecule
    assert "| ethanol | 1.2 | 5.7 |" in text
    assert sum("not yet run" in line for line in rows) == len(run.MOLECULES) - 1
