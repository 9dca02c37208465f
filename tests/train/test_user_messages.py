"""What a user sees from ``train`` and ``evaluate``: config typos, missing files, files with
energies only, unknown elements, compile messages, the resume line, a clock stop with a
test file (issue 18)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from allegro_jax.cli import main
from allegro_jax.compiling import watch_compiles
from allegro_jax.config import AllegroConfig
from allegro_jax.io.model import load_model, save_model
from allegro_jax.nn.model import make_model
from allegro_jax.train.config import TrainConfig
from allegro_jax.train.loop import train_and_evaluate

REPO = Path(__file__).resolve().parents[2]
TEST_YAML = REPO / "allegro_jax" / "train" / "configs" / "test.yaml"


def _frames(n: int, seed: int = 0, energies: bool = True, forces: bool = True) -> list:
    """Ethanol frames with EMT labels (energy in ``info``, forces in ``arrays``)."""
    import ase.build
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = ase.build.molecule("CH3CH2OH")
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = EMT()
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = None
        if energies:
            atoms.info["energy"] = e
        if forces:
            atoms.arrays["forces"] = f
        frames.append(atoms)
    return frames


def _write(path: Path, frames: list) -> Path:
    import ase.io

    ase.io.write(path, frames, format="extxyz")
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An untrained model for H, C, O saved as a trained one would be (evaluate needs no
    training)."""
    config = AllegroConfig(
        type_names=("H", "C", "O"),
        r_max=3.0,
        l_max=1,
        num_layers=1,
        num_scalar_features=8,
        num_tensor_features=4,
        per_type_energy_shifts=(-1.0, -3.0, -4.0),
        model_dtype="float32",
    )
    init_fn, _ = make_model(config)
    params = jax.jit(init_fn)(jax.random.PRNGKey(0))
    path = tmp_path_factory.mktemp("model") / "model"
    save_model(path, config, params, {"note": "untrained, for evaluate tests"})
    return path


def _config_dict(data: Path, **overrides) -> dict:
    cfg = yaml.safe_load(TEST_YAML.read_text())
    cfg.update({"dataset_file_name": str(data), "n_train": 8, "n_val": 4, "progress_bar": False})
    cfg.update(overrides)
    return cfg


# ---- config: typos, missing files, empty run folders --------------------------------------


def test_a_misspelled_key_suggests_the_valid_one_instead_of_listing_all(tmp_path, capsys):
    data = _write(tmp_path / "d.extxyz", _frames(3))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_config_dict(data, learning_rat=0.01)))
    assert main(["train", str(config), "--workdir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {config}: unknown config key 'learning_rat' (did you mean 'learning_rate'?)"
    )
    assert not (tmp_path / "run").exists()
    # a nested model key and a loss weight get the same help
    cfg = _config_dict(data)
    with pytest.raises(ValueError, match=r"unknown model key 'l_maxx' \(did you mean 'l_max' or"):
        TrainConfig.from_dict({**cfg, "model": {"l_maxx": 1}})
    with pytest.raises(ValueError, match=r"'force' \(did you mean 'forces'\?\)"):
        TrainConfig.from_dict({**cfg, "loss_coeffs": {"force": 1.0}})
    # nothing close: the valid keys are listed
    with pytest.raises(ValueError, match=r"unknown config key 'zzz'; valid training keys: .*"):
        TrainConfig.from_dict({**cfg, "zzz": 1})


def test_a_missing_training_file_is_named_once_and_leaves_no_run_folder(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the config's folder is the working directory
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_config_dict(Path("missing.extxyz"))))
    assert main(["train", "c.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count(str(tmp_path / "missing.extxyz")) == 1, err
    assert "Traceback" not in err and "which is the working directory" in err
    assert not (tmp_path / "runs").exists()  # runs/c was not created
    # from elsewhere: both places tried, each once
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    assert main(["train", str(config), "--workdir", "run"]) == 2
    err = capsys.readouterr().err
    assert f"tried '{tmp_path / 'missing.extxyz'}' and '{other / 'missing.extxyz'}'" in err
    assert not (other / "run").exists()


def test_a_run_that_fails_on_its_data_removes_only_the_folders_it_created(tmp_path, capsys):
    data = _write(tmp_path / "d.extxyz", _frames(3))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_config_dict(data, n_train=None, n_val=5)))  # 3 frames
    assert main(["train", str(config), "--workdir", str(tmp_path / "runs" / "a")]) == 2
    assert "leaves none for training" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    kept = tmp_path / "mine"
    (kept / "notes").mkdir(parents=True)
    assert main(["train", str(config), "--workdir", str(kept)]) == 2
    assert (kept / "notes").is_dir()  # a folder that existed is left as it was


# ---- evaluate ----------------------------------------------------------------------------


def test_evaluate_scores_an_energy_only_file_and_says_forces_were_skipped(
    model_dir, tmp_path, capsys
):
    """A reaction path or dihedral scan (energies, no forces) is scored on its energies."""
    frames = _frames(5, seed=1, forces=False)
    data = _write(tmp_path / "scan.xyz", frames)
    out = tmp_path / "eval.json"
    rc = main(["evaluate", "--model", str(model_dir), "--data", str(data), "--output", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    metrics = json.loads(out.read_text())
    assert metrics["n_structures"] == 5 and metrics["frames_with_energy"] == 5
    assert metrics["frames_with_forces"] == 0 and metrics["skipped"] == ["forces"]
    assert not any(k.startswith("force_") for k in metrics)
    _, _, predict = load_model(model_dir)
    errors = [
        abs(float(predict(s)["energy"]) - a.info["energy"])
        for s, a in zip(_structures(data), frames, strict=True)
    ]
    assert metrics["energy_mae_mev"] == pytest.approx(1e3 * np.mean(errors), rel=1e-4)
    assert f"not evaluated: forces (no frame of {data} has them)" in printed.out
    assert "compiling the model for 5 structures of scan.xyz" in printed.out
    assert printed.out.index("compiling") < printed.out.index("compiled in")


def _structures(path: Path) -> list:
    from allegro_jax.data.datasets import read_dataset

    return read_dataset(path, required=())


def test_evaluate_with_forces_scores_both_and_skips_nothing(model_dir, tmp_path, capsys):
    data = _write(tmp_path / "full.xyz", _frames(3, seed=2))
    out = tmp_path / "eval.json"
    rc = main(["evaluate", "--model", str(model_dir), "--data", str(data), "--output", str(out)])
    assert rc == 0
    metrics = json.loads(out.read_text())
    assert metrics["skipped"] == [] and metrics["frames_with_forces"] == 3
    assert metrics["force_mae_mev_per_a"] > 0 and metrics["energy_mae_mev"] > 0
    assert "not evaluated" not in capsys.readouterr().out


def test_evaluate_refuses_a_file_without_labels_in_one_line(model_dir, tmp_path, capsys):
    data = _write(tmp_path / "bare.xyz", _frames(2, energies=False, forces=False))
    assert main(["evaluate", "--model", str(model_dir), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {data}: no frame has an energy, forces or stress")
    assert err.count("\n") == 1


def test_evaluate_names_an_unknown_element_before_compiling(model_dir, tmp_path, capsys):
    frames = _frames(6, seed=3)
    frames[4].numbers[0] = 7  # N: not among the model's H, C, O
    data = _write(tmp_path / "withN.xyz", frames)
    assert main(["evaluate", "--model", str(model_dir), "--data", str(data)]) == 2
    printed = capsys.readouterr()
    assert printed.err.startswith(f"error: {data}, frame 4: unknown element N")
    assert "compiling" not in printed.out
    # and quickly: the evaluate command does not import jax-md (seconds, it compiles on import)
    code = (
        "import sys; from allegro_jax.cli import main; "
        f"rc = main(['evaluate', '--model', {str(model_dir)!r}, '--data', {str(data)!r}]); "
        "print(rc, 'jax_md' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )
    assert proc.stdout.split() == ["2", "False"], proc.stderr[-2000:]


def test_a_watched_function_announces_its_first_compile_and_a_new_shape(capsys):
    fn = watch_compiles(jax.jit(lambda x: (x * 2.0).sum()), "the doubling")
    fn(np.ones(3))
    first = capsys.readouterr().out
    assert first.startswith("compiling the doubling…\ncompiled in ")
    fn(np.ones(3))
    assert capsys.readouterr().out == ""  # same shape: nothing compiled, nothing said
    fn(np.ones(4))
    again = capsys.readouterr().out
    assert again.startswith("compiled the doubling again at call 3 (its inputs differ in shape,")
    assert fn._cache_size() == 2 and len(fn.clocks) == 2


# ---- train: compile messages, progress bar, resume line, clock stop with a test file ------


class _FakeBar:
    """Records when the loop opens its progress bar (printed, so it is ordered with stdout)."""

    def __init__(self, total, initial=0, **_):
        print(f"BAR OPENED initial={initial} total={total}", flush=True)

    def set_postfix(self, **_):
        pass

    def update(self, n=1):
        pass

    def close(self):
        pass


@pytest.fixture
def two_epochs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("train")
    data = _write(directory / "train.extxyz", _frames(12, seed=4))
    test = _write(directory / "test.extxyz", _frames(3, seed=5))
    cfg = _config_dict(data, test_dataset_file_name=str(test), max_epochs=2, batch_size=4)
    return directory, cfg


@pytest.mark.slow
def test_train_says_compiling_and_starts_the_bar_after_the_first_step(
    two_epochs, capsys, monkeypatch
):
    from allegro_jax.train import loop

    directory, cfg = two_epochs
    monkeypatch.setattr(loop, "tqdm", _FakeBar)  # the loop's tqdm (imported at module level)
    summary = train_and_evaluate(
        TrainConfig.from_dict({**cfg, "progress_bar": True}), directory / "run"
    )
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "compiling the training step (batches of 4)…"
    assert lines[1].startswith("compiled in ")
    # the first epoch's bar starts at batch 1 of 2, after the compiled first step
    assert lines[2] == "BAR OPENED initial=1 total=2"
    assert "BAR OPENED initial=0 total=2" in lines  # the second epoch: a bar from 0
    assert out.index("compiling the validation step") < out.index("epoch    1")
    assert "compiling the model for 3 structures of test.extxyz" in out  # the test file
    assert summary["stop_reason"] == "max_epochs" and summary["test"]["n_structures"] == 3


@pytest.mark.slow
def test_a_clock_stop_says_how_to_evaluate_the_test_set_and_resume_is_readable(two_epochs, capsys):
    directory, cfg = two_epochs
    run = directory / "run2"
    train_and_evaluate(TrainConfig.from_dict(cfg), run)  # 2 epochs, test evaluated
    capsys.readouterr()
    summary = train_and_evaluate(
        TrainConfig.from_dict({**cfg, "max_epochs": 50, "max_wall_time": 1e-3}), run
    )
    out = capsys.readouterr().out
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    best = min(rows, key=lambda r: r["validation_loss"])
    resume = next(line for line in out.splitlines() if line.startswith("resuming"))
    assert resume == (  # 8 training frames in batches of 4: 2 steps per epoch
        f"resuming from checkpoint step 4 (epoch 2 completed); best validation loss "
        f"{best['validation_loss']:.4g} (epoch {best['epoch']}); checkpoint "
        f"{run.resolve() / 'checkpoints' / '4'}"
    )
    assert "{" not in resume
    assert summary["stop_reason"] == "max_wall_time" and "test" not in summary
    note = summary["test_not_evaluated"]
    test_file = Path(cfg["test_dataset_file_name"]).resolve()
    assert note.startswith("test set not evaluated: the run stopped at max_wall_time")
    assert note.endswith(f"allegro-jax evaluate --model {run.resolve()} --data {test_file}")
    assert note in out
    assert json.loads((run / "summary.json").read_text())["test_not_evaluated"] == note
    # the command it prints works
    command = note.split("allegro-jax evaluate ", 1)[1].split()
    assert main(["evaluate", *command, "--output", os.devnull]) == 0


@pytest.mark.slow
def test_a_resumed_run_compiles_its_training_step_once(two_epochs, capsys):
    directory, cfg = two_epochs
    run = directory / "run3"
    train_and_evaluate(TrainConfig.from_dict({**cfg, "test_dataset_file_name": None}), run)
    capsys.readouterr()
    train_and_evaluate(
        TrainConfig.from_dict({**cfg, "test_dataset_file_name": None, "max_epochs": 4}), run
    )
    out = capsys.readouterr().out
    assert out.count("compiling the training step") == 1
    assert "again at call" not in out  # restored arrays would otherwise recompile the step
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]


def test_the_epoch_line_quotes_force_errors_only_where_frames_have_forces():
    from allegro_jax.train.metrics_log import epoch_line

    row = {"epoch": 3, "step": 30, "lr": 0.002, "train_loss": 0.5, "epoch_time_s": 1.25}
    with_forces = {"loss": 0.25, "energy_mae_mev": 12.0, "force_mae_mev_per_a": 34.5}
    line = epoch_line(row, with_forces)
    assert "val E MAE 12.00 meV  F MAE 34.50 meV/Å  (1.2 s)" in line
    energy_only = {"loss": 0.25, "energy_mae_mev": 12.0, "force_mae_mev_per_a": float("nan")}
    line = epoch_line(row, energy_only)
    assert line.endswith("val E MAE 12.00 meV  (1.2 s)") and "nan" not in line
