"""``allegro-jax md``: run MD from a trained model and a structure file.

Writes ``OUT/trajectory.extxyz`` (one frame per chunk: positions, velocities in Å/fs, cell,
energy), ``OUT/thermo.csv`` (step, time_fs, T_K, E_pot, E_kin, E_tot, conserved,
pressure_bar, volume) and ``OUT/checkpoint.npz`` (positions, velocities, cell, step) after
every chunk; ``--restart`` continues from that checkpoint (velocities restored, the
thermostat/barostat chain variables restart from zero).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

THERMO_FIELDS = (
    "step",
    "time_fs",
    "temperature_K",
    "potential_energy",
    "kinetic_energy",
    "total_energy",
    "conserved",
    "pressure_bar",
    "volume",
)


def _run_md(args: argparse.Namespace) -> int:
    import ase.io
    import jax
    from jax_md import simulate

    from ..train.export import load_model
    from . import units
    from .integrate import make_simulation, positions_angstrom

    # 64-bit JAX on: float64 models need it; float32 models still run in float32
    jax.config.update("jax_enable_x64", True)
    config, params, _ = load_model(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atoms = ase.io.read(args.structure, index=args.index)
    checkpoint = out / "checkpoint.npz"
    start_step, velocities = 0, None
    if args.restart:
        ck = np.load(checkpoint)
        atoms.set_positions(ck["positions"])
        atoms.set_cell(ck["cell"], scale_atoms=False)
        velocities, start_step = ck["velocities"], int(ck["step"])
    species = np.array([config.type_names.index(s) for s in atoms.get_chemical_symbols()])
    periodic = bool(all(atoms.pbc))
    chunk = args.log_every * args.logs_per_chunk
    init_fn, apply_fn = make_simulation(
        config,
        params,
        species,
        cell=np.array(atoms.cell) if periodic else None,
        ensemble=args.ensemble,
        timestep_fs=args.dt,
        temperature_K=args.temperature,
        pressure_bar=args.pressure,
        friction_per_fs=args.friction,
        skin=args.skin,
        log_every=args.log_every,
        logs_per_chunk=args.logs_per_chunk,
    )
    rotation = np.eye(3)
    if periodic:
        from .jax_md import box_from_cell

        _, rotation = box_from_cell(np.array(atoms.cell))
    state = init_fn(jax.random.PRNGKey(args.seed), atoms.positions, velocities)
    thermo_path = out / "thermo.csv"
    mode = "a" if args.restart and thermo_path.exists() else "w"
    t0, done = time.perf_counter(), 0
    with open(thermo_path, mode) as thermo, open(out / "trajectory.extxyz", mode) as traj:
        if mode == "w":
            thermo.write(",".join(THERMO_FIELDS) + "\n")
        while done < args.steps:
            n = min(chunk, args.steps - done)
            n -= n % args.log_every
            if n == 0:
                break
            state, log = apply_fn(state, n)
            done += n
            for row in zip(*(np.asarray(getattr(log, f)) for f in THERMO_FIELDS), strict=True):
                row = (int(row[0]) + start_step, float(row[1]) + start_step * args.dt, *row[2:])
                thermo.write(",".join(f"{v:.10g}" for v in row) + "\n")
            thermo.flush()
            pos = np.asarray(positions_angstrom(state)) @ rotation.T
            vel = np.asarray(state.sim.momentum / state.sim.mass) / units.TIME_UNIT_FS
            vel = vel @ rotation.T
            frame = atoms.copy()
            frame.set_positions(pos)
            if args.ensemble == "npt_nose_hoover":
                frame.set_cell(np.asarray(simulate.npt_box(state.sim)).T @ rotation.T)
            frame.info["energy"] = float(np.asarray(log.potential_energy)[-1])
            frame.info["step"] = int(state.step) + start_step
            frame.arrays["velocities_A_per_fs"] = vel
            ase.io.write(traj, frame, format="extxyz")
            traj.flush()
            np.savez(
                checkpoint,
                positions=pos,
                velocities=vel,
                cell=np.array(frame.cell),
                step=int(state.step) + start_step,
            )
            rate = done / (time.perf_counter() - t0)
            print(
                f"\r[{done}/{args.steps}] T {float(log.temperature_K[-1]):7.1f} K  "
                f"E_tot {float(log.total_energy[-1]):.6f} eV  {rate:.1f} steps/s",
                end="",
                flush=True,
            )
    print()
    return 0


def add_md_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``allegro-jax md`` on a sub-parser collection."""
    p = subparsers.add_parser("md", help="run molecular dynamics with a trained model")
    p.add_argument("--model", required=True, help="run directory or model directory")
    p.add_argument("--structure", required=True, help="any file ASE can read")
    p.add_argument("--index", type=int, default=0, help="frame of the structure file")
    p.add_argument("--out", default="md_out")
    p.add_argument(
        "--ensemble",
        default="nvt_langevin",
        choices=("nve", "nvt_langevin", "nvt_nose_hoover", "npt_nose_hoover"),
    )
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--dt", type=float, default=0.5, help="timestep in fs")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--pressure", type=float, default=1.0, help="bar (NPT)")
    p.add_argument("--friction", type=float, default=0.01, help="Langevin, 1/fs")
    p.add_argument("--skin", type=float, default=1.0, help="Å")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--logs-per-chunk", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restart", action="store_true", help="continue from OUT/checkpoint.npz")
    p.set_defaults(func=_run_md)
    return p
