"""Training: loss masks, EMA, plateau, the loop end to end, checkpoints, resume, CLI, export."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from systems import ASPIRIN, metrics_curve, write_aspirin_subset
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.record_writer import masked_crc32c

from allegro_jax.config import AllegroConfig
from allegro_jax.data.graph import Structure
from allegro_jax.data.padding import Budget, build_graph
from allegro_jax.io.model import load_model, save_model
from allegro_jax.nn.model import make_model
from allegro_jax.train.checkpoint import CheckpointError, CheckpointStore
from allegro_jax.train.config import TrainConfig, load_config
from allegro_jax.train.loop import NonFiniteLossError, train_and_evaluate
from allegro_jax.train.loss import (
    Batch,
    error_sums,
    loss_from_sums,
    make_labels,
    summarize,
    weighted_loss,
)
from allegro_jax.train.optimizer import (
    ema_decay_at,
    ema_update,
    plateau_init,
    plateau_update,
)

REPO = Path(__file__).resolve().parents[2]
TEST_YAML = REPO / "allegro_jax" / "train" / "configs" / "test.yaml"


# ---- fixtures ------------------------------------------------------------------------------


def _write_data(path: Path, n_frames: int = 20) -> Path:
    """A small training file: 20 aspirin frames, or generated EMT molecules without data."""
    if ASPIRIN.is_file():
        return write_aspirin_subset(path.with_suffix(".npz"), n=n_frames)
    import ase.build
    import ase.io
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(0)
    frames = []
    for _ in range(n_frames):
        atoms = ase.build.molecule("CH3CH2OH")
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = EMT()
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
        frames.append(atoms)
    ase.io.write(path.with_suffix(".extxyz"), frames)
    return path.with_suffix(".extxyz")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return _write_data(tmp_path_factory.mktemp("data") / "tiny")


def _tiny_yaml(directory: Path, data_file: Path, **overrides) -> Path:
    cfg = yaml.safe_load(TEST_YAML.read_text())
    cfg.update(dataset_file_name=str(data_file), **overrides)
    path = directory / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run_cli(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "allegro_jax.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_file) -> Path:
    """An uninterrupted CLI run of the tiny config (a separate process, 32-bit JAX)."""
    directory = tmp_path_factory.mktemp("ref")
    config = _tiny_yaml(directory, data_file)
    proc = _run_cli(["train", str(config), "--workdir", str(directory / "run")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return directory / "run"


# ---- loss ----------------------------------------------------------------------------------


def _two_molecules():
    s1 = Structure(
        numbers=[1, 8],
        positions=[[0, 0, 0], [0.9, 0, 0]],
        energy=-1.0,
        forces=[[1.0, 0, 0], [-1.0, 0, 0]],
    )
    s2 = Structure(
        numbers=[1, 1, 8], positions=[[0, 0, 0], [0.8, 0, 0], [0, 0.9, 0]], energy=-2.0, forces=None
    )
    return [s1, s2]


def test_loss_on_hand_made_batch_respects_masks():
    structures = _two_molecules()
    budget = Budget(n_nodes=8, n_edges=16, n_graphs=4)
    graph = build_graph(structures, ("H", "O"), 2.0, budget)
    labels = make_labels(structures, budget)
    assert labels.forces_mask.tolist() == [True, True] + [False] * 6
    assert labels.energy_mask.tolist() == [True, True, False, False]
    pred = {
        "energy": jnp.array([-0.5, -2.6, 123.0, 456.0]),  # padding graphs: garbage
        "forces": jnp.array([[1.5, 0, 0], [-1.0, 0.3, 0]] + [[9.0, 9, 9]] * 6),
    }
    sums = error_sums(pred, Batch(graph, labels))
    e_term = ((0.5 / 2) ** 2 + (0.6 / 3) ** 2) / 2
    f_term = (0.5**2 + 0.3**2) / 6  # only the labelled molecule's 6 components
    loss = loss_from_sums(sums, {"total_energy": 2.0, "forces": 3.0})
    np.testing.assert_allclose(float(loss), 2.0 * e_term + 3.0 * f_term, rtol=1e-6)
    metrics = summarize(sums, {"total_energy": 1.0, "forces": 1.0})
    np.testing.assert_allclose(metrics["energy_mae_mev"], 1e3 * (0.5 + 0.6) / 2, rtol=1e-6)
    np.testing.assert_allclose(metrics["force_mae_mev_per_a"], 1e3 * 0.8 / 6, rtol=1e-6)
    np.testing.assert_allclose(metrics["force_rmse_mev_per_a"], 1e3 * np.sqrt(f_term), rtol=1e-6)


def test_stress_loss_only_on_labelled_graphs():
    s1, s2 = _two_molecules()
    s1.stress = np.eye(3)
    budget = Budget(n_nodes=8, n_edges=16, n_graphs=3)
    graph = build_graph([s1, s2], ("H", "O"), 2.0, budget)
    labels = make_labels([s1, s2], budget)
    pred = {
        "energy": jnp.array([-1.0, -2.0, 0.0]),
        "stress": jnp.stack([2 * jnp.eye(3), jnp.full((3, 3), jnp.nan), jnp.full((3, 3), jnp.nan)]),
    }
    sums = error_sums(pred, Batch(graph, labels))
    loss = loss_from_sums(sums, {"total_energy": 1.0, "stress": 1.0})
    np.testing.assert_allclose(float(loss), 3.0 / 9.0, rtol=1e-6)


def test_structure_weights_scale_each_structures_loss_terms_but_not_the_metrics():
    s1, s2 = _two_molecules()
    s1.stress, s2.forces = np.eye(3), np.zeros((3, 3))
    s2.stress = np.zeros((3, 3))
    budget = Budget(n_nodes=8, n_edges=16, n_graphs=3)
    graph = build_graph([s1, s2], ("H", "O"), 2.0, budget)
    pred = {
        "energy": jnp.array([-0.5, -2.6, 7.0]),
        "forces": jnp.array(
            [[1.5, 0, 0], [-1.0, 0.3, 0], [0, 0, 0.2], [0, 0, 0], [0, 0, 0]] + [[9.0, 9, 9]] * 3
        ),  # fmt: skip
        "stress": jnp.stack([2 * jnp.eye(3), jnp.full((3, 3), 0.1), jnp.zeros((3, 3))]),
    }
    coeffs = {"total_energy": 2.0, "forces": 3.0, "stress": 5.0}
    plain = Batch(graph, make_labels([s1, s2], budget))
    ones = Batch(graph, make_labels([s1, s2], budget, weights=[1.0, 1.0]))
    weighted = Batch(graph, make_labels([s1, s2], budget, weights=[4.0, 0.5]))
    # the terms of each molecule, over the batch's counts (2 energies, 15 force components,
    # 18 stress components)
    e = np.array([(0.5 / 2) ** 2, (0.6 / 3) ** 2]) / 2
    f = np.array([0.5**2 + 0.3**2, 0.2**2]) / 15
    st = np.array([3.0, 9 * 0.01]) / 18
    terms = 2.0 * e + 3.0 * f + 5.0 * st
    loss, sums = weighted_loss(pred, plain, coeffs)
    np.testing.assert_allclose(float(loss), terms.sum(), rtol=1e-6)
    assert float(weighted_loss(pred, ones, coeffs)[0]) == float(loss)  # weights 1: the same
    w_loss, w_sums = weighted_loss(pred, weighted, coeffs)
    np.testing.assert_allclose(float(w_loss), 4.0 * terms[0] + 0.5 * terms[1], rtol=1e-6)
    for a, b in zip(w_sums, sums, strict=True):  # the metrics' sums are unweighted
        assert float(a) == float(b)


# ---- EMA and plateau -----------------------------------------------------------------------


def test_ema_warmup_formula():
    for n in (1, 2, 5, 50, 1000):
        expected = min(0.99, (1 + n) / (10 + n))
        np.testing.assert_allclose(float(ema_decay_at(n, 0.99)), expected, rtol=1e-6)
    assert float(ema_decay_at(7, 0.99, use_num_updates=False)) == pytest.approx(0.99)
    ema = ema_update({"w": jnp.array([1.0])}, {"w": jnp.array([3.0])}, ema_decay_at(1, 0.99))
    np.testing.assert_allclose(ema["w"], [2 / 11 * 1 + 9 / 11 * 3], rtol=1e-6)


def test_plateau_scheduler_matches_torch_semantics():
    values = [1.0, 0.9, 0.9, 0.9, 0.9, 0.95, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    state = plateau_init(0.1)
    lrs = []
    for v in values:
        state = plateau_update(state, v, patience=2, factor=0.5)
        lrs.append(float(state.lr))
    # hand-derived: bad epochs after 0.9 -> reduce on the 3rd bad epoch (index 4), ...
    expected = [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.0125]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)
    try:
        import torch
    except ImportError:
        return
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=2, factor=0.5)
    torch_lrs = []
    for v in values:
        sched.step(v)
        torch_lrs.append(opt.param_groups[0]["lr"])
    np.testing.assert_allclose(lrs, torch_lrs, rtol=1e-6)


# ---- config --------------------------------------------------------------------------------


def test_config_errors(tmp_path, data_file):
    cfg = yaml.safe_load(TEST_YAML.read_text())
    with pytest.raises(ValueError, match="unknown config key 'lr_typo'; valid .*learning_rate"):
        TrainConfig.from_dict({**cfg, "lr_typo": 1})
    with pytest.raises(ValueError, match="loss_coeffs"):
        TrainConfig.from_dict({**cfg, "loss_coeffs": {"energy": 1.0}})
    config = TrainConfig.from_dict({**cfg, "dataset_file_name": str(tmp_path / "nope.npz")})
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        train_and_evaluate(config, tmp_path / "run")
    loaded = load_config(_tiny_yaml(tmp_path, data_file))
    assert loaded.model["num_tensor_features"] == 4 and loaded.batch_size == 4
    assert TrainConfig.from_dict(loaded.to_dict()).to_dict() == loaded.to_dict()


def test_config_type_weights(tmp_path, data_file, capsys):
    """Weights of 0 on every config_type leave the model where it started (two learning
    rates give the same model); a type no training frame has, or a bad weight, is a
    one-line error."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    from allegro_jax.cli import main
    from allegro_jax.data.datasets import read_dataset

    frames = []
    for i, st in enumerate(read_dataset(data_file)):
        atoms = st.to_ase()
        atoms.calc = SinglePointCalculator(atoms, energy=st.energy, forces=st.forces)
        atoms.info["config_type"] = "hot" if i % 2 else "cold"
        frames.append(atoms)
    typed = tmp_path / "typed.extxyz"
    ase.io.write(typed, frames)
    cfg = yaml.safe_load(TEST_YAML.read_text()) | {
        "dataset_file_name": str(typed),
        "max_epochs": 1,
        "progress_bar": False,
        "tensorboard": False,
    }
    with pytest.raises(ValueError, match="config_type_weights.hot must be a number >= 0"):
        TrainConfig.from_dict({**cfg, "config_type_weights": {"hot": -1}})
    with pytest.raises(ValueError, match="must be a mapping"):
        TrainConfig.from_dict({**cfg, "config_type_weights": [1.0]})
    params = {}
    for weights, lr in (({"hot": 0, "cold": 0}, 1e-2), ({"hot": 0, "cold": 0}, 1e-3),
                        ({"hot": 1, "cold": 0}, 1e-2), ({"hot": 1, "cold": 0}, 1e-3)):  # fmt: skip
        config = TrainConfig.from_dict(cfg | {"config_type_weights": weights, "learning_rate": lr})
        run = tmp_path / f"run_{weights['hot']}_{lr}"
        train_and_evaluate(config, run)
        params[weights["hot"], lr] = jax.tree.leaves(load_model(run)[1])
    same = [np.array_equal(a, b) for a, b in zip(params[0, 1e-2], params[0, 1e-3], strict=True)]
    moved = [np.array_equal(a, b) for a, b in zip(params[1, 1e-2], params[1, 1e-3], strict=True)]
    assert all(same) and not all(moved)
    config_file = tmp_path / "typo.yaml"
    config_file.write_text(yaml.safe_dump(cfg | {"config_type_weights": {"Surface": 10}}))
    capsys.readouterr()
    assert main(["train", str(config_file), "--workdir", str(tmp_path / "typo")]) != 0
    err = capsys.readouterr().err
    assert "'Surface' not among the config_type values" in err and "(cold, hot)" in err
    assert str(typed) in err and "Traceback" not in err


def read_scalars(path: Path) -> list[tuple[int, str, float]]:
    """``(step, tag, value)`` of a TensorBoard event file, checking both CRCs of every
    record (TFRecord framing: length, masked CRC-32C of it, ``Event`` proto, masked CRC)."""
    data, out, pos = path.read_bytes(), [], 0
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8 : pos + 12])[0] == masked_crc32c(header)
        body = data[pos + 12 : pos + 12 + length]
        assert struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])[0] == (
            masked_crc32c(body)
        )
        pos += 16 + length
        event = Event.FromString(body)
        out += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    return out


def test_event_file_reader_checks_crcs(tmp_path):
    from tensorboardX import SummaryWriter

    with SummaryWriter(str(tmp_path)) as writer:
        writer.add_scalar("a/b", 1.5, 3)
    (path,) = tmp_path.glob("events.out.tfevents.*")
    assert read_scalars(path) == [(3, "a/b", 1.5)]
    data = bytearray(path.read_bytes())
    data[-6] ^= 1  # inside the last record's Event
    path.write_bytes(bytes(data))
    with pytest.raises(AssertionError):
        read_scalars(path)


# ---- the loop ------------------------------------------------------------------------------


def test_tiny_run_decreases_loss_and_compiles_once(reference_run):
    rows = metrics_curve(reference_run)
    assert len(rows) == 6
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["validation_loss"] < rows[0]["validation_loss"]
    summary = json.loads((reference_run / "summary.json").read_text())
    assert summary["compiled_train_shapes"] == 1 and summary["compiled_eval_shapes"] == 1
    assert summary["stop_reason"] == "max_epochs"
    csv_header = (reference_run / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("validation_energy_mae_mev", "validation_force_rmse_mev_per_a", "lr"):
        assert key in csv_header
    (events,) = (reference_run / "tensorboard").glob("events.out.tfevents.*")
    scalars = read_scalars(events)
    val = [(step, v) for step, tag, v in scalars if tag == "validation/loss"]
    assert [step for step, _ in val] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([v for _, v in val], [r["validation_loss"] for r in rows], rtol=1e-6)


@pytest.mark.slow
def test_wall_clock_limit_stops_mid_epoch_with_a_checkpoint(tmp_path, data_file):
    cfg = yaml.safe_load(_tiny_yaml(tmp_path, data_file, max_wall_time=1e-3).read_text())
    summary = train_and_evaluate(TrainConfig.from_dict(cfg), tmp_path / "run")
    assert summary["stop_reason"] == "max_wall_time"
    assert summary["steps"] == 1 and summary["epochs"] == 0
    assert CheckpointStore(tmp_path / "run").steps() == [1]


@pytest.mark.slow
def test_sigkill_and_resume_reproduces_the_loss_curve(tmp_path, data_file, reference_run):
    config = _tiny_yaml(tmp_path, data_file)
    run = tmp_path / "run"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "allegro_jax.cli", "train", str(config), "--workdir", str(run)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if list((run / "checkpoints").glob("*/allegro_manifest.json")):
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (run / "summary.json").exists()
    killed_at = len(metrics_curve(run)) if (run / "metrics.jsonl").exists() else 0
    assert killed_at < 6
    resumed = _run_cli(["train", str(config), "--workdir", str(run)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoint step" in resumed.stdout
    assert metrics_curve(run) == metrics_curve(reference_run)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # CPU seconds accumulate across the kill (a reset would fall); rows are rounded to 0.1 s,
    # and an epoch of this tiny model can take less than that
    cpu = [r["cpu_time_s"] for r in rows]
    assert cpu[0] > 0 and all(b >= a for a, b in zip(cpu, cpu[1:], strict=False))
    assert cpu[-1] > cpu[0]


def test_evaluate_cli_and_load_model(reference_run, data_file, tmp_path):
    from allegro_jax.cli import main

    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(reference_run),
                "--data",
                str(data_file),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads(out.read_text())
    assert metrics["n_structures"] == 20
    for key in ("energy_mae_mev", "energy_rmse_mev", "force_mae_mev_per_a", "force_rmse_mev_per_a"):
        assert np.isfinite(metrics[key]) and metrics[key] > 0
    config, params, fn = load_model(reference_run)
    assert config.per_type_energy_scales is not None and config.avg_num_neighbors > 1
    from allegro_jax.data.datasets import read_dataset

    structures = read_dataset(data_file)
    single = fn(structures[0])
    batch = fn(structures)
    assert single["forces"].shape == (structures[0].n_atoms, 3)
    np.testing.assert_allclose(single["energy"], batch[0]["energy"], rtol=1e-5)
    # load_model's predictions give the errors `allegro-jax evaluate` reported for the file
    mae = np.mean([abs(r["energy"] - s.energy) for r, s in zip(batch, structures, strict=True)])
    np.testing.assert_allclose(1000 * mae, metrics["energy_mae_mev"], rtol=1e-4)
    f_err = np.concatenate([r["forces"] - s.forces for r, s in zip(batch, structures, strict=True)])
    np.testing.assert_allclose(
        1000 * np.mean(np.abs(f_err)), metrics["force_mae_mev_per_a"], rtol=1e-4
    )


def test_evaluate_groups_by_a_frame_key(reference_run, data_file, tmp_path, capsys):
    """``--group-by config_type``: each group's errors are those of the group's frames
    evaluated on their own; the counts add up; a key no frame has is a one-line error."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    from allegro_jax.cli import main
    from allegro_jax.data.datasets import read_dataset
    from allegro_jax.train.evaluate import evaluate_model

    frames = []
    for i, s in enumerate(read_dataset(data_file)[:12]):
        atoms = s.to_ase()
        atoms.calc = SinglePointCalculator(atoms, energy=s.energy, forces=s.forces)
        if i % 4:  # frames 0, 4, 8 have no config_type
            atoms.info["config_type"] = "hot" if i % 2 else "cold"
        frames.append(atoms)
    whole = tmp_path / "typed.extxyz"
    ase.io.write(whole, frames)
    out = tmp_path / "groups.json"
    args = ["evaluate", "--model", str(reference_run), "--data", str(whole), "--output", str(out)]
    assert main([*args, "--group-by", "config_type"]) == 0
    printed, stderr = capsys.readouterr()
    assert "again at call" not in printed + stderr  # the groups reuse the file's program
    metrics = json.loads(out.read_text())
    groups = metrics["groups"]
    assert metrics["group_by"] == "config_type" and list(groups) == ["(none)", "hot", "cold"]
    assert [g["n_structures"] for g in groups.values()] == [3, 6, 3]
    assert "config_type hot: 6 structures" in printed
    for name, idx in (("(none)", [0, 4, 8]), ("hot", [1, 3, 5, 7, 9, 11]), ("cold", [2, 6, 10])):
        part = tmp_path / f"part_{idx[0]}.extxyz"
        ase.io.write(part, [frames[i] for i in idx])
        alone = evaluate_model(reference_run, part, quiet=True)
        for key in ("energy_mae_mev", "energy_per_atom_rmse_mev", "force_mae_mev_per_a"):
            np.testing.assert_allclose(groups[name][key], alone[key], rtol=1e-5)
    # the groups' force errors, weighted by their atoms, give the whole file's
    n_atoms = np.array([g["n_atoms"] for g in groups.values()])
    f_mae = np.array([g["force_mae_mev_per_a"] for g in groups.values()])
    np.testing.assert_allclose(
        (n_atoms * f_mae).sum() / n_atoms.sum(), metrics["force_mae_mev_per_a"], rtol=1e-5
    )
    assert main([*args, "--group-by", "temperature"]) == 2
    err = capsys.readouterr().err
    assert "no frame has the key 'temperature' to group by" in err and "config_type" in err
    assert "Traceback" not in err


def test_evaluate_writes_each_frames_predictions(reference_run, data_file, tmp_path, capsys):
    """``--predictions``: every frame in file order with its labels, its info and the
    model's energy and forces (those of ``load_model``'s predictor, a separate path); the
    per-frame errors average to the file's; a missing folder is a one-line error."""
    import ase.io

    from allegro_jax.cli import main
    from allegro_jax.data.datasets import read_dataset

    out, pred = tmp_path / "eval.json", tmp_path / "pred.extxyz"
    args = ["evaluate", "--model", str(reference_run), "--data", str(data_file)]
    assert main([*args, "--output", str(out), "--predictions", str(pred), "--batch-size", "3"]) == 0
    assert f"written to {pred}" in capsys.readouterr().out
    metrics = json.loads(out.read_text())
    assert metrics["predictions"] == str(pred)
    assert not pred.with_name(pred.name + ".partial").exists()
    frames = ase.io.read(pred, ":")
    structures = read_dataset(data_file)
    assert len(frames) == len(structures) == 20
    _, _, fn = load_model(reference_run)
    expected = fn(structures[::-1])  # another batch, in another order
    for atoms, s, p in zip(frames, structures, expected[::-1], strict=True):
        assert atoms.info["index"] == s.info["index"]
        np.testing.assert_allclose(atoms.positions, s.positions, atol=1e-6)
        np.testing.assert_allclose(atoms.get_potential_energy(), s.energy, rtol=1e-9)
        np.testing.assert_allclose(atoms.get_forces(), s.forces, atol=1e-7)
        np.testing.assert_allclose(atoms.info["allegro_energy"], p["energy"], rtol=1e-6)
        np.testing.assert_allclose(atoms.arrays["allegro_forces"], p["forces"], atol=1e-5)
        assert "allegro_stress" not in atoms.info  # molecules
    errors = np.array([a.info["allegro_energy_error_mev_per_atom"] for a in frames])
    np.testing.assert_allclose(np.abs(errors).mean(), metrics["energy_per_atom_mae_mev"], rtol=1e-4)
    n = np.array([len(a) for a in frames])
    f_mae = np.array([a.info["allegro_force_mae_mev_per_a"] for a in frames])
    np.testing.assert_allclose(
        (f_mae * n).sum() / n.sum(), metrics["force_mae_mev_per_a"], rtol=1e-4
    )
    missing = tmp_path / "no_such_folder" / "pred.extxyz"
    assert main([*args, "--output", str(out), "--predictions", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "no_such_folder" in err and "does not exist" in err and "Traceback" not in err
    before = data_file.read_bytes()  # the data file itself is refused, and left alone
    assert main([*args, "--output", str(out), "--predictions", str(data_file)]) == 2
    assert "is the data file" in capsys.readouterr().err and data_file.read_bytes() == before


def test_evaluate_predictions_hold_the_stress_of_periodic_frames(tmp_path):
    """Periodic frames: ``allegro_stress`` is the ASE calculator's stress (3×3, ASE's sign),
    and the labelled stress is written back as read."""
    import ase.build
    import ase.io
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    from allegro_jax.md.ase_calculator import AllegroCalculator
    from allegro_jax.train.evaluate import evaluate_model

    config = AllegroConfig(
        type_names=("Cu",), r_max=3.5, l_max=1, num_layers=1, num_scalar_features=8,
        num_tensor_features=4, per_type_energy_shifts=(-3.0,),
    )  # fmt: skip
    init_fn, _ = make_model(config)
    save_model(tmp_path / "m", config, jax.jit(init_fn)(jax.random.PRNGKey(5)), {})
    rng = np.random.default_rng(1)
    frames = []
    for i in range(5):
        atoms = ase.build.bulk("Cu", "fcc", a=3.6 + 0.02 * i, cubic=True).repeat(2)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = EMT()
        e, f, st = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f, stress=st)
        frames.append(atoms)
    data = tmp_path / "cu.extxyz"
    ase.io.write(data, frames)
    pred = tmp_path / "pred.extxyz"
    metrics = evaluate_model(tmp_path / "m", data, predictions=pred, batch_size=2, quiet=True)
    assert metrics["frames_with_stress"] == 5
    calc = AllegroCalculator.from_model_dir(tmp_path / "m")
    for atoms, original in zip(ase.io.read(pred, ":"), frames, strict=True):
        np.testing.assert_allclose(atoms.get_stress(), original.get_stress(), atol=1e-9)
        probe = original.copy()
        probe.calc = calc
        np.testing.assert_allclose(
            np.reshape(atoms.info["allegro_stress"], (3, 3)),
            probe.get_stress(voigt=False),
            atol=1e-6,
        )
        np.testing.assert_allclose(
            atoms.info["allegro_energy"], probe.get_potential_energy(), rtol=1e-6
        )


def test_save_load_model_round_trip(tmp_path):
    config = AllegroConfig(
        type_names=("H", "O"),
        r_max=3.0,
        l_max=1,
        num_layers=1,
        num_scalar_features=8,
        num_tensor_features=4,
        per_type_energy_shifts=(-1.0, -3.0),
    )
    init_fn, apply_fn = make_model(config)
    params = jax.jit(init_fn)(jax.random.PRNGKey(3))
    save_model(tmp_path / "m", config, params, {"note": "x"})
    loaded_config, loaded_params, fn = load_model(tmp_path / "m")
    assert loaded_config == config
    jax.tree.map(np.testing.assert_array_equal, params, loaded_params)
    s = _two_molecules()[1]
    graph = build_graph([s], config.type_names, config.r_max)
    ref = jax.jit(apply_fn)(params, graph)
    out = fn(s)
    np.testing.assert_allclose(out["energy"], ref["energy"][0], rtol=1e-6)
    np.testing.assert_allclose(out["forces"], ref["forces"][:3], rtol=1e-5, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="no trained model"):
        load_model(tmp_path)


def test_checkpoint_round_trip_and_corruption(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    state = {"a": jnp.arange(100.0), "b": {"c": jnp.ones((4, 4), jnp.int32)}}
    for step in (1, 2, 3):
        store.save(step, jax.tree.map(lambda x, s=step: x * s, state), {"step": step})
    assert store.steps() == [2, 3]
    restored, meta = store.restore_latest(state)
    assert meta["step"] == 3
    np.testing.assert_array_equal(restored["a"], 3 * state["a"])
    # truncate the biggest data file of step 3: a clear error naming it, then step 2
    files = sorted((tmp_path / "checkpoints" / "3").rglob("*"), key=lambda p: p.stat().st_size)
    victim = [f for f in files if f.is_file() and f.name != "allegro_manifest.json"][-1]
    victim.write_bytes(victim.read_bytes()[:10])
    with pytest.raises(CheckpointError, match=str(victim.name)):
        store.restore(3, state)
    with pytest.warns(UserWarning, match="truncated or altered"):
        restored, meta = store.restore_latest(state)
    assert meta["step"] == 2
    np.testing.assert_array_equal(restored["a"], 2 * state["a"])
    assert store.steps() == [2]
    assert list((tmp_path / "corrupt_checkpoints").iterdir())
    # the only checkpoint left is damaged too: a clear error
    victim = next((tmp_path / "checkpoints" / "2").rglob("_METADATA"))
    victim.write_text("{}")
    with pytest.raises(CheckpointError, match="no usable checkpoint.*_METADATA"):
        store.restore_latest(state)
    store.close()


@pytest.mark.slow
def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path, data_file):
    if data_file.suffix != ".npz":
        pytest.skip("the poisoned copy is made from the rMD17 npz")
    cfg = yaml.safe_load(_tiny_yaml(tmp_path, data_file, max_epochs=1).read_text())
    run = tmp_path / "run"
    train_and_evaluate(TrainConfig.from_dict(cfg), run)
    store = CheckpointStore(run)
    steps_before = store.steps()
    assert steps_before
    with np.load(data_file) as d:
        poisoned = {k: d[k] for k in d.files}
    poisoned["energies"] = poisoned["energies"] * 1e30
    np.savez(tmp_path / "poisoned.npz", **poisoned)
    bad = TrainConfig.from_dict(
        {**cfg, "max_epochs": 3, "dataset_file_name": str(tmp_path / "poisoned.npz")}
    )
    with pytest.raises(NonFiniteLossError, match="non-finite loss.*last good checkpoint"):
        train_and_evaluate(bad, run)
    store = CheckpointStore(run)
    assert store.steps() == steps_before
    template = store.restore(steps_before[-1], None)[0]
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(template["params"]))
    store.close()


def test_cli_set_overrides_parse_yaml_values():
    import pytest as _pytest

    from allegro_jax.train.cli import parse_overrides

    got = parse_overrides(["max_wall_time=600", "learning_rate=1e-3", "dataset_file_name=a.npz"])
    assert got == {"max_wall_time": 600, "learning_rate": 1e-3, "dataset_file_name": "a.npz"}
    with _pytest.raises(ValueError, match="key=value"):
        parse_overrides(["oops"])


def test_finished_run_does_not_train_again(tmp_path, data_file):
    """A run that stopped on lr < min_lr stays stopped when invoked again."""
    cfg = yaml.safe_load(
        _tiny_yaml(tmp_path, data_file, early_stopping_lower_bounds={"LR": 1.0}).read_text()
    )
    first = train_and_evaluate(TrainConfig.from_dict(cfg), tmp_path / "run")
    assert first["stop_reason"] == "lr_below_min" and first["epochs"] == 1
    again = train_and_evaluate(TrainConfig.from_dict(cfg), tmp_path / "run")
    assert again["stop_reason"] == "lr_below_min"
    assert again["steps"] == first["steps"] and again["epochs"] == first["epochs"]
