"""experiments/water/run.py: the broken-molecule criterion, the diffusion block errors and
the command lines it hands to ``allegro-jax`` (no training or MD here)."""

from __future__ import annotations

from pathlib import Path

import ase
import numpy as np
import pytest
import systems

REPO = Path(__file__).resolve().parents[2]
RUN_PY = REPO / "experiments" / "water" / "run.py"


@pytest.fixture(scope="module")
def run():
    return systems.load_script("water_run", RUN_PY)


def _water_box(n_side: int = 3, spacing: float = 3.1, step: int = 0) -> ase.Atoms:
    """n_side³ rigid water molecules on a cubic lattice, periodic."""
    mol = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pos = (grid[:, None, :] * spacing + 0.5 + mol[None]).reshape(-1, 3)
    atoms = ase.Atoms("OHH" * len(grid), positions=pos, cell=np.eye(3) * n_side * spacing, pbc=True)
    atoms.info["step"] = step
    return atoms


def test_first_broken_frame_finds_a_detached_h_also_across_the_boundary(run):
    intact = [_water_box(step=100 * k) for k in range(4)]
    assert run.first_broken_frame(intact) is None
    # An H wrapped to the far side of the box is still bonded (minimum image).
    wrapped = _water_box(step=400)
    wrapped.positions[2] += wrapped.cell[1]
    assert run.first_broken_frame([*intact, wrapped]) is None
    detached = _water_box(step=500)
    detached.positions[1] = detached.positions[0] + [1.7, 0.0, 0.0]  # H 1.7 Å from its O
    assert run.first_broken_frame([*intact, detached, _water_box(step=600)]) == 4
    # An H that hops to a neighbouring O gives one O three H: also broken.
    hopped = _water_box(step=500)
    hopped.positions[1] = hopped.positions[3] + [0.0, 0.0, 0.98]
    assert run.first_broken_frame([hopped]) == 0


def test_diffusion_blocks_recover_a_known_coefficient(run):
    """Random walk with D = 1e-5 cm²/s (0.1 Å²/ps) per axis step: the full fit and the
    block estimates agree with it, and the standard error is reported."""
    rng = np.random.default_rng(0)
    n_frames, n_mol, dt_ps = 240, 200, 0.1
    d_a2_per_ps = 1e-5 * 1e4  # 1 cm²/s = 1e16 Å² / 1e12 ps: D = 0.1 Å²/ps
    steps = rng.normal(scale=np.sqrt(2 * d_a2_per_ps * dt_ps), size=(n_frames, n_mol, 3, 3))
    steps[:, :, 1:] = steps[:, :, :1]  # H move with their O
    steps[0] = 0.0
    pos = 10.0 + np.cumsum(steps, axis=0)  # unwrapped; the box is large enough
    frames = []
    for k in range(n_frames):
        atoms = ase.Atoms(
            "OHH" * n_mol,
            positions=pos[k].reshape(-1, 3),
            cell=np.eye(3) * 1000.0,
            pbc=True,
        )
        atoms.info["step"] = int(k * dt_ps * 1000 / run.DT_FS)
        frames.append(atoms)

    def no_rdf(frames):
        return {k: np.zeros(3) for k in ("O-O", "O-H", "H-H")}

    r = np.array([2.5, 2.9, 3.5])
    info, _, curve = run._observables(frames, no_rdf, no_rdf(frames), r)
    assert info["diffusion_O_cm2_per_s"] == pytest.approx(1e-5, rel=0.15)
    blocks = info["diffusion_O_blocks_cm2_per_s"]
    assert len(blocks) == 3  # 24 ps of frames / (2 × 4 ps window)
    assert all(b == pytest.approx(1e-5, rel=0.3) for b in blocks)
    assert 0 < info["diffusion_O_standard_error_cm2_per_s"] < 3e-6
    assert curve is not None


def test_train_and_md_command_lines(run, monkeypatch):
    calls = []
    monkeypatch.setattr(run, "_cli", lambda args: calls.append(args) or 0)
    monkeypatch.setattr(run, "_start_structure", lambda size: Path(f"/tmp/start_{size}.extxyz"))
    assert run.main(["train", "--set", "max_wall_time=60", "--set", "seed=3"]) == 0
    args = calls.pop()
    assert args[:2] == ["train", str(run.HERE / "train.yaml")]
    assert args[args.index("--workdir") + 1] == str(run.RUNS / "train")
    assert args[-4:] == ["--set", "max_wall_time=60", "--set", "seed=3"]

    run.main(["train", "--config", "other.yaml", "--run", "train_b"])
    args = calls.pop()
    assert args[1] == "other.yaml" and args[args.index("--workdir") + 1] == str(
        run.RUNS / "train_b"
    )

    out = "test_water_run_cmdline"  # no checkpoint there: a fresh run, no --restart
    run.main(
        ["md", "--size", "64", "--ps", "2", "--model", "train_b", "--out", out]
        + ["--temperature", "350", "--seed", "7"]
    )
    args = calls.pop()
    flag = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    assert flag["--model"] == str(run.RUNS / "train_b")
    assert flag["--out"] == str(run.RUNS / out)
    assert flag["--temperature"] == "350.0" and flag["--seed"] == "7"
    assert flag["--until-step"] == str(round(2000 / run.DT_FS))
    assert flag["--ensemble"] == "nvt_nose_hoover" and "--restart" not in args
