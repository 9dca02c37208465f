"""experiments/qm9: the config is the paper's split and an energy-only 1-layer model; the
test molecules are exactly those the training loop's split leaves out; the table renders.

No training here (the training loop has its own tests in tests/train).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import systems

from allegro_jax.data.datasets import random_split

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run():
    return systems.load_script("qm9_run", REPO / "experiments" / "qm9" / "run.py")


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
