"""``metrics_key``: the validation metric that picks ``model/``, drives the plateau
scheduler and counts for early stopping (nequip's key)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from test_train import TEST_YAML, _write_data

from allegro_jax.train import loop
from allegro_jax.train.config import TrainConfig


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return _write_data(tmp_path_factory.mktemp("data") / "tiny", n_frames=8)


def _config(data_file, **overrides) -> TrainConfig:
    cfg = yaml.safe_load(TEST_YAML.read_text())
    cfg.update({"dataset_file_name": str(data_file), "n_train": 6, "n_val": 2, "max_epochs": 4})
    cfg.update(overrides)
    cfg.pop("early_stopping_patiences", None)
    return TrainConfig.from_dict(cfg)


def _scripted_validation(monkeypatch):
    """Validation that reports a falling loss but a force MAE best at epoch 2."""
    real = loop.validate
    script = iter(
        [(3.0, 50.0), (2.0, 10.0), (1.0, 30.0), (0.5, 40.0)]  # (loss, force MAE) per epoch
    )

    def validate(run):
        members, ens = real(run)
        loss, f_mae = next(script)
        return [m | {"loss": loss, "force_mae_mev_per_a": f_mae} for m in members], ens

    monkeypatch.setattr(loop, "validate", validate)


@pytest.mark.parametrize(
    ("key", "best_epoch"), [("validation_loss", 4), ("validation_force_mae_mev_per_a", 2)]
)
def test_the_kept_model_is_the_best_by_metrics_key(
    tmp_path, data_file, monkeypatch, key, best_epoch
):
    _scripted_validation(monkeypatch)
    summary = loop.train_and_evaluate(_config(data_file, metrics_key=key), tmp_path / "run")
    assert summary["epochs"] == 4 and summary["metrics_key"] == key
    assert summary["best_epoch"] == best_epoch
    meta = json.loads((tmp_path / "run" / "model" / "config.json").read_text())["metadata"]
    assert meta["epoch"] == best_epoch
    # a resumed run compares new epochs with the kept model's value of the same metric
    losses, _ = loop.exported_losses(tmp_path / "run" / "model", 1, key)
    expected = {"validation_loss": 0.5, "validation_force_mae_mev_per_a": 10.0}[key]
    np.testing.assert_allclose(losses, [expected])


def test_metrics_key_errors(tmp_path, data_file):
    with pytest.raises(ValueError, match="metrics_key must be one of"):
        _config(data_file, metrics_key="validation_force_mea")
    # a stress metric for data without stress: said after the first validation, by name
    config = _config(data_file, metrics_key="validation_stress_mae_mev_per_a3", max_epochs=1)
    with pytest.raises(ValueError, match="validation_stress_mae_mev_per_a3.*gives only"):
        loop.train_and_evaluate(config, tmp_path / "run")
