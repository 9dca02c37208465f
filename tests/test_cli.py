"""End-to-end: the README's main job (`allegro-jax demo`)."""

import json

import numpy as np

from allegro_jax.cli import main


def test_demo_runs_and_conserves_momentum(tmp_path, capsys):
    out = tmp_path / "demo.json"
    assert main(["demo", "--repeat", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n_atoms"] == 8 and result["n_edges"] > 0
    assert np.isfinite(result["energy_eV"]) and result["max_force_eV_per_A"] > 0
    assert np.abs(result["net_force"]).max() < 1e-3  # translation invariance -> sum F = 0
    printed = capsys.readouterr().out
    assert "energy" in printed
    # no silent compilation: announced first, its time given when done
    assert (
        printed.index("compiling the model")
        < printed.index("compiled in")
        < printed.index("energy ")
    )
