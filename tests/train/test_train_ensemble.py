"""Ensembles: K models trained in one vmapped program, exported, loaded and evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from systems import ASPIRIN, metrics_curve, write_aspirin_subset

from allegro_jax.config import AllegroConfig
from allegro_jax.data.datasets import read_dataset
from allegro_jax.io.model import load_model, read_ensemble_size
from allegro_jax.md.ensemble import make_ensemble_system
from allegro_jax.nn.ensemble import force_std, member, stack_members
from allegro_jax.nn.model import make_model
from allegro_jax.train.checkpoint import CheckpointStore
from allegro_jax.train.config import TrainConfig
from allegro_jax.train.loop import train_and_evaluate

REPO = Path(__file__).resolve().parents[2]
TEST_YAML = REPO / "allegro_jax" / "train" / "configs" / "test.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    if not ASPIRIN.is_file():
        pytest.skip("rMD17 aspirin is not available")
    return write_aspirin_subset(tmp_path_factory.mktemp("data") / "d.npz")


def _config(data: Path, **overrides) -> TrainConfig:
    cfg = yaml.safe_load(TEST_YAML.read_text())
    cfg.update({"dataset_file_name": str(data), "ensemble_size": 2, "max_epochs": 2} | overrides)
    return TrainConfig.from_dict(cfg)


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory, data) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("ens") / "run"
    summary = train_and_evaluate(_config(data, test_dataset_file_name=str(data)), run)
    return run, summary


def test_ensemble_trains_k_members_in_one_program(ensemble_run):
    run, summary = ensemble_run
    assert summary["ensemble_size"] == 2 and summary["stop_reason"] == "max_epochs"
    assert summary["compiled_train_shapes"] == 1 and summary["compiled_eval_shapes"] == 1
    rows = metrics_curve(run)
    assert len(rows) == 2
    for row in rows:
        # different seeds: different members; the ensemble has a spread
        assert row["member0_validation_loss"] != row["member1_validation_loss"]
        assert row["validation_force_std_mean_mev_per_a"] > 0
        assert row["train_loss"] == pytest.approx(
            (row["member0_train_loss"] + row["member1_train_loss"]) / 2
        )
    assert rows[-1]["member0_train_loss"] < rows[0]["member0_train_loss"]
    assert summary["best_validation_loss"] == [
        min(r[f"member{k}_validation_loss"] for r in rows) for k in range(2)
    ]
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["ensemble_size"] == 2 and test["force_std_mean_mev_per_a"] > 0
    assert -1 <= test["force_std_error_correlation"] <= 1


def test_load_model_gives_the_mean_and_the_spread(ensemble_run, data):
    run, _ = ensemble_run
    assert read_ensemble_size(run) == 2
    config, params, fn = load_model(run)
    structures = read_dataset(data)[:3]
    outs = fn(structures)
    # against the members run one by one with the single-model function
    _, apply_fn = make_model(config)
    from allegro_jax.data.padding import build_graph

    graph = build_graph(structures, config.type_names, config.r_max, dtype=np.float32)
    members = [jax.jit(apply_fn)(member(params, k), graph) for k in range(2)]
    start = 0
    for g, (s, out) in enumerate(zip(structures, outs, strict=True)):
        sl = slice(start, start + s.n_atoms)
        start += s.n_atoms
        f = np.stack([np.asarray(m["forces"][sl]) for m in members])  # [K, n_atoms, 3]
        e = np.array([float(m["energy"][g]) for m in members])
        np.testing.assert_allclose(out["energy"], e.mean(), rtol=1e-6)
        np.testing.assert_allclose(out["forces"], f.mean(0), rtol=1e-4, atol=1e-5)
        sigma = np.sqrt(np.mean(np.sum((f - f.mean(0)) ** 2, axis=-1), axis=0))
        np.testing.assert_allclose(out["forces_std"], sigma, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(out["energy_std"], e.std(), rtol=1e-4, atol=1e-6)
        assert out["member_forces"].shape == (2, s.n_atoms, 3)


def test_evaluate_cli_reports_the_ensemble_spread(ensemble_run, data, tmp_path, capsys):
    from allegro_jax.cli import main

    run, _ = ensemble_run
    out, pred = tmp_path / "eval.json", tmp_path / "pred.extxyz"
    args = ["evaluate", "--model", str(run), "--data", str(data), "--output", str(out)]
    assert main([*args, "--predictions", str(pred)]) == 0
    metrics = json.loads(out.read_text())
    assert "force_std_mean_mev_per_a" in capsys.readouterr().out
    # the errors are those of the mean prediction
    _, _, fn = load_model(run)
    structures = read_dataset(data)
    preds = fn(structures)
    f_err = np.concatenate(
        [np.abs(p["forces"] - s.forces).ravel() for p, s in zip(preds, structures, strict=True)]
    )
    np.testing.assert_allclose(metrics["force_mae_mev_per_a"], 1e3 * f_err.mean(), rtol=1e-4)
    sigma = np.concatenate([p["forces_std"] for p in preds])
    np.testing.assert_allclose(metrics["force_std_mean_mev_per_a"], 1e3 * sigma.mean(), rtol=1e-4)
    # --predictions: the mean prediction and the members' spread, frame by frame
    frames = ase.io.read(pred, ":")
    assert len(frames) == len(structures)
    for atoms, p in zip(frames, preds, strict=True):
        np.testing.assert_allclose(atoms.info["allegro_energy"], p["energy"], rtol=1e-6)
        np.testing.assert_allclose(
            atoms.info["allegro_energy_std"], p["energy_std"], rtol=1e-4, atol=1e-7
        )
        np.testing.assert_allclose(atoms.arrays["allegro_forces"], p["forces"], atol=1e-5)
        np.testing.assert_allclose(atoms.arrays["allegro_forces_std"], p["forces_std"], atol=1e-5)
    assert metrics["member0_force_mae_mev_per_a"] != metrics["member1_force_mae_mev_per_a"]


@pytest.mark.slow
def test_ensemble_resume_after_a_clock_stop_reproduces_the_curve(ensemble_run, data, tmp_path):
    reference, _ = ensemble_run
    run = tmp_path / "run"
    stopped = train_and_evaluate(_config(data, max_wall_time=1e-3), run)
    assert stopped["stop_reason"] == "max_wall_time" and stopped["steps"] == 1
    doc = json.loads((run / "model" / "config.json").read_text())
    assert doc["ensemble_size"] == 2 and all(m["partial_epoch"] for m in doc["metadata"]["members"])
    done = train_and_evaluate(_config(data), run)
    assert done["stop_reason"] == "max_epochs"
    assert metrics_curve(run) == metrics_curve(reference)
    with pytest.raises(ValueError, match="ensemble_size 2.*ensemble_size 3"):
        train_and_evaluate(_config(data, ensemble_size=3), run)
    store = CheckpointStore(run)  # the refused resume left the checkpoints alone
    assert store.steps() and not (run / "corrupt_checkpoints").exists()
    store.close()


@pytest.mark.slow
def test_ensemble_md_system_runs_on_the_mean_energy():
    config = AllegroConfig(
        type_names=("H", "O"),
        r_max=3.0,
        l_max=1,
        num_layers=1,
        num_scalar_features=8,
        num_tensor_features=4,
        per_type_energy_shifts=(-1.0, -3.0),
        model_dtype="float64",
    )
    init_fn, _ = make_model(config)
    params = stack_members([init_fn(jax.random.PRNGKey(k)) for k in range(3)])
    species = np.array([1, 0, 0])
    positions = jnp.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    system, std_fn = make_ensemble_system(config, params, species)
    nbr = system.neighbor_fn.allocate(positions)
    from allegro_jax.md.jax_md import make_energy_fn

    e_members = [
        make_energy_fn(config, member(params, k), system.displacement_fn, species=species)
        for k in range(3)
    ]
    energies = [float(e(positions, nbr)) for e in e_members]
    np.testing.assert_allclose(float(system.energy_fn(positions, nbr)), np.mean(energies))
    forces = jnp.stack([-jax.grad(e)(positions, nbr) for e in e_members])
    np.testing.assert_allclose(std_fn(positions, nbr), force_std(forces), rtol=1e-10)
    assert float(jnp.max(std_fn(positions, nbr))) > 0
    np.testing.assert_allclose(jax.jit(std_fn)(positions, nbr), force_std(forces), rtol=1e-10)
    # the dynamics see the mean force (members scanned), jitted or not
    mean_grad = -jnp.mean(forces, axis=0)
    for grad_fn in (jax.grad(system.energy_fn), jax.jit(jax.grad(system.energy_fn))):
        np.testing.assert_allclose(grad_fn(positions, nbr), mean_grad, rtol=1e-10, atol=1e-14)
    # with keywords (a strain, as the stress takes it) the members are vmapped: same value,
    # and its strain derivative is the mean of the members'
    eye = jnp.eye(3)
    np.testing.assert_allclose(
        float(system.energy_fn(positions, nbr, perturbation=eye)), np.mean(energies)
    )

    def strained(fn):
        return jax.grad(lambda eps: fn(positions, nbr, perturbation=eye + eps))(jnp.zeros((3, 3)))

    np.testing.assert_allclose(
        strained(system.energy_fn),
        np.mean([strained(e) for e in e_members], axis=0),
        rtol=1e-10,
        atol=1e-14,
    )


def test_vmap_and_map_strategies_take_the_same_step(data):
    from allegro_jax.train.data import SplitData
    from allegro_jax.train.ensemble import make_ensemble_train_step
    from allegro_jax.train.optimizer import make_optimizer
    from allegro_jax.train.state import create_train_state
    from allegro_jax.train.step import make_train_step

    config = AllegroConfig(
        type_names=("H", "C", "O"),
        r_max=3.0,
        l_max=1,
        num_layers=1,
        num_scalar_features=8,
        num_tensor_features=4,
        scalar_embed_mlp_hidden_layers_width=8,
        allegro_mlp_hidden_layers_width=8,
        readout_mlp_hidden_layers_width=8,
    )
    init_fn, apply_fn = make_model(config)
    tx = make_optimizer(0.01)
    states = stack_members(
        [
            create_train_state(init_fn(jax.random.PRNGKey(k)), tx, 0.01, jax.random.PRNGKey(k))
            for k in range(2)
        ]
    )
    split = SplitData(read_dataset(data)[:3], config.type_names, config.r_max, 3)
    batch = next(split.batches())
    step = make_train_step(apply_fn, tx, {"total_energy": 1.0, "forces": 1.0})
    a, ma = make_ensemble_train_step(step, "vmap")(states, batch)
    b, mb = make_ensemble_train_step(step, "map")(states, batch)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-7), a, b)
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
    assert ma["loss"].shape == (2,) and ma["loss"][0] != ma["loss"][1]
    # the default picks map on a CPU backend: the very same program as "map"
    assert jax.default_backend() == "cpu"
    c, _ = make_ensemble_train_step(step, "auto")(states, batch)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), b, c)
    with pytest.raises(ValueError, match="ensemble_strategy"):
        _config(data, ensemble_strategy="pmap")


@pytest.mark.slow
def test_an_ensemble_grows_member_by_member(ensemble_run, data, tmp_path, capsys):
    """``initial_model_grow`` on an ensemble: member k of the l_max 2 run starts as member k
    of the trained l_max 1 ensemble (same energies and forces, member by member)."""
    run, _ = ensemble_run
    frozen = {"learning_rate": 1e-12, "early_stopping_lower_bounds": {"LR": 0.0}, "max_epochs": 1}
    grown_run = tmp_path / "grown"
    capsys.readouterr()
    train_and_evaluate(
        _config(data, initial_model=str(run), l_max=2, initial_model_grow=True, **frozen),
        grown_run,
    )
    assert "grown from l_max 1 to 2" in capsys.readouterr().out
    config, _, fn = load_model(grown_run)
    assert config.l_max == 2 and read_ensemble_size(grown_run) == 2
    structures = read_dataset(data)[:3]
    _, _, fn_trained = load_model(run)
    for new, old in zip(fn(structures), fn_trained(structures), strict=True):
        scale = np.max(np.abs(old["member_forces"]))
        np.testing.assert_allclose(new["member_forces"], old["member_forces"], atol=1e-5 * scale)
        np.testing.assert_allclose(new["energy"], old["energy"], rtol=1e-6)
        np.testing.assert_allclose(new["energy_std"], old["energy_std"], rtol=1e-3, atol=1e-6)
