"""Training faults (issue 17): nothing lost, nothing silent.

* two trainings on one work directory: the second is refused (run-directory lock);
* a kill during the metrics rewrite on resume loses no row (atomic rewrite);
* every checkpoint of ``checkpoints/`` damaged: resume from ``checkpoints_best/``; nothing
  usable at all: a refusal that keeps ``model/`` and the metrics, on every re-run;
* a damaged checkpoint without manifest: no "Event loop is closed" noise from orbax;
* the loss asks for forces the data does not have (another key): a clear error.
"""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from faults import kill_group, start_lock_holder
from systems import ASPIRIN, write_aspirin_subset

from allegro_jax.io.runlock import RunLockedError
from allegro_jax.train.config import TrainConfig
from allegro_jax.train.loop import train_and_evaluate
from allegro_jax.train.metrics_log import MetricsLog

REPO = Path(__file__).resolve().parents[2]
TEST_YAML = REPO / "allegro_jax" / "train" / "configs" / "test.yaml"


def _npz(path: Path, start: int = 0, n: int = 20) -> Path:
    if not ASPIRIN.is_file():
        pytest.skip("rMD17 aspirin is not available")
    return write_aspirin_subset(path, start, n)


def _config_dict(data: Path, **overrides) -> dict:
    cfg = yaml.safe_load(TEST_YAML.read_text())
    cfg.update(dataset_file_name=str(data), **overrides)
    return cfg


def _config(data: Path, **overrides) -> TrainConfig:
    return TrainConfig.from_dict(_config_dict(data, **overrides))


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---- item 6: one training per work directory -------------------------------------------------


def test_a_second_training_on_a_locked_workdir_is_refused(tmp_path, capsys):
    from allegro_jax.cli import main

    data = _npz(tmp_path / "d.npz")
    run = tmp_path / "run"
    holder = start_lock_holder(run, "training")  # another process training in run/
    try:
        with pytest.raises(RunLockedError, match=rf"another training \(pid {holder.pid} "):
            train_and_evaluate(_config(data), run)
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump(_config_dict(data)))
        capsys.readouterr()
        assert main(["train", str(config), "--workdir", str(run)]) == 5
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "in use by another training" in err
        assert "Traceback" not in err
        # nothing of the refused run was written
        written = sorted(p.name for p in run.iterdir())
        assert written == [".allegro_jax.lock", ".allegro_jax.lock.json"]
    finally:
        kill_group(holder)


# ---- item 7: a kill during the metrics rewrite on resume -----------------------------------

# Resumes at epoch 3 of a run with 5 metric rows, i.e. rewrites both metrics files with rows
# 1-3, and SIGKILLs itself in the middle of that rewrite (after the second row of the file
# named by argv[2] was formatted).
_KILLED_REWRITE = """
import csv, json, os, signal, sys
from pathlib import Path
from allegro_jax.train import metrics_log as loop
target, calls = sys.argv[2], 0

def killing(real):
    def wrapper(*args, **kwargs):
        global calls
        calls += 1
        if calls == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return wrapper

if target == "jsonl":
    loop.json.dumps = killing(json.dumps)
else:
    csv.DictWriter._dict_to_list = killing(csv.DictWriter._dict_to_list)
loop.MetricsLog(Path(sys.argv[1]), 3)
print("not killed")
"""


@pytest.mark.parametrize("target", ["jsonl", "csv"])
def test_a_kill_during_the_metrics_rewrite_loses_no_row(tmp_path, target):
    run = tmp_path / "run"
    run.mkdir()
    log = MetricsLog(run, 0)
    rows = [{"epoch": e, "step": 4 * e, "validation_loss": 1.0 / e} for e in range(1, 6)]
    for row in rows:
        log.append(row)
    before = {name: (run / name).read_bytes() for name in ("metrics.jsonl", "metrics.csv")}
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_REWRITE, str(run), target],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr[-2000:]
    # every row is still in the file the resume reads, and the csv is whole (old or new)
    assert _rows(run) == rows if target == "jsonl" else _rows(run) == rows[:3]
    csv_rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in csv_rows] in ([1, 2, 3, 4, 5], [1, 2, 3])
    if target == "jsonl":
        assert (run / "metrics.csv").read_bytes() == before["metrics.csv"]
    # the next resume sees all the rows it needs
    assert MetricsLog(run, 3).rows == rows[:3]


# ---- item 2: no usable checkpoint ----------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """(data file, run directory) of a finished 3-epoch tiny run (copy it before changing it)."""
    directory = tmp_path_factory.mktemp("trained")
    data = _npz(directory / "d.npz")
    run = directory / "run"
    train_and_evaluate(_config(data, max_epochs=3), run)
    return data, run


def _damage(step_dir: Path) -> None:
    """Truncate the largest array file of a checkpoint step."""
    files = [f for f in step_dir.rglob("*") if f.is_file() and f.parent.name == "d"]
    victim = max(files, key=lambda f: f.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:7])


def _snapshot(run: Path) -> dict[str, bytes]:
    names = ("metrics.jsonl", "metrics.csv", "model/config.json", "model/params.msgpack")
    return {name: (run / name).read_bytes() for name in names}


def test_every_checkpoint_damaged_falls_back_to_the_best_one(tmp_path, trained_run, capsys):
    data, original = trained_run
    run = shutil.copytree(original, tmp_path / "run")
    before = _snapshot(run)
    (best_step,) = (int(p.name) for p in (run / "checkpoints_best").iterdir())
    for step_dir in (run / "checkpoints").iterdir():
        _damage(step_dir)
    capsys.readouterr()
    with pytest.warns(UserWarning, match="truncated or altered"):
        summary = train_and_evaluate(_config(data, max_epochs=3), run)
    out = capsys.readouterr().out
    assert "every checkpoint in" in out and "falling back to the best checkpoint" in out
    assert f"resuming from checkpoint step {best_step} " in out
    assert summary["stop_reason"] == "max_epochs" and summary["epochs"] == 3
    # the best model and the metrics are those of the uninterrupted run
    after = _snapshot(run)
    assert after["model/params.msgpack"] == before["model/params.msgpack"]
    assert [r["validation_loss"] for r in _rows(run)] == [
        json.loads(line)["validation_loss"] for line in before["metrics.jsonl"].splitlines()
    ]
    assert len(list((run / "corrupt_checkpoints").iterdir())) == 3


def test_no_usable_checkpoint_at_all_is_refused_every_time_and_keeps_the_results(
    tmp_path, trained_run, capsys
):
    from allegro_jax.cli import main
    from allegro_jax.train.checkpoint import CheckpointError

    data, original = trained_run
    run = shutil.copytree(original, tmp_path / "run")
    before = _snapshot(run)
    for step_dir in [*(run / "checkpoints").iterdir(), *(run / "checkpoints_best").iterdir()]:
        _damage(step_dir)
    refusal = r"holds a trained model \(model/: epoch \d, validation loss .*3 metrics rows"
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match=refusal):
        train_and_evaluate(_config(data, max_epochs=3), run)
    assert _snapshot(run) == before
    assert not list((run / "checkpoints").iterdir())  # all moved to corrupt_checkpoints/
    # a re-run: the same refusal (nothing restarts from step 0 over the results)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_config_dict(data, max_epochs=3)))
    capsys.readouterr()
    assert main(["train", str(config), "--workdir", str(run)]) == 4
    err = capsys.readouterr().err
    assert "no checkpoint in" in err and "use a new --workdir" in err and "Traceback" not in err
    assert _snapshot(run) == before


def test_a_start_from_step_0_only_when_nothing_beyond_epoch_1_would_be_lost(tmp_path):
    from allegro_jax.train.checkpoint import CheckpointError, CheckpointStore
    from allegro_jax.train.resume import restore_or_refuse

    run = tmp_path / "run"
    run.mkdir()
    log = MetricsLog(run, 0)
    log.append({"epoch": 1, "step": 4, "validation_loss": 1.0})  # killed before a checkpoint
    store = CheckpointStore(run)
    try:
        assert restore_or_refuse(store, None, run) is None
        log.append({"epoch": 2, "step": 8, "validation_loss": 0.9})
        with pytest.raises(CheckpointError, match=r"2 metrics rows \(epochs 1-2\)"):
            restore_or_refuse(store, None, run)
    finally:
        store.close()


def test_saving_below_a_newer_step_is_a_clear_error_not_a_missing_file(tmp_path):
    """orbax would drop the older step on save (max_to_keep) and the manifest write failed."""
    import jax.numpy as jnp

    from allegro_jax.train.checkpoint import CheckpointError, CheckpointStore

    store = CheckpointStore(tmp_path)
    try:
        store.save(40, {"a": jnp.ones(3)}, {"step": 40}, best=True)
        with pytest.raises(CheckpointError, match=r"holds the newer step\(s\) \[40\]"):
            store.save(4, {"a": jnp.zeros(3)}, {"step": 4}, best=True)
        assert store.steps(best=True) == [40]
    finally:
        store.close()


# ---- checkpoints without manifest: no asyncio noise ----------------------------------------

# Damaged steps without the allegro manifest are only found when orbax fails to read them;
# the failed restore used to print "Event loop is closed" tracebacks (one per array, hundreds
# of lines) and "exception was never retrieved" records. Several attempts: the noise depends
# on thread timing.
_UNVERIFIED_DAMAGE = """
import sys, warnings
from pathlib import Path
import jax.numpy as jnp
from allegro_jax.train.checkpoint import CheckpointStore
warnings.simplefilter("ignore")
for attempt in range(5):
    d = Path(sys.argv[1]) / str(attempt)
    state = {f"w{k}": jnp.full((64,), float(k)) for k in range(40)}
    store = CheckpointStore(d)
    for step in (1, 2, 3):
        store.save(step, state, {"step": step})
    for step in (2, 3):
        (d / "checkpoints" / str(step) / "allegro_manifest.json").unlink()
        (d / "checkpoints" / str(step) / "state" / "manifest.ocdbt").unlink()
    restored, meta = store.restore_latest(state)
    assert meta["step"] == 1 and float(restored["w7"][0]) == 7.0, meta
    store.close()
print("restored")
"""


def test_a_damaged_checkpoint_without_manifest_falls_back_quietly(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", _UNVERIFIED_DAMAGE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "restored", proc.stderr[-3000:]
    for noise in ("Event loop is closed", "exception was never retrieved", "Traceback"):
        assert noise not in proc.stderr, proc.stderr[-3000:]


# ---- item 5: forces under an unexpected key ------------------------------------------------


def _dft_forces_file(path: Path) -> Path:
    """Water frames whose forces are stored as the per-atom array ``dft_forces``."""
    import ase.build
    import ase.io

    rng = np.random.default_rng(0)
    frames = []
    for _ in range(6):
        atoms = ase.build.molecule("H2O")
        atoms.positions += rng.normal(scale=0.05, size=(3, 3))
        atoms.info["energy"] = -14.0 + rng.normal(scale=0.1)
        atoms.new_array("dft_forces", rng.normal(size=(3, 3)))
        frames.append(atoms)
    ase.io.write(path, frames)
    return path


def test_forces_under_another_key_are_an_error_not_an_energy_only_model(tmp_path, capsys):
    from allegro_jax.cli import main
    from allegro_jax.data.datasets import DataKeyError
    from allegro_jax.train.run_data import load_splits

    data = _dft_forces_file(tmp_path / "water.extxyz")
    cfg = _config_dict(data, n_train=4, n_val=2)
    with pytest.raises(DataKeyError, match=r"loss_coeffs.forces = 1\) but no frame has forces"):
        train_and_evaluate(TrainConfig.from_dict(cfg), tmp_path / "run")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["train", str(config), "--workdir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {data}: the loss uses forces") and err.count("\n") == 1
    assert "arrays: ['dft_forces']" in err and "Set forces_key" in err and "Traceback" not in err
    # the two ways out
    train, val = load_splits(TrainConfig.from_dict(cfg | {"forces_key": "dft_forces"}))
    assert all(s.forces is not None for s in train + val)
    no_forces = {"total_energy": 1.0, "forces": 0.0}
    train, _ = load_splits(TrainConfig.from_dict(cfg | {"loss_coeffs": no_forces}))
    assert all(s.forces is None for s in train)


def test_validation_stratified_by_config_type(tmp_path, capsys):
    """``validation_stratify_by: config_type`` puts a kind of frame that a plain draw
    leaves out (2 surfaces in 30) in the validation set; a key no frame has is a one-line
    error naming the file and the keys it has."""
    import ase.build
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    from allegro_jax.cli import main
    from allegro_jax.train.run_data import load_splits

    rng = np.random.default_rng(0)
    frames = []
    for i in range(30):
        atoms = ase.build.molecule("H2O")
        atoms.positions += rng.normal(scale=0.05, size=(3, 3))
        atoms.calc = SinglePointCalculator(atoms, energy=-14.0, forces=rng.normal(size=(3, 3)))
        atoms.info["config_type"] = "surface" if i in (3, 17) else "bulk"
        frames.append(atoms)
    data = tmp_path / "typed.extxyz"
    ase.io.write(data, frames)
    cfg = _config_dict(data, n_val=6, n_train=None)
    kinds = lambda structs: sorted(s.info["config_type"] for s in structs)  # noqa: E731
    plain_train, plain_val = load_splits(TrainConfig.from_dict(cfg))
    assert "surface" not in kinds(plain_val)  # this seed's plain draw misses both
    train, val = load_splits(TrainConfig.from_dict(cfg | {"validation_stratify_by": "config_type"}))
    assert kinds(val) == ["bulk"] * 5 + ["surface"] and kinds(train).count("surface") == 1
    assert len(train) == 24 and {s.info["index"] for s in train + val} == set(range(30))
    few = load_splits(TrainConfig.from_dict(cfg | {"validation_stratify_by": "config_type",
                                                    "n_train": 10}))  # fmt: skip
    assert len(few[0]) == 10 and kinds(few[1]) == kinds(val)
    # from a separate validation file (which keeps nothing for training): n_val = 30 is all
    separate = cfg | {"validation_stratify_by": "config_type", "validation_dataset_file_name":
                      str(data), "n_val": 30}  # fmt: skip
    assert kinds(load_splits(TrainConfig.from_dict(separate))[1]) == ["bulk"] * 28 + ["surface"] * 2
    with pytest.raises(ValueError, match="must be an info key"):
        TrainConfig.from_dict(cfg | {"validation_stratify_by": 3})
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg | {"validation_stratify_by": "kind"}))
    capsys.readouterr()
    assert main(["train", str(config), "--workdir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {data}: validation_stratify_by = 'kind', but no frame")
    assert "config_type" in err and err.count("\n") == 1 and "Traceback" not in err
