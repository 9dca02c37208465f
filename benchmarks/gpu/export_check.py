"""The ``allegro-jax export`` artefact's cuda lowering, run on a GPU with jax alone.

Here (any machine with this project)::

    python benchmarks/gpu/export_check.py make .gpu-export

exports the trained Si model (``benchmarks/models/si_lmax1``) for diamond Si 512 atoms in
float32 and float64 (cpu + cuda lowerings), with the padded inputs and the model's
energy, forces and virial computed here in float64 by :func:`load_model`. On the GPU
machine (jax with CUDA; nothing of this project is imported)::

    python3 benchmarks/gpu/export_check.py check .gpu-export --out $OUT/export_check.json

deserializes each artefact, runs it on the default device and prints and writes the
largest deviations from the expected values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "benchmarks" / "models" / "si_lmax1"
NAMES = ("positions", "cell", "species", "atom_mask", "edge_index", "edge_shift", "edge_mask")


def make(folder: Path) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    from ase.build import bulk

    from allegro_jax.data.graph import Structure
    from allegro_jax.io.export import CONTRACT, export_inputs, make_export_fn, write_export
    from allegro_jax.io.model import load_model

    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((4, 4, 4))
    atoms.rattle(0.05, seed=1)
    config, params, energy_fn = load_model(MODEL)
    config64 = dataclasses.replace(config, model_dtype="float64")
    params64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    structure = Structure.from_ase(atoms)
    for dtype in ("float32", "float64"):
        out = write_export(
            folder / dtype,
            config,
            params,
            n_atoms=600,
            n_edges=24000,
            dtype=dtype,
            platforms=("cpu", "cuda"),
        )
        contract = json.loads((out / CONTRACT).read_text())
        inputs = export_inputs(structure, contract)
        np.savez(out / "inputs.npz", **dict(zip(NAMES, inputs, strict=True)))
    # expected: the float64 model on this machine, through the same artefact contract
    fn = jax.jit(make_export_fn(config64, params64, "float64"))
    contract = json.loads((folder / "float64" / CONTRACT).read_text())
    inputs = export_inputs(structure, contract)
    e, ae, f, v = (np.asarray(x) for x in fn(*inputs))
    np.savez(folder / "expected.npz", energy=e, atomic_energies=ae, forces=f, virial=v)
    ref = energy_fn(atoms, stress=True)
    print(f"exported to {folder}; E = {float(e):.6f} eV (load_model: {ref['energy']:.6f} eV)")


def check(folder: Path, out: Path | None) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    exp = np.load(folder / "expected.npz")
    report = {
        "device": str(jax.devices()[0]),
        "device_kind": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "runs": {},
    }
    ok = True
    for dtype, tol in (("float32", 1e-5), ("float64", 1e-10)):
        exported = jax.export.deserialize(
            bytearray((folder / dtype / "allegro.jaxexport").read_bytes())
        )
        data = np.load(folder / dtype / "inputs.npz")
        args = [data[n] for n in NAMES]
        e, ae, f, v = (np.asarray(x, np.float64) for x in exported.call(*args))
        fmax = float(np.max(np.abs(exp["forces"])))
        row = {
            "platforms": list(exported.platforms),
            "energy_rel": float(abs(e - exp["energy"]) / abs(exp["energy"])),
            "forces_max_abs_over_max": float(np.max(np.abs(f - exp["forces"])) / fmax),
            "virial_rel": float(np.max(np.abs(v - exp["virial"])) / np.max(np.abs(exp["virial"]))),
            "tolerance": tol,
        }
        row["pass"] = all(
            row[k] <= tol for k in ("energy_rel", "forces_max_abs_over_max", "virial_rel")
        )
        ok &= row["pass"]
        report["runs"][dtype] = row
        print(dtype, json.dumps(row))
    report["pass"] = ok
    if out is not None:
        out.write_text(json.dumps(report, indent=1))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("mode", choices=("make", "check"))
    p.add_argument("folder", type=Path)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.mode == "make":
        make(args.folder)
        return 0
    return check(args.folder, args.out)


if __name__ == "__main__":
    sys.exit(main())
