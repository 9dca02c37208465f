"""``allegro-jax md``: restart continues exactly, a killed run's extra output is dropped,
progress reporting modes."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from md_helpers import random_params, si_o_crystal, small_config

from allegro_jax.cli import main
from allegro_jax.io.model import save_model


def _args(model, structure, out, *extra):
    return [
        "md",
        "--model",
        str(model),
        "--structure",
        str(structure),
        "--out",
        str(out),
        "--ensemble",
        "nvt_langevin",
        "--dt",
        "1.0",
        "--friction",
        "0.05",
        "--log-every",
        "5",
        "--logs-per-chunk",
        "2",
        "--skin",
        "0.3",
        *extra,
    ]


@pytest.mark.slow
def test_cli_restart_is_exact_and_drops_output_after_the_checkpoint(tmp_path, capsys):
    config = small_config(r_max=3.0)
    model = tmp_path / "model"
    save_model(model, config, random_params(config))
    structure = tmp_path / "start.extxyz"
    ase.io.write(structure, si_o_crystal())

    full, split = tmp_path / "full", tmp_path / "split"
    assert main(_args(model, structure, full, "--until-step", "40", "--progress", "none")) == 0
    assert "md step" not in capsys.readouterr().out
    assert (
        main(
            _args(model, structure, split, "--until-step", "20", "--progress", "log")
            + ["--log-interval", "0"]
        )
        == 0
    )
    assert "md step 10/20" in capsys.readouterr().out  # a line per chunk with interval 0
    # a run killed after writing output past its checkpoint: a thermo row and a frame
    with open(split / "thermo.csv", "a") as f:
        f.write("25,25,1,1,1,1,1,1,1\n")
    frame = ase.io.read(split / "trajectory.extxyz", index=-1)
    frame.info["step"] = 30
    ase.io.write(split / "trajectory.extxyz", frame, append=True)

    restart = _args(model, structure, split, "--until-step", "40", "--progress", "none")
    assert main([*restart, "--restart"]) == 0
    # the same file again: nothing left to run
    assert main([*restart, "--restart"]) == 0

    assert (split / "thermo.csv").read_text() == (full / "thermo.csv").read_text()
    a = ase.io.read(full / "trajectory.extxyz", index=":")
    b = ase.io.read(split / "trajectory.extxyz", index=":")
    assert [f.info["step"] for f in b] == [0, 10, 20, 30, 40]
    for fa, fb in zip(a, b, strict=True):
        np.testing.assert_array_equal(fa.positions, fb.positions)
        np.testing.assert_array_equal(
            fa.arrays["velocities_A_per_fs"], fb.arrays["velocities_A_per_fs"]
        )
    timing = (split / "timing.jsonl").read_text().splitlines()
    assert len(timing) == 3


def test_cli_restart_without_checkpoint_is_an_error(tmp_path, capsys):
    config = small_config(r_max=3.0)
    save_model(tmp_path / "model", config, random_params(config))
    ase.io.write(tmp_path / "s.extxyz", si_o_crystal())
    args = _args(tmp_path / "model", tmp_path / "s.extxyz", tmp_path / "out", "--restart")
    assert main(args) == 2
    assert "no checkpoint" in capsys.readouterr().err
