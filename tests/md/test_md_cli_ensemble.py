"""``allegro-jax md`` with an ensemble model: mean dynamics and the force-std columns."""

from __future__ import annotations

import ase.io
import jax
import numpy as np
import pytest
from md_helpers import random_params, si_o_crystal, small_config

from allegro_jax.cli import main
from allegro_jax.data.graph import Structure
from allegro_jax.data.padding import build_graph
from allegro_jax.io.model import load_model, read_ensemble_size, save_model
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


def test_ensemble_cli_stacks_separately_trained_models(tmp_path, capsys):
    config = small_config(r_max=3.0)
    members = [random_params(config, seed=s) for s in (0, 1, 2)]
    for k, p in enumerate(members):
        save_model(tmp_path / f"m{k}", config, p, {"seed": k})
    paths = [str(tmp_path / f"m{k}") for k in range(3)]
    assert main(["ensemble", "--members", *paths, "--out", str(tmp_path / "ens")]) == 0
    assert read_ensemble_size(tmp_path / "ens") == 3
    _, params, ens_fn = load_model(tmp_path / "ens")
    assert np.asarray(jax.tree.leaves(params)[0]).dtype == np.float64
    atoms = si_o_crystal()
    out = ens_fn(atoms)
    singles = [load_model(p)[2](atoms) for p in paths]
    np.testing.assert_allclose(
        out["forces"], np.mean([s["forces"] for s in singles], axis=0), rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(out["member_energy"], [s["energy"] for s in singles], rtol=1e-12)
    assert out["forces_std"].max() > 0
    # the ASE calculator reads the ensemble too: the mean, and the spread in its results
    from allegro_jax import AllegroCalculator

    calc = AllegroCalculator.from_model_dir(tmp_path / "ens")
    atoms.calc = calc
    np.testing.assert_allclose(atoms.get_forces(), out["forces"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(atoms.get_potential_energy(), out["energy"], rtol=1e-12)
    np.testing.assert_allclose(calc.results["forces_std"], out["forces_std"], rtol=1e-10)
    assert calc.results["energy_std"] == pytest.approx(np.std(out["member_energy"]), rel=1e-10)
    assert atoms.get_stress().shape == (6,)
    capsys.readouterr()

    # a member of another model, an ensemble member, or one member alone: refused, no traceback
    save_model(tmp_path / "other", small_config(r_max=3.5), members[0])
    for bad, words in (
        ([paths[0], str(tmp_path / "other")], ["other", "'r_max'"]),
        ([paths[0], str(tmp_path / "ens")], ["ens", "already an ensemble"]),
        ([paths[0]], ["at least 2 members"]),
        ([paths[0], str(tmp_path / "missing")], ["missing", "no trained model"]),
    ):
        assert main(["ensemble", "--members", *bad, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ERROR (allegro-jax ensemble)") and "Traceback" not in err
        assert all(w in err for w in words), err
        assert not (tmp_path / "bad").exists()
