"""``allegro-jax md`` with an ensemble model: mean dynamics and the force-std columns."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from md_helpers import random_params, si_o_crystal, small_config

from allegro_jax.cli import main
from allegro_jax.data.graph import Structure
from allegro_jax.data.padding import build_graph
from allegro_jax.io.model import save_model
from allegro_jax.nn.ensemble import stack_members
from allegro_jax.nn.model import make_model


def _thermo(out):
    return np.genfromtxt(out / "thermo.csv", delimiter=",", names=True)


@pytest.mark.slow
def test_md_cli_logs_ensemble_force_std(tmp_path):
    config = small_config(r_max=3.0)
    members = [random_params(config, seed=s) for s in (0, 1)]
    save_model(tmp_path / "ens", config, stack_members(members), ensemble_size=2)
    # two identical members: the same dynamics with zero spread
    save_model(tmp_path / "twins", config, stack_members([members[0], members[0]]), ensemble_size=2)
    save_model(tmp_path / "single", config, members[0])
    atoms = si_o_crystal()
    ase.io.write(tmp_path / "start.extxyz", atoms)

    def run(model):
        out = tmp_path / f"md_{model}"
        args = ["md", "--model", str(tmp_path / model), "--structure"]
        args += [str(tmp_path / "start.extxyz"), "--out", str(out), "--ensemble", "nve"]
        args += ["--steps", "20", "--log-every", "10", "--logs-per-chunk", "2", "--skin", "0.5"]
        assert main(args) == 0
        return _thermo(out)

    ens, twins, single = run("ens"), run("twins"), run("single")
    assert "force_std_max" not in single.dtype.names
    assert np.all(ens["force_std_max"] >= ens["force_std_mean"])
    assert np.all(ens["force_std_mean"] > 0)
    np.testing.assert_allclose(twins["force_std_max"], 0.0, atol=1e-12)
    np.testing.assert_allclose(twins["potential_energy"], single["potential_energy"], rtol=1e-10)

    # the last logged spread equals a direct evaluation of the members on the last frame
    frame = ase.io.read(tmp_path / "md_ens" / "trajectory.extxyz", index=-1)
    assert frame.info["step"] == ens["step"][-1]
    graph = build_graph(
        [Structure.from_ase(frame)], config.type_names, config.r_max, dtype=np.float64
    )
    _, apply_fn = make_model(config)
    f = np.stack([np.asarray(apply_fn(p, graph)["forces"])[: len(frame)] for p in members])
    sigma = np.sqrt(((f - f.mean(0)) ** 2).sum(-1).mean(0))
    np.testing.assert_allclose(ens["force_std_max"][-1], sigma.max(), rtol=1e-6)
    np.testing.assert_allclose(ens["force_std_mean"][-1], sigma.mean(), rtol=1e-6)
