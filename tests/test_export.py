"""``allegro-jax export``: a jax.export artefact (cpu + cuda lowering) of energy, forces and
virial that a fresh Python process with jax alone (no allegro_jax) deserializes and runs,
matching the model; float32 and float64."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from systems import random_periodic

from allegro_jax.cli import main
from allegro_jax.config import AllegroConfig
from allegro_jax.data.padding import build_graph
from allegro_jax.io.export import ARTEFACT, CONTRACT, export_inputs
from allegro_jax.io.model import save_model
from allegro_jax.nn.model import make_model

# deserialize and run with jax and numpy only; refuse to run if allegro_jax got imported
RUNNER = """
import sys
import jax
import numpy as np
jax.config.update("jax_enable_x64", True)
exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
inputs = np.load(sys.argv[2])
energy, atomic, forces, virial = exported.call(*[inputs[f"arr_{k}"] for k in range(7)])
assert "allegro_jax" not in sys.modules
np.savez(sys.argv[3], energy=energy, atomic=atomic, forces=forces, virial=virial,
         platforms=np.array(exported.platforms))
"""


def _config(dtype):
    return AllegroConfig(
        type_names=("O", "Si"),
        r_max=3.0,
        l_max=1,
        num_layers=1,
        num_scalar_features=8,
        num_tensor_features=4,
        avg_num_neighbors=10.0,
        per_type_energy_shifts=(-1.0, -3.0),
        per_type_energy_scales=0.1,
        model_dtype=dtype,
    )


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_exported_model_runs_with_jax_alone(tmp_path, dtype):
    config = _config(dtype)
    init_fn, apply_fn = make_model(config)
    params = init_fn(jax.random.PRNGKey(3))
    model_dir = save_model(tmp_path / "model", config, params)
    out = tmp_path / "export"
    assert (
        main(
            [
                "export",
                "--model",
                str(model_dir),
                "--out",
                str(out),
                "--atoms",
                "32",
                "--edges",
                "1024",
            ]
        )
        == 0
    )
    contract = json.loads((out / CONTRACT).read_text())
    assert contract["dtype"] == dtype and contract["platforms"] == ["cpu", "cuda"]
    structure = random_periodic(np.random.default_rng(0), n=12)
    inputs = export_inputs(structure, contract)
    np.savez(tmp_path / "inputs.npz", *inputs)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            RUNNER,
            out / ARTEFACT,
            tmp_path / "inputs.npz",
            tmp_path / "outputs.npz",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "outputs.npz")
    assert list(got["platforms"]) == ["cpu", "cuda"]
    graph = build_graph([structure], config.type_names, config.r_max, dtype=np.float64)
    ref = jax.jit(apply_fn, static_argnames=("forces", "stress"))(params, graph, stress=True)
    n = structure.n_atoms
    tol = 1e-12 if dtype == "float64" else 1e-5
    e_ref, f_ref, w_ref = float(ref["energy"][0]), np.asarray(ref["forces"][:n]), ref["virial"][0]
    assert abs(float(got["energy"]) - e_ref) <= tol * abs(e_ref)
    assert np.abs(got["forces"][:n] - f_ref).max() <= tol * np.abs(f_ref).max()
    assert np.abs(got["virial"] - w_ref).max() <= tol * np.abs(w_ref).max()
    assert not got["forces"][n:].any() and not got["atomic"][n:].any()  # padding rows
    np.testing.assert_allclose(got["atomic"][:n], ref["atomic_energies"][:n], rtol=tol)


def test_export_errors(tmp_path, capsys):
    config = _config("float32")
    model_dir = save_model(tmp_path / "m", config, make_model(config)[0](jax.random.PRNGKey(0)))
    assert (
        main(
            [
                "export",
                "--model",
                str(tmp_path / "nope"),
                "--out",
                str(tmp_path / "o"),
                "--atoms",
                "8",
                "--edges",
                "8",
            ]
        )
        == 1
    )
    assert "no trained model" in capsys.readouterr().err
    assert (
        main(
            [
                "export",
                "--model",
                str(model_dir),
                "--out",
                str(tmp_path / "o"),
                "--atoms",
                "0",
                "--edges",
                "8",
            ]
        )
        == 1
    )
    assert "capacities must be positive" in capsys.readouterr().err
    contract = json.loads(
        json.dumps(
            {
                "dtype": "float32",
                "n_atoms": 4,
                "n_edges": 8,
                "type_names": ["O", "Si"],
                "r_max": 3.0,
            }
        )
    )
    from allegro_jax.io.export import ExportError

    with pytest.raises(ExportError, match="at most 4 atoms"):
        export_inputs(random_periodic(np.random.default_rng(0), n=12), contract)
