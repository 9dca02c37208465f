"""``initial_model``: a new run starts from a trained model's weights and statistics."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from flax import serialization
from systems import ASPIRIN, write_aspirin_subset

from allegro_jax.train.config import TrainConfig
from allegro_jax.train.loop import train_and_evaluate

REPO = Path(__file__).resolve().parents[2]
TEST_YAML = REPO / "allegro_jax" / "train" / "configs" / "test.yaml"


def _config(data: Path, **overrides) -> TrainConfig:
    cfg = yaml.safe_load(TEST_YAML.read_text())
    cfg.update(dataset_file_name=str(data), **overrides)
    return TrainConfig.from_dict(cfg)


def _params(model_dir: Path):
    return serialization.msgpack_restore((model_dir / "params.msgpack").read_bytes())


def _max_diff(a, b) -> float:
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    if not ASPIRIN.is_file():
        pytest.skip("rMD17 aspirin is not available")
    tmp = tmp_path_factory.mktemp("initial")
    data = write_aspirin_subset(tmp / "a.npz", 0, 20)
    train_and_evaluate(_config(data, max_epochs=3), tmp / "a")
    other = write_aspirin_subset(tmp / "b.npz", 20, 20)  # other frames: other statistics
    return tmp, other


@pytest.mark.slow
def test_a_new_run_starts_from_the_initial_model(trained, capsys):
    tmp, other = trained
    frozen = {"learning_rate": 1e-12, "early_stopping_lower_bounds": {"LR": 0.0}, "max_epochs": 1}
    capsys.readouterr()
    train_and_evaluate(_config(other, initial_model=str(tmp / "a" / "model"), **frozen), tmp / "b")
    assert "starting from the weights of" in capsys.readouterr().out
    # the weights and the statistics are the initial model's, not fresh ones
    assert _max_diff(_params(tmp / "b" / "model"), _params(tmp / "a" / "model")) < 1e-6
    theirs = json.loads((tmp / "a" / "model_config.json").read_text())
    ours = json.loads((tmp / "b" / "model_config.json").read_text())
    for key in ("per_type_energy_shifts", "avg_num_neighbors", "type_names"):
        assert ours[key] == theirs[key]
    # control: the same run without initial_model starts elsewhere
    train_and_evaluate(_config(other, **frozen), tmp / "c")
    assert _max_diff(_params(tmp / "c" / "model"), _params(tmp / "a" / "model")) > 1e-3
    c_config = json.loads((tmp / "c" / "model_config.json").read_text())
    assert c_config["per_type_energy_shifts"] != theirs["per_type_energy_shifts"]

    # a re-run resumes from its own checkpoint; the initial model is not loaded again
    capsys.readouterr()
    train_and_evaluate(
        _config(other, initial_model=str(tmp / "a" / "model"), **(frozen | {"max_epochs": 2})),
        tmp / "b",
    )
    out = capsys.readouterr().out
    assert "starting from the weights of" not in out
    rows = (tmp / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]


def test_an_initial_model_of_another_architecture_is_refused(trained):
    tmp, other = trained
    config = _config(other, initial_model=str(tmp / "a"), num_scalar_features=16)
    with pytest.raises(ValueError, match="another architecture.*num_scalar_features: 16 here, 8"):
        train_and_evaluate(config, tmp / "d")


def test_a_fine_tuned_run_lists_the_runs_behind_its_initial_model(trained):
    tmp, other = trained
    one = {"max_epochs": 1}
    a = json.loads((tmp / "a" / "summary.json").read_text())
    assert "previous_stages" not in a  # a run from scratch has no earlier stages
    train_and_evaluate(_config(other, initial_model=str(tmp / "a" / "model"), **one), tmp / "e")
    e = json.loads((tmp / "e" / "summary.json").read_text())
    (stage,) = e["previous_stages"]
    assert (stage["epochs"], stage["steps"]) == (a["epochs"], a["steps"])
    assert stage["train_cpu_time_s"] == a["train_cpu_time_s"]
    assert stage["device_kind"] == a["device_kind"]
    assert stage["best_validation_force_mae_mev_per_a"] == pytest.approx(
        a["best_validation"]["validation_force_mae_mev_per_a"]
    )
    # a second fine-tune from that run (its run directory) keeps both, oldest first
    train_and_evaluate(_config(other, initial_model=str(tmp / "e"), **one), tmp / "f")
    f = json.loads((tmp / "f" / "summary.json").read_text())
    assert [s["epochs"] for s in f["previous_stages"]] == [a["epochs"], e["epochs"]]
    # the stages are read once, at the start: a resume keeps them even if the initial
    # model has since been replaced (e.g. published over by this very run)
    (tmp / "e" / "summary.json").write_text(json.dumps({"epochs": 99}))
    train_and_evaluate(_config(other, initial_model=str(tmp / "e"), max_epochs=2), tmp / "f")
    f2 = json.loads((tmp / "f" / "summary.json").read_text())
    assert f2["epochs"] == 2
    assert f2["previous_stages"] == f["previous_stages"]


@pytest.mark.slow
def test_a_grown_initial_model_starts_from_its_errors(trained, capsys):
    """``initial_model_grow``: a run of l_max 2 from the l_max 1 model validates, before it
    has learnt anything, exactly as a run of the l_max 1 model itself."""
    tmp, other = trained
    frozen = {"learning_rate": 1e-12, "early_stopping_lower_bounds": {"LR": 0.0}, "max_epochs": 1}
    initial = str(tmp / "a" / "model")
    with pytest.raises(ValueError, match="l_max: 2 here, 1 there.*initial_model_grow: true"):
        train_and_evaluate(_config(other, initial_model=initial, l_max=2, **frozen), tmp / "g0")
    capsys.readouterr()
    grown = _config(other, initial_model=initial, l_max=2, initial_model_grow=True, **frozen)
    train_and_evaluate(grown, tmp / "g")
    assert "grown from l_max 1 to 2" in capsys.readouterr().out
    assert json.loads((tmp / "g" / "model_config.json").read_text())["l_max"] == 2
    train_and_evaluate(_config(other, initial_model=initial, **frozen), tmp / "h")

    def first_row(run):
        return json.loads((tmp / run / "metrics.jsonl").read_text().splitlines()[0])

    g, h = first_row("g"), first_row("h")
    for key in ("validation_energy_mae_mev", "validation_force_mae_mev_per_a"):
        assert key in g
        assert g[key] == pytest.approx(h[key], rel=1e-4)
    # control: the same l_max 2 run from random weights validates elsewhere
    train_and_evaluate(_config(other, l_max=2, **frozen), tmp / "k")
    k = first_row("k")["validation_force_mae_mev_per_a"]
    assert abs(k - h["validation_force_mae_mev_per_a"]) > 0.05 * k
    # other architecture changes are still refused, naming the key
    with pytest.raises(ValueError, match="cannot be grown: l_max 0 is below the trained"):
        train_and_evaluate(
            _config(other, initial_model=initial, l_max=0, initial_model_grow=True, **frozen),
            tmp / "g1",
        )
    with pytest.raises(ValueError, match="another architecture.*num_tensor_features: 8 here"):
        train_and_evaluate(
            _config(
                other,
                initial_model=initial,
                l_max=2,
                num_tensor_features=8,
                initial_model_grow=True,
                **frozen,
            ),
            tmp / "g2",
        )
