"""``allegro-jax md`` input and output: any structure file the data readers take (rMD17 npz
with ``--index``), clear errors that leave no folder behind, a trajectory with the starting
frame, a chosen stride and per-frame energy and forces, compile messages, help texts."""

from __future__ import annotations

import argparse

import ase.build
import ase.io
import numpy as np
import pytest
from md_helpers import random_params, si_o_crystal, small_config

from allegro_jax.cli import main
from allegro_jax.io.model import save_model
from allegro_jax.md import AllegroCalculator
from allegro_jax.md.cli import _Progress, add_md_parser


def _molecule_model(tmp_path):
    config = small_config(
        type_names=("H", "C", "O"), r_max=3.0, per_type_energy_shifts=(-0.5, -2.0, -3.0)
    )
    save_model(tmp_path / "model", config, random_params(config))
    return tmp_path / "model"


def _rmd17_npz(path, n_frames=5, seed=0):
    """An rMD17-format file (kcal/mol units do not matter here) of a rattled ethanol."""
    mol = ase.build.molecule("CH3CH2OH")
    rng = np.random.default_rng(seed)
    coords = mol.positions + 0.05 * rng.standard_normal((n_frames, len(mol), 3))
    np.savez(
        path,
        nuclear_charges=mol.numbers,
        coords=coords,
        energies=np.zeros(n_frames),
        forces=np.zeros((n_frames, len(mol), 3)),
    )
    return coords


def test_md_from_an_rmd17_frame_writes_start_frame_stride_energy_and_forces(tmp_path, capsys):
    model = _molecule_model(tmp_path)
    coords = _rmd17_npz(tmp_path / "ethanol.npz")
    out = tmp_path / "md"
    args = ["md", "--model", str(model), "--structure", str(tmp_path / "ethanol.npz")]
    args += ["--index", "3", "--out", str(out), "--ensemble", "nve", "--temperature", "100"]
    args += ["--steps", "20", "--log-every", "5", "--logs-per-chunk", "4", "--traj-every", "5"]
    assert main([*args, "--progress", "log"]) == 0
    printed = capsys.readouterr().out
    assert "compiling" in printed and "compiled in" in printed

    frames = ase.io.read(out / "trajectory.extxyz", index=":")
    assert [f.info["step"] for f in frames] == [0, 5, 10, 15, 20]  # start frame, stride 5
    np.testing.assert_allclose(frames[0].positions, coords[3], atol=1e-8)  # --index 3; 8 decimals
    thermo = np.genfromtxt(out / "thermo.csv", delimiter=",", names=True)
    calc = AllegroCalculator.from_model_dir(model)
    for frame in frames:
        energy, forces = frame.get_potential_energy(), frame.get_forces()  # read back by ASE
        atoms = frame.copy()
        atoms.calc = calc
        assert energy == pytest.approx(atoms.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(forces, atoms.get_forces(), atol=1e-5)
        if frame.info["step"] > 0:
            row = thermo[thermo["step"] == frame.info["step"]]
            assert energy == pytest.approx(float(row["potential_energy"][0]), abs=1e-8)


def test_md_input_errors_are_one_paragraph_and_leave_no_folder(tmp_path, capsys):
    model = _molecule_model(tmp_path)
    _rmd17_npz(tmp_path / "ethanol.npz")
    ase.io.write(tmp_path / "crystal.extxyz", si_o_crystal())
    (tmp_path / "junk.extxyz").write_text("3\nnot a comment line\nthis is not xyz\n")
    slab = ase.build.molecule("H2O")
    slab.set_cell([10, 10, 10])
    slab.pbc = [True, True, False]
    ase.io.write(tmp_path / "slab.extxyz", slab)
    cases = [
        (["--structure", str(tmp_path / "missing.xyz")], "no such file"),
        (["--structure", str(tmp_path / "ethanol.npz"), "--index", "7"], "has 5 frames"),
        (["--structure", str(tmp_path / "crystal.extxyz")], "Si"),  # not in H, C, O
        (["--structure", str(tmp_path / "junk.extxyz")], "junk.extxyz"),
        (["--structure", str(tmp_path / "slab.extxyz")], "periodic along some axes"),
        (["--structure", str(tmp_path / "ethanol.npz"), "--traj-every", "7"], "--traj-every"),
        (["--model", str(tmp_path / "nothing"), "--structure", "x.xyz"], "nothing"),
    ]
    for extra, expected in cases:
        out = tmp_path / "md_out"
        argv = ["md", "--model", str(model), "--out", str(out), *extra]
        assert main(argv) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err, (extra, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists(), extra


def test_md_help_explains_every_option():
    parser = argparse.ArgumentParser()
    md = add_md_parser(parser.add_subparsers())
    for action in md._actions:
        assert action.help, f"{action.option_strings} has no help text"
    from allegro_jax import cli

    assert "arrive" not in cli.__doc__
    for command in ("demo", "train", "evaluate", "md"):
        assert command in cli.__doc__


def test_progress_gives_rates_and_eta_only_for_timed_steps(capsys):
    progress = _Progress("log", end_step=100, interval=0.0)
    progress.update(10, 10, 300.0, -1.0)  # after the first chunk: compilation inside
    first = capsys.readouterr().out
    assert "md step 10/100" in first and "ETA" not in first and "steps/s" not in first
    progress.start_timing(10)
    progress.update(20, 10, 300.0, -1.0)
    later = capsys.readouterr().out
    assert "steps/s" in later and "ETA" in later

    bar = _Progress("bar", end_step=100, interval=0.0)
    assert bar.bar is None  # no bar (and no ETA) during compilation
    bar.start_timing(10)
    assert bar.bar is not None and bar.bar.n == 10
    bar.close()
