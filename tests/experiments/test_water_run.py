"""experiments/water: the broken-molecule criterion, the diffusion block errors and
the command lines it hands to ``allegro-jax`` (no training or MD here)."""

from __future__ import annotations

import json
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest

from experiments.water import augment, observables, probes, structure
from experiments.water import run as water_run


@pytest.fixture(scope="module")
def run():
    return water_run


def _water_box(n_side: int = 3, spacing: float = 3.1, step: int = 0) -> ase.Atoms:
    """n_side³ rigid water molecules on a cubic lattice, periodic."""
    mol = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pos = (grid[:, None, :] * spacing + 0.5 + mol[None]).reshape(-1, 3)
    atoms = ase.Atoms("OHH" * len(grid), positions=pos, cell=np.eye(3) * n_side * spacing, pbc=True)
    atoms.info["step"] = step
    return atoms


def _tiny_water_config():
    """A small H/O model config (r_max 3 Å, one layer, S 8, C 2) for the tests here."""
    from allegro_jax.config import AllegroConfig

    return AllegroConfig(
        type_names=("H", "O"), r_max=3.0, l_max=1, num_layers=1, num_scalar_features=8,
        num_tensor_features=2, avg_num_neighbors=4.0, per_type_energy_scales=0.1,
    )  # fmt: skip


def _recording_calculator():
    """``(seen, calc)``: an ASE calculator of zero energy that keeps every positions array it
    is asked about in ``seen``."""
    from ase.calculators.calculator import Calculator, all_changes

    seen = []

    class Recorder(Calculator):
        implemented_properties = ("energy",)

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            seen.append(atoms.positions.copy())
            self.results = {"energy": 0.0}

    return seen, Recorder()


def test_first_broken_frame_finds_a_detached_h_also_across_the_boundary():
    intact = [_water_box(step=100 * k) for k in range(4)]
    assert structure.first_broken_frame(intact) is None
    # An H wrapped to the far side of the box is still bonded (minimum image).
    wrapped = _water_box(step=400)
    wrapped.positions[2] += wrapped.cell[1]
    assert structure.first_broken_frame([*intact, wrapped]) is None
    detached = _water_box(step=500)
    detached.positions[1] = detached.positions[0] + [1.7, 0.0, 0.0]  # H 1.7 Å from its O
    assert structure.first_broken_frame([*intact, detached, _water_box(step=600)]) == 4
    # An H that hops to a neighbouring O gives one O three H: also broken.
    hopped = _water_box(step=500)
    hopped.positions[1] = hopped.positions[3] + [0.0, 0.0, 0.98]
    assert structure.first_broken_frame([hopped]) == 0


def test_first_broken_frame_finds_fused_oxygens_and_colliding_h():
    """Molecules that keep their H but whose O sit 1.6 Å apart (seen in MD at 57 ps), or
    whose H of different molecules meet at 0.9 Å (attempt E), are not intact water; two H
    of one molecule 1.5 Å apart are."""
    intact = _water_box()
    assert structure.first_broken_frame([intact]) is None
    fused = _water_box()
    fused.positions[3:6] -= [0.0, 0.0, 1.5]  # the molecule next along z: O–O 3.1 -> 1.6 Å
    assert structure.first_broken_frame([intact, fused]) == 1
    colliding = _water_box()
    colliding.positions[27:30] -= [0.3, 0.0, 0.0]  # the molecule next along x: O–O 2.8 Å
    colliding.positions[28] = colliding.positions[27] - [0.97, 0.0, 0.0]  # its H faces H 1
    assert np.linalg.norm(colliding.positions[28] - colliding.positions[1]) == pytest.approx(0.87)
    assert structure.first_broken_frame([colliding]) == 0


def test_oh_bond_lengths_take_each_h_to_its_nearest_o_across_the_boundary():
    atoms = _water_box(n_side=2)
    atoms.positions -= 0.6  # some H now sit across the boundary from their O
    atoms.wrap()
    stretched = atoms.copy()
    stretched.positions[1] += [0.1, 0.0, 0.0]  # first H: 0.96 -> 1.06 Å
    got = structure.oh_bond_lengths([atoms, stretched])
    d = np.r_[[0.96, np.hypot(0.24, 0.93)] * 16]
    d[16] = 1.06
    assert got["mean_A"] == pytest.approx(d.mean(), abs=1e-9)
    assert got["std_A"] == pytest.approx(d.std(), abs=1e-9)


def test_diffusion_blocks_recover_a_known_coefficient():
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
        atoms.info["time_fs"] = k * dt_ps * 1000  # as read_frames sets it
        frames.append(atoms)

    def no_rdf(frames):
        return {k: np.zeros(3) for k in ("O-O", "O-H", "H-H")}

    r = np.array([2.5, 2.9, 3.5])
    info, _, curve = observables.frame_observables(frames, no_rdf, no_rdf(frames), r)
    assert info["diffusion_O_cm2_per_s"] == pytest.approx(1e-5, rel=0.15)
    blocks = info["diffusion_O_blocks_cm2_per_s"]
    assert len(blocks) == 3  # 24 ps of frames / (2 × 4 ps window)
    assert all(b == pytest.approx(1e-5, rel=0.3) for b in blocks)
    assert 0 < info["diffusion_O_standard_error_cm2_per_s"] < 3e-6
    assert curve is not None


def test_diffusion_blocks_cut_at_the_first_broken_frame(run, tmp_path, monkeypatch):
    """Rigid molecules on a random walk (D = 1e-5 cm²/s), a frame every 100 fs; one H leaves
    at 25.1 ps: the window and the 10 ps blocks use only the intact frames before it."""
    rng = np.random.default_rng(1)
    n_frames, n_mol = 301, 150
    steps = rng.normal(scale=np.sqrt(2 * 0.1 * 0.1), size=(n_frames, n_mol, 1, 3))
    steps[0] = 0.0
    mol = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    lattice = np.stack(np.meshgrid(*[np.arange(6)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n_mol]
    pos = 100.0 + 20.0 * lattice[None, :, None] + mol + np.cumsum(steps, axis=0)
    frames = []
    for k in range(n_frames):
        p = pos[k].reshape(-1, 3).copy()
        if k >= 251:
            p[1] += 2.0  # the first molecule's H, 2.96 Å from its O
        atoms = ase.Atoms("OHH" * n_mol, positions=p, cell=np.eye(3) * 1000.0, pbc=True)
        atoms.info["step"] = k * 100
        frames.append(atoms)
    out = tmp_path / "walk"
    out.mkdir()
    (out / "thermo.csv").write_text("step,time_fs\n10,10\n20,20\n")
    ase.io.write(out / "trajectory.extxyz", frames)
    monkeypatch.setattr(run, "RUNS", tmp_path)
    monkeypatch.setattr(run, "HERE", tmp_path)
    assert run.main(["diffusion-blocks", "--runs", "walk", "--until-ps", "20"]) == 0
    got = json.loads((tmp_path / "diffusion_blocks.json").read_text())["runs"]["walk"]
    assert got["intact_until_ps"] == pytest.approx(25.1)
    assert got["window_end_ps"] == pytest.approx(20.0)
    assert got["D_O_window_1e5_cm2_per_s"] == pytest.approx(1.0, rel=0.25)
    assert len(got["D_O_blocks_1e5_cm2_per_s"]) == 2  # 5-15 and 15-25 ps; 25-30 is cut
    assert all(d == pytest.approx(1.0, rel=0.35) for d in got["D_O_blocks_1e5_cm2_per_s"])


def test_barrier_adds_the_o_h_bump_to_a_trained_model_and_only_there(run, tmp_path, monkeypatch):
    import jax

    from allegro_jax.io.model import load_model, save_model
    from allegro_jax.nn.model import make_model

    config = _tiny_water_config()
    params = make_model(config)[0](jax.random.PRNGKey(0))
    save_model(tmp_path / "m" / "model", config, params)
    monkeypatch.setattr(run, "RUNS", tmp_path)
    assert run.main(["barrier", "--model", "m", "--out", "mb"]) == 0
    assert run.main(["barrier", "--model", "mb", "--out", "mbb"]) == 1  # not twice
    assert not (tmp_path / "mbb").exists()
    _, _, plain = load_model(tmp_path / "m")
    barrier_config, _, with_barrier = load_model(tmp_path / "mb")
    assert barrier_config.to_dict()["pair_potential"][0]["r_lo"] == 1.10

    def water(d_oh: float) -> ase.Atoms:  # one molecule, one H at d_oh from its O
        pos = [[5.0, 5.0, 5.0], [5.0 + d_oh, 5.0, 5.0], [4.76, 5.93, 5.0]]
        return ase.Atoms("OHH", positions=pos, cell=np.eye(3) * 10.0, pbc=True)

    extra = [with_barrier(water(d))["energy"] - plain(water(d))["energy"] for d in (0.97, 1.23)]
    assert extra[0] == pytest.approx(0.0, abs=1e-5)  # intact water: the same model
    assert 0.5 < extra[1] <= 1.0 + 1e-5  # inside the gap: up to 1 eV more


def test_train_and_md_command_lines(run, monkeypatch):
    calls = []
    monkeypatch.setattr(run, "_cli", lambda args: calls.append(args) or 0)
    monkeypatch.setattr(run, "_start_structure", lambda size: Path(f"start_{size}.extxyz"))
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

    run.main(["md", "--size", "512", "--ps", "3", "--dt", "0.5", "--out", out])
    args = calls.pop()
    flag = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    assert flag["--dt"] == "0.5" and flag["--until-step"] == "6000"
    assert flag["--log-every"] == str(2 * run.LOG_EVERY)  # still a row every 10 fs


def test_frames_carry_their_time_from_the_runs_timestep(tmp_path):
    (tmp_path / "thermo.csv").write_text("step,time_fs,temperature_K\n20,10,300\n40,20,301\n")
    ase.io.write(
        tmp_path / "trajectory.extxyz", [_water_box(n_side=1, step=s) for s in (200, 400, 600)]
    )
    frames = observables.read_frames(tmp_path, skip_ps=0.15)
    assert [f.info["time_fs"] for f in frames] == [200.0, 300.0]
    assert observables.dt_fs(tmp_path) == 0.5


def test_nve_check_starts_from_the_source_runs_frame_at_its_timestep(run, tmp_path, monkeypatch):
    source = tmp_path / "md64_x"
    source.mkdir()
    (source / "thermo.csv").write_text("step,time_fs,temperature_K\n20,10,300\n40,20,301\n")
    frames = []
    for step in (200, 10000, 20000):  # 0.1, 5 and 10 ps at 0.5 fs
        atoms = _water_box(n_side=1, step=step)
        atoms.arrays["velocities_A_per_fs"] = np.full((3, 3), step * 1e-6)
        frames.append(atoms)
    ase.io.write(source / "trajectory.extxyz", frames)
    calls = []
    monkeypatch.setattr(run, "RUNS", tmp_path)
    monkeypatch.setattr(run, "_cli", lambda args: calls.append(args) or 0)
    monkeypatch.setattr(run, "_start_structure", lambda size: Path(f"start_{size}.extxyz"))
    argv = ["nve-check", "--source", "md64_x", "--model", "m", "--ps", "1", "--from-ps", "5"]
    assert run.main(argv) == 0
    start = np.load(tmp_path / "nve_md64_x" / "checkpoint.npz")
    assert int(start["step"]) == 10000
    np.testing.assert_allclose(start["velocities"], 10000 * 1e-6)
    args = calls.pop()
    flag = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    assert flag["--ensemble"] == "nve" and flag["--dt"] == "0.5" and "--restart" in args
    assert flag["--until-step"] == "12000" and flag["--model"] == str(tmp_path / "m")
    assert flag["--out"] == str(tmp_path / "nve_md64_x")


def test_stretch_profile_of_a_pure_morse_model(tmp_path):
    """Network weights zero, so the energy is the O–H Morse term alone: the profile is the
    formula's difference, for both H of a molecule that straddles the periodic boundary."""
    import jax

    from allegro_jax import AllegroCalculator, AllegroConfig, make_model
    from allegro_jax.io.model import save_model

    morse = dict(types=["O", "H"], D=4.5, a=2.3, r0=0.98, r_cut=3.0)
    cfg = AllegroConfig(
        type_names=("H", "O"),
        r_max=3.5,
        l_max=1,
        num_layers=1,
        num_scalar_features=8,
        num_tensor_features=4,
        pair_potential=[morse],
    )
    params = jax.tree.map(np.zeros_like, make_model(cfg)[0](jax.random.PRNGKey(0)))
    save_model(tmp_path / "model", cfg, params)
    calc = AllegroCalculator.from_model_dir(tmp_path / "model")
    box = 12.0
    mol = ase.Atoms(
        "OHH",
        positions=[[0.2, 6.0, 6.0], [-0.77, 6.0, 6.0], [0.44, 6.95, 6.0]],  # H0 wraps in x
        cell=np.eye(3) * box,
        pbc=True,
    )
    mol.wrap()

    def pair(r):
        x = r / 3.0
        u = 1 - 28 * x**6 + 48 * x**7 - 21 * x**8 if x < 1 else 0.0
        return 4.5 * ((1 - np.exp(-2.3 * (r - 0.98))) ** 2 - 1) * u

    d = (1.0, 1.3, 1.8)
    de = probes.stretch_profile([mol], calc, distances=d, every=1)
    start = (0.97, np.hypot(0.24, 0.95))  # O–H distances of the two H
    want = [[pair(x) - pair(r0) for x in d] for r0 in start]
    np.testing.assert_allclose(de, want, atol=2e-4)  # float32 model
    assert np.all(de[:, 1:] > 1.0)  # a stretched bond costs energy


def test_stretched_frames_move_one_h_clear_of_others_with_the_morse_label():
    rng = np.random.default_rng(0)
    box = _water_box(n_side=3, spacing=3.1)
    for _ in range(20):
        made = augment.stretched_frame(box, rng, energy=-100.0)
        assert made is not None
        moved = np.flatnonzero(np.any(np.abs(made.positions - box.positions) > 1e-9, axis=1))
        assert len(moved) == 1 and made.numbers[moved[0]] == 1
        h = moved[0]
        d_new = made.get_distances(h, range(len(made)), mic=True)
        d_old = box.get_distances(h, range(len(box)), mic=True)
        own = np.argmin(np.where(box.numbers == 8, d_old, np.inf))  # its O before the move
        assert augment.STRETCH_RANGE_A[0] <= d_new[own] <= augment.STRETCH_RANGE_A[1]
        others = np.delete(np.arange(len(made)), [h, own])
        o, hh = others[made.numbers[others] == 8], others[made.numbers[others] == 1]
        assert d_new[o].min() >= augment.STRETCH_MIN_OTHER_O_A
        assert d_new[hh].min() >= augment.STRETCH_MIN_H_A
        want = -100.0 + augment.morse_oh(d_new[own]) - augment.morse_oh(d_old[own])
        want = -100.0 + min(want + 100.0, augment.STRETCH_LABEL_CAP_EV)
        assert made.info["energy"] == pytest.approx(want, abs=1e-9)
        assert made.info["energy"] > -100.0 + 0.3  # stretching to >= 1.15 Å costs energy
    assert augment.morse_oh(augment.MORSE_R0_A) == pytest.approx(-augment.MORSE_D_EV)


def test_approach_profile_moves_the_acceptor_molecule_rigidly_to_each_distance():
    """A recording calculator: the acceptor O ends at d from the H, its molecule unchanged."""
    from allegro_jax.md.analysis import minimum_image_vectors

    seen, recorder = _recording_calculator()

    box = _water_box(n_side=3, spacing=2.9)  # H-bond-like contacts below 2.2 Å
    de = probes.approach_profile([box], recorder, distances=(1.5, 1.2), every=1)
    assert de.shape[0] > 0 and np.all(de == 0.0)
    start, moved = seen[0], seen[1:]
    cell = np.array(box.cell)
    for positions, d in zip(moved, [1.5, 1.2] * len(de), strict=True):
        shift = positions - start
        changed = np.flatnonzero(np.linalg.norm(shift, axis=1) > 1e-9)
        assert len(changed) == 3 and (box.numbers[changed] == [8, 1, 1]).all()
        assert np.allclose(shift[changed], shift[changed[0]])  # rigid translation
        o_a = changed[0]
        h = [k for k in range(len(box)) if box.numbers[k] == 1 and k not in changed]
        dist = np.linalg.norm(minimum_image_vectors(positions[h] - positions[o_a], cell), axis=1)
        assert np.isclose(dist, d, atol=1e-9).any()


def _fake_md_run(folder: Path, n_frames: int, broken_from: int | None, ensemble: bool) -> None:
    """A 64-molecule run at 0.5 fs, a frame every 1 ps (step 2000 k), a thermo row every
    0.5 ps; an H leaves its O from frame ``broken_from`` on."""
    folder.mkdir(parents=True)
    frames = []
    for k in range(n_frames):
        atoms = _water_box(n_side=4, step=2000 * k)
        atoms.positions += 0.01 * k
        if broken_from is not None and k >= broken_from:
            atoms.positions[1] = atoms.positions[0] + [1.7, 0.0, 0.0]
        frames.append(atoms)
    ase.io.write(folder / "trajectory.extxyz", frames)
    steps = np.arange(1000, 2000 * n_frames, 1000)
    cols = ["step", "time_fs", "temperature_K"] + (["force_std_max", "force_std_mean"] * ensemble)
    rows = []
    for s in steps:
        t = s * 0.5
        spread = [0.1 + (0.5 if broken_from and t >= 1000 * (broken_from - 0.5) else 0.0), 0.05]
        rows.append([s, t, 300.0] + spread * ensemble)
    lines = [",".join(cols)] + [",".join(f"{v:g}" for v in r) for r in rows]
    (folder / "thermo.csv").write_text("\n".join(lines) + "\n")


def test_analyse_lists_every_run_with_its_stability_keys(run, tmp_path, monkeypatch, shared_data):
    """A new ensemble run (its run card: no pair terms, 4 members) broken at 9 ps, a new
    single-model run intact throughout, a run of the committed results.json whose folder is
    gone (carried over) and the 360 K history: all in ``runs`` with molecules, pair_terms,
    dt_fs and intact_ps; the ensemble's force spread before the break is summarised."""
    runs, here = tmp_path / "runs", tmp_path / "here"
    here.mkdir()
    _fake_md_run(runs / "ens", 12, broken_from=9, ensemble=True)
    card = {"model": "ens4", "pair_terms": False, "ensemble_size": 4, "molecules": 64}
    card |= {"dt_fs": 0.5, "temperature_K": 300.0, "velocity_seed": 0}
    (runs / "ens" / run.RUN_CARD).write_text(json.dumps(card))
    _fake_md_run(runs / "single", 8, broken_from=None, ensemble=False)
    old = {"date": "2026-11-24", "runs": {"md64": {"n_molecules": 64, "dt_fs": 1.0,
           "simulated_ps": 105.0, "molecules_intact_until_ps": 64.9}}}  # fmt: skip
    (here / "results.json").write_text(json.dumps(old))
    monkeypatch.setattr(run, "RUNS", runs)
    monkeypatch.setattr(run, "HERE", here)
    assert run.main(["analyse", "--runs", "ens", "single", "--compare", "--record"]) == 0
    got = json.loads((here / "results.json").read_text())["runs"]
    for name, r in got.items():
        assert {"molecules", "pair_terms", "dt_fs", "intact_ps"} <= set(r), name
    ens, single, md64 = got["ens"], got["single"], got["md64"]
    assert (ens["molecules"], ens["pair_terms"], ens["dt_fs"], ens["ensemble_size"]) == (
        64, False, 0.5, 4
    )  # fmt: skip
    assert ens["intact_ps"] == pytest.approx(9.0) and ens["molecules_intact_until_ps"] == 9.0
    (off,) = ens["first_break"]["h_off_bond"]  # H 1 moved 1.7 Å along x from its O:
    assert off["h"] == 0 and off["nearest_o_A"] == pytest.approx(1.4, abs=1e-3)  # next O
    assert off["second_o_A"] == pytest.approx(1.7, abs=1e-3) and off["o_o_A"] == 3.1
    assert ens["first_break"]["o_o_contacts"] == []
    spread = ens["force_std"]
    assert spread["last_ps_before_break"]["max"] == pytest.approx(0.6)
    assert spread["intact_until_1ps_before_break"]["max"] == pytest.approx(0.1)
    assert single["intact_ps"] == pytest.approx(7.5) and single["pair_terms"] is None
    assert md64["intact_ps"] == 64.9 and md64["pair_terms"] is False
    assert md64["carried_over_from"] == "2026-11-24"
    assert got["attempts/B_barrier/stress360_dt05"]["pair_terms"] is True
    table = run.stability_table({"runs": got})
    assert (
        "| ens | ens4 | 64 | no | 0.5 | 300 | 11.5 | 9.0; 0 transient, lasting defect at 9.0 |"
        in table
    )
    assert ens["broken_episodes"] == [{"start_ps": 9.0, "end_ps": 11.0, "healed": False}]
    assert "| single | — | 64 | — | 0.5 | 300 | 7.5 | **7.5** (whole run) |" in table


def test_committee_spread_on_a_runs_frames(run, tmp_path, monkeypatch):
    import jax

    from allegro_jax.io.model import save_model
    from allegro_jax.nn.ensemble import stack_members
    from allegro_jax.nn.model import make_model

    config = _tiny_water_config()
    init = make_model(config)[0]
    members = [init(jax.random.PRNGKey(k)) for k in range(3)]
    save_model(tmp_path / "ens" / "model", config, stack_members(members), ensemble_size=3)
    save_model(tmp_path / "one" / "model", config, members[0])
    _fake_md_run(tmp_path / "md", 6, broken_from=4, ensemble=False)
    monkeypatch.setattr(run, "RUNS", tmp_path)
    assert run.main(["committee", "--model", "one", "--runs", "md"]) == 1  # not an ensemble
    assert run.main(["committee", "--model", "ens", "--runs", "md", "--batch", "4"]) == 0
    got = json.loads((tmp_path / "committee.json").read_text())["runs"]["md"]
    assert got["frames"] == 6 and got["first_broken_frame_ps"] == pytest.approx(4.0)
    series = np.array(got["series"]["force_std_max"])
    assert series.shape == (6,) and np.all(series > 0)
    assert (tmp_path / "committee.png").stat().st_size > 0


def test_publish_copies_a_run_or_an_ensemble_to_models_and_md_finds_it(run, tmp_path, monkeypatch):
    import jax

    from allegro_jax.io.model import read_ensemble_size, save_model
    from allegro_jax.nn.ensemble import stack_members
    from allegro_jax.nn.model import make_model

    config = _tiny_water_config()
    init = make_model(config)[0]
    runs, here = tmp_path / "runs", tmp_path / "here"
    save_model(runs / "seed0" / "model", config, init(jax.random.PRNGKey(0)))
    (runs / "seed0" / "metrics.csv").write_text("epoch,validation_loss\n1,0.5\n")
    members = stack_members([init(jax.random.PRNGKey(k)) for k in range(2)])
    save_model(runs / "ens2", config, members, ensemble_size=2)
    monkeypatch.setattr(run, "RUNS", runs)
    monkeypatch.setattr(run, "HERE", here)
    monkeypatch.setattr(run, "MODELS", here / "models")
    assert run.main(["publish", "--run", "seed0", "--name", "seed0"]) == 0
    assert run.main(["publish", "--run", "ens2", "--name", "ens2"]) == 0
    assert (here / "models" / "seed0" / "metrics.csv").exists()
    assert read_ensemble_size(here / "models" / "seed0") == 1
    assert read_ensemble_size(here / "models" / "ens2") == 2
    # md takes a run folder by name, else the committed model, and its run card says which
    assert run.model_path("seed0") == runs / "seed0"
    assert run.model_path("models/ens2") == here / "models" / "ens2"
    calls = []
    monkeypatch.setattr(run, "_cli", lambda args: calls.append(args) or 0)
    monkeypatch.setattr(run, "_start_structure", lambda size: Path(f"start_{size}.extxyz"))
    assert run.main(["md", "--model", "models/ens2", "--out", "m", "--dt", "0.5"]) == 0
    assert calls[-1][calls[-1].index("--model") + 1] == str(here / "models" / "ens2")
    card = json.loads((runs / "m" / run.RUN_CARD).read_text())
    assert card["ensemble_size"] == 2 and card["pair_terms"] is False and card["dt_fs"] == 0.5


def test_md_stop_when_broken_runs_chunks_until_the_water_breaks(run, tmp_path, monkeypatch):
    """Each fake ``allegro-jax md`` call appends 5 ps of frames (1 fs, a frame per ps); the
    water breaks in the second call's frames: two calls, the second with --restart."""
    monkeypatch.setattr(run, "RUNS", tmp_path)
    monkeypatch.setattr(run, "_start_structure", lambda size: Path(f"start_{size}.extxyz"))
    calls = []

    def fake_md(args):
        calls.append(args)
        out = Path(args[args.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        until = int(args[args.index("--until-step") + 1])
        frames = ase.io.read(out / "trajectory.extxyz", ":") if calls[1:] else []
        start = 1000 * len(frames)
        for step in range(start, until, 1000):
            atoms = _water_box(n_side=4, step=step)
            if step >= 7000:
                atoms.positions[1] = atoms.positions[0] + [1.7, 0.0, 0.0]
            frames.append(atoms)
        ase.io.write(out / "trajectory.extxyz", frames)
        rows = "\n".join(f"{s},{s * 1.0},300" for s in range(10, until + 1, 10))
        (out / "thermo.csv").write_text("step,time_fs,temperature_K\n" + rows + "\n")
        (out / "checkpoint.npz").write_bytes(b"")
        return 0

    monkeypatch.setattr(run, "_cli", fake_md)
    (tmp_path / "m").mkdir()
    argv = ["md", "--model", "m", "--out", "t", "--ps", "50", "--stop-when-broken"]
    assert run.main(argv) == 0
    assert len(calls) == 2
    assert "--restart" not in calls[0] and "--restart" in calls[1]
    steps = [int(c[c.index("--until-step") + 1]) for c in calls]
    assert steps == [5000, 10000]
    # without the flag: one call to the whole length
    calls.clear()
    assert run.main(["md", "--model", "m", "--out", "u", "--ps", "3"]) == 0
    assert len(calls) == 1 and calls[0][calls[0].index("--until-step") + 1] == "3000"


def test_contact_profile_moves_the_nearest_molecule_rigidly_to_each_o_o_distance():
    from allegro_jax.md.analysis import minimum_image_vectors

    seen, recorder = _recording_calculator()

    box = _water_box(n_side=3, spacing=3.1)
    de = probes.contact_profile([box], recorder, distances=(2.2, 1.7), every=4)
    assert de.shape == (7, 2)  # O 0, 4, 8, ... of 27, each with its nearest molecule
    start, moved = seen[0], seen[1:]
    cell = np.array(box.cell)
    o_idx = np.flatnonzero(box.numbers == 8)
    for positions, d in zip(moved, [2.2, 1.7] * len(de), strict=True):
        shift = positions - start
        changed = np.flatnonzero(np.linalg.norm(shift, axis=1) > 1e-9)
        assert len(changed) == 3 and (box.numbers[changed] == [8, 1, 1]).all()
        assert np.allclose(shift[changed], shift[changed[0]])  # rigid translation
        others = [o for o in o_idx if o != changed[0]]
        dist = np.linalg.norm(
            minimum_image_vectors(positions[others] - positions[changed[0]], cell), axis=1
        )
        assert np.isclose(dist.min(), d, atol=1e-9)  # the probed O now d from the moved one


def test_broken_episodes_tell_a_transient_excursion_from_a_lasting_defect():
    frames = []
    for k in range(20):  # a frame every 0.1 ps
        atoms = _water_box(n_side=4, step=k)
        atoms.info["time_fs"] = 100.0 * k
        if k in (3, 4) or k >= 12:  # an H off for 0.2 ps, then off from 1.2 ps to the end
            atoms.positions[1] = atoms.positions[0] + [1.7, 0.0, 0.0]
        frames.append(atoms)
    episodes = structure.broken_episodes(frames)
    assert [(e["start_ps"], e["end_ps"], e["healed"]) for e in episodes] == [
        (0.3, 0.4, True),
        (1.2, 1.9, False),
    ]
    assert structure.broken_episodes(frames[:12]) == episodes[:1]
    assert structure.broken_episodes(frames[:5])[0]["healed"] is False  # broken at the end


def test_stretch_record_keeps_the_models_probed_before(run, tmp_path, monkeypatch, shared_data):
    import jax

    from allegro_jax.io.model import save_model
    from allegro_jax.nn.model import make_model

    config = _tiny_water_config()
    save_model(
        tmp_path / "runs" / "m" / "model", config, make_model(config)[0](jax.random.PRNGKey(0))
    )
    here = tmp_path / "here"
    here.mkdir()
    old = {"frames": 4, "models": {"train": {"stretch": {"median_eV": [1.0]}}}}
    (here / "stretch.json").write_text(json.dumps(old))
    monkeypatch.setattr(run, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(run, "HERE", here)
    assert run.main(["stretch", "--models", "m", "--frames", "1", "--record"]) == 0
    got = json.loads((here / "stretch.json").read_text())["models"]
    assert got["train"] == old["models"]["train"]  # the earlier model's probes, kept
    assert set(got["m"]) == {"stretch", "approach", "contact"}
    assert got["m"]["contact"]["n_probes"] == 8  # every 8th of 64 O
