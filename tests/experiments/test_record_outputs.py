"""A user's run of an experiment script leaves the committed files alone (issue 18, item 2).

acac_ood, rmd17 and side_by_side write their results into ``--runs-dir`` unless ``--record``
is given; water's ``analyse``, ``stretch`` and ``diffusion-blocks`` (and ``bench_md.py``)
write into ``runs/``. No training here: the training and evaluation steps are replaced by
stand-ins that return a results entry, so only where the scripts write is tested, and that
what they record holds no absolute paths.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest

from experiments.acac_ood import run as acac_run
from experiments.rmd17 import run as rmd17_run
from experiments.side_by_side import run as sbs_run
from experiments.water import bench_md as water_bench_md
from experiments.water import run as water_run


def _snapshot(directory: Path) -> dict[str, bytes]:
    """The bytes of the files directly in an experiment's folder (the committed ones)."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _copies(directory: Path, names: list[str], to: Path) -> dict[str, Path]:
    to.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        (to / name).write_bytes((directory / name).read_bytes())
        out[name] = to / name
    return out


# ---- acac_ood ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def acac():
    return acac_run


def _acac_entry(acac, workdir: Path) -> dict:
    test = {t: {m: 1.0 + i for i, m in enumerate(acac.METRICS)} for t in acac.TEST_FILES}
    return {
        "test": test,
        "epochs": 3,
        "train_wall_s": 60.0,
        "budget_minutes": 1.0,
        "run_dir": acac.repo_path(workdir, acac.REPO),
    }


def test_acac_run_writes_its_runs_dir_and_only_record_touches_the_committed_files(
    acac, tmp_path, monkeypatch
):
    before = _snapshot(acac.HERE)
    monkeypatch.setattr(
        acac, "run", lambda args, command: _acac_entry(acac, Path(args.runs_dir) / "acac")
    )
    runs = tmp_path / "runs"
    assert acac.main(["--budget-minutes", "1", "--runs-dir", str(runs)]) == 0
    assert _snapshot(acac.HERE) == before
    written = json.loads((runs / "results.json").read_text())
    assert written["ours"]["epochs"] == 3
    assert "| allegro-jax (this run) | 3 epochs" in (runs / "results_table.md").read_text()
    # --record: the committed results.json and README (copies here)
    copies = _copies(acac.HERE, ["README.md", "results.json"], tmp_path / "committed")
    monkeypatch.setattr(acac, "README", copies["README.md"])
    monkeypatch.setattr(acac, "RESULTS", copies["results.json"])
    assert acac.main(["--budget-minutes", "1", "--runs-dir", str(runs), "--record"]) == 0
    assert json.loads(copies["results.json"].read_text())["ours"]["epochs"] == 3
    assert "| allegro-jax (this run) | 3 epochs" in copies["README.md"].read_text()
    assert _snapshot(acac.HERE) == before


def test_acac_records_paths_relative_to_the_repository(acac, tmp_path):
    config = acac.make_config(acac.REPO.parent / "shared/data/acac", 1.0)
    resolved = acac.portable_config(config.to_dict(), acac.REPO)
    assert resolved["dataset_file_name"] == "../shared/data/acac/train_300K.xyz"
    run_dir = acac.repo_path(acac.HERE / "runs" / "acac", acac.REPO)
    assert run_dir == "experiments/acac_ood/runs/acac"


# ---- rmd17 ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rmd17():
    return rmd17_run


RMD17_ENTRY = {
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


def test_rmd17_run_writes_its_runs_dir_and_only_record_touches_the_committed_files(
    rmd17, tmp_path, monkeypatch
):
    before = _snapshot(rmd17.HERE)
    monkeypatch.setattr(rmd17, "run_molecule", lambda mol, args, command: dict(RMD17_ENTRY))
    runs = tmp_path / "runs"
    assert rmd17.main(["ethanol", "--runs-dir", str(runs)]) == 0
    assert rmd17.main(["benzene", "--runs-dir", str(runs)]) == 0  # accumulates
    assert _snapshot(rmd17.HERE) == before
    written = json.loads((runs / "results.json").read_text())
    assert sorted(written) == ["benzene", "ethanol"] and "cpu" in written["ethanol"]
    assert "| ethanol | 1.2 | 5.7 |" in (runs / "results_table.md").read_text()
    copies = _copies(rmd17.HERE, ["README.md", "results.json"], tmp_path / "committed")
    monkeypatch.setattr(rmd17, "README", copies["README.md"])
    monkeypatch.setattr(rmd17, "RESULTS", copies["results.json"])
    monkeypatch.setattr(rmd17, "PLOT", tmp_path / "committed" / "learning_curves.png")
    monkeypatch.setattr(rmd17, "MODELS", tmp_path / "committed" / "models")
    model = runs / "cpu" / "ethanol" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    assert rmd17.main(["ethanol", "--runs-dir", str(runs), "--record"]) == 0
    assert json.loads(copies["results.json"].read_text())["ethanol"]["cpu"]["n_params"] == 123
    assert "| ethanol | 1.2 | 5.7 |" in copies["README.md"].read_text()
    assert (tmp_path / "committed" / "models" / "cpu" / "ethanol" / "config.json").exists()
    assert _snapshot(rmd17.HERE) == before


def test_rmd17_records_paths_relative_to_the_repository(rmd17):
    config = rmd17.make_config("ethanol", "cpu", rmd17.REPO.parent / "shared/data/rmd17", 1.0)
    resolved = rmd17.portable_config(config.to_dict(), rmd17.REPO)
    assert resolved["dataset_file_name"] == "../shared/data/rmd17/rmd17_ethanol_train_01.npz"
    command = rmd17.portable_command(
        ["python", "-m", "experiments.rmd17.run", "--runs-dir", str(rmd17.HERE / "runs" / "x")],
        rmd17.REPO,
    )
    assert command == "python -m experiments.rmd17.run --runs-dir experiments/rmd17/runs/x"


# ---- side_by_side --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sbs():
    return sbs_run


def _sbs_entry() -> dict:
    test = {
        "energy_mae_mev": 1.0,
        "force_mae_mev_per_a": 2.0,
        "energy_rmse_mev": 3.0,
        "force_rmse_mev_per_a": 4.0,
    }
    curve = [{"time_s": 10.0, "force_mae_mev_per_a": 50.0, "step": 190, "loss": 1.0}]
    side = {"test": test, "epochs_validated": 1, "best_validation": curve[0], "n_params": 7}
    return {
        "ours": side,
        "reference": dict(side),
        "budget_s": 60.0,
        "cpu_s": {"ours": 55.0, "reference": 58.0},
        "curves": {"ours": curve, "reference": curve},
    }


def test_side_by_side_writes_its_runs_dir_and_only_record_touches_the_committed_files(
    sbs, tmp_path, monkeypatch
):
    before = _snapshot(sbs.HERE)
    plots = []
    monkeypatch.setattr(sbs, "prepare", lambda mol, data_dir, rundir: rundir.mkdir(parents=True))
    monkeypatch.setattr(sbs, "launch", lambda *args: {})
    monkeypatch.setattr(sbs, "evaluate", lambda mol, rundir, data_dir: _sbs_entry())
    monkeypatch.setattr(sbs, "environment", lambda: {"hardware": "test"})
    monkeypatch.setattr(sbs, "plot", lambda results, path=None: plots.append(path))
    runs = tmp_path / "runs"
    assert sbs.main(["ethanol", "--budget-minutes", "1", "--runs-dir", str(runs)]) == 0
    assert _snapshot(sbs.HERE) == before
    assert plots == [runs / "learning_curves.png"]
    assert "ethanol" in json.loads((runs / "results.json").read_text())["molecules"]
    assert "| ethanol | allegro-jax | 1.0 | 2.0 |" in (runs / "results_table.md").read_text()
    names = ["README.md", "results.json"]
    copies = _copies(sbs.HERE, names, tmp_path / "committed")
    monkeypatch.setattr(sbs, "README", copies["README.md"])
    monkeypatch.setattr(sbs, "RESULTS", copies["results.json"])
    argv = ["ethanol", "--budget-minutes", "1", "--runs-dir", str(tmp_path / "r2"), "--record"]
    assert sbs.main(argv) == 0
    assert plots[-1] == sbs.PLOT  # the committed PNG (the plot itself is stubbed here)
    recorded = json.loads(copies["results.json"].read_text())["molecules"]["ethanol"]
    # a --runs-dir outside the repository and its parent folder is kept as given
    assert recorded["command"] == (
        f"python -m experiments.side_by_side.run ethanol --budget-minutes 1 --runs-dir "
        f"{tmp_path / 'r2'} --record"
    )
    assert "| ethanol | allegro-jax | 1.0 | 2.0 |" in copies["README.md"].read_text()
    assert _snapshot(sbs.HERE) == before


def test_side_by_side_records_commands_without_machine_paths(sbs, monkeypatch):
    import sys

    rundir = sbs.HERE / "runs" / "ethanol"
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "experiments.side_by_side.run",
           "--worker-ours", str(rundir / "ours.yaml"),
           f"hydra.run.dir={rundir / 'nequip' / 'hydra'}"]  # fmt: skip
    assert sbs.portable_command(cmd, sbs.REPO) == (
        "taskset -c 0 python -m experiments.side_by_side.run --worker-ours "
        "experiments/side_by_side/runs/ethanol/ours.yaml "
        "hydra.run.dir=experiments/side_by_side/runs/ethanol/nequip/hydra"
    )


# ---- water ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def water():
    return water_run


@pytest.mark.parametrize("command", ["analyse", "stretch", "diffusion-blocks"])
def test_water_reports_go_to_runs_unless_recorded(water, command, monkeypatch):
    seen = []
    name = {"analyse": "cmd_analyse", "stretch": "cmd_stretch"}.get(command, "cmd_diffusion_blocks")
    monkeypatch.setattr(water, name, lambda args: seen.append(water.report_dir(args)) or 0)
    assert water.main([command]) == 0
    assert water.main([command, "--record"]) == 0
    assert seen == [water.RUNS, water.HERE]


def test_water_diffusion_blocks_leaves_the_committed_file_alone(water, tmp_path, monkeypatch):
    """Rigid molecules on a random walk, a frame every 100 fs for 10 ps."""
    rng = np.random.default_rng(0)
    n_frames, n_mol = 101, 8
    steps = rng.normal(scale=np.sqrt(2 * 0.1 * 0.1), size=(n_frames, n_mol, 1, 3))
    steps[0] = 0.0
    mol = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    lattice = 20.0 * np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pos = 100.0 + lattice[None, :, None] + mol + np.cumsum(steps, axis=0)
    frames = []
    for k in range(n_frames):
        atoms = ase.Atoms("OHH" * n_mol, positions=pos[k].reshape(-1, 3), cell=np.eye(3) * 1000.0)
        atoms.pbc = True
        atoms.info["step"] = k * 100
        frames.append(atoms)
    run = tmp_path / "runs" / "walk"
    run.mkdir(parents=True)
    (run / "thermo.csv").write_text("step,time_fs\n10,10\n20,20\n")
    ase.io.write(run / "trajectory.extxyz", frames)
    committed = water.HERE / "diffusion_blocks.json"
    before = committed.read_bytes()
    monkeypatch.setattr(water, "RUNS", tmp_path / "runs")
    argv = ["diffusion-blocks", "--runs", "walk", "--until-ps", "10", "--block-ps", "4"]
    assert water.main(argv) == 0
    assert committed.read_bytes() == before
    got = json.loads((tmp_path / "runs" / "diffusion_blocks.json").read_text())
    assert got["runs"]["walk"]["D_O_window_1e5_cm2_per_s"] > 0
    monkeypatch.setattr(water, "HERE", tmp_path / "here")
    assert water.main([*argv, "--record"]) == 0
    assert json.loads((tmp_path / "here" / "diffusion_blocks.json").read_text()) == got


def test_water_bench_md_writes_runs_unless_recorded():
    bench = water_bench_md
    args = argparse.Namespace(dtype="float32", record=False)
    assert bench.output_path(args) == bench.HERE / "runs" / "bench_md_float32.json"
    args.record = True
    assert bench.output_path(args) == bench.HERE / "bench_md_float32.json"
