"""``allegro-jax md`` end to end on a tiny saved model, with a restart."""

from __future__ import annotations

import ase.io
import numpy as np
from md_helpers import random_params, si_o_crystal, small_config

from allegro_jax.cli import main
from allegro_jax.io.model import save_model


def test_md_cli_runs_and_restarts(tmp_path):
    config = small_config(r_max=3.0)
    save_model(tmp_path / "model", config, random_params(config))
    ase.io.write(tmp_path / "start.extxyz", si_o_crystal())
    out = tmp_path / "md"
    common = [
        "md",
        "--model",
        str(tmp_path / "model"),
        "--structure",
        str(tmp_path / "start.extxyz"),
        "--out",
        str(out),
        "--ensemble",
        "nvt_langevin",
        "--steps",
        "40",
        "--log-every",
        "10",
        "--logs-per-chunk",
        "2",
        "--skin",
        "0.5",
    ]
    assert main(common) == 0
    assert main([*common, "--restart"]) == 0
    thermo = np.genfromtxt(out / "thermo.csv", delimiter=",", names=True)
    np.testing.assert_array_equal(thermo["step"], np.arange(10, 90, 10))
    frames = ase.io.read(out / "trajectory.extxyz", index=":")
    assert [f.info["step"] for f in frames] == [0, 20, 40, 60, 80]  # the start, then per chunk
    assert np.all(np.isfinite(thermo["temperature_K"]))
