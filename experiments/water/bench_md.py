"""MD speed of allegro-jax + jax-md on this machine: a 192-atom water box and 1000-atom Si.

Model: current generation, l_max 1, 2 layers, S 64, C 32, r_max 5 Å (random parameters;
speed does not depend on their values). NVE, dt 0.5 fs, skin 0.5 Å, neighbour list
rebuilt on demand inside the jitted loop. Prints a table and writes
``runs/bench_md_<dtype>.json`` (git-ignored); ``--record`` writes the committed
``bench_md_<dtype>.json`` next to this script instead.

Usage: python -m experiments.water.bench_md [--dtype float32] [--steps 200] [--record]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ase.build
import ase.io
import jax
import numpy as np

HERE = Path(__file__).resolve().parent
WATER = HERE.parents[2] / "shared" / "data" / "water" / "water_train.extxyz"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--si-steps", type=int, default=50)
    parser.add_argument(
        "--record",
        action="store_true",
        help="write the committed bench_md_<dtype>.json (default: runs/bench_md_<dtype>.json)",
    )
    args = parser.parse_args(argv)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    from allegro_jax.config import AllegroConfig
    from allegro_jax.md.integrate import make_simulation
    from allegro_jax.nn.model import make_model

    water = ase.io.read(WATER, index=0)
    si = ase.build.bulk("Si", "diamond", a=5.43, cubic=True).repeat(5)
    si.rattle(0.05, seed=0)
    rows = []
    for name, atoms, types, n_steps in (
        ("water 192", water, ("H", "O"), args.steps),
        ("Si 1000", si, ("Si",), args.si_steps),
    ):
        config = AllegroConfig(
            type_names=types,
            r_max=5.0,
            l_max=1,
            num_layers=2,
            num_scalar_features=64,
            num_tensor_features=32,
            avg_num_neighbors=30.0,
            per_type_energy_scales=0.1,
            model_dtype=args.dtype,
        )
        params = make_model(config)[0](jax.random.PRNGKey(0))
        species = np.array([types.index(s) for s in atoms.get_chemical_symbols()])
        init_fn, apply_fn = make_simulation(
            config,
            params,
            species,
            cell=np.array(atoms.cell),
            timestep_fs=0.5,
            temperature_K=300.0,
            skin=0.5,
            log_every=10,
            logs_per_chunk=n_steps // 10,
            log_pressure=False,
        )
        state = init_fn(jax.random.PRNGKey(1), atoms.positions)
        t0 = time.perf_counter()
        state, _ = apply_fn(state, n_steps)  # compile + run
        jax.block_until_ready(state.sim.position)
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        state, log = apply_fn(state, n_steps)
        jax.block_until_ready(state.sim.position)
        dt = time.perf_counter() - t0
        n_edges = int(np.sum(np.asarray(state.neighbor.idx[0]) < len(atoms)))
        steps_s = n_steps / dt
        rows.append(
            {
                "system": name,
                "n_atoms": len(atoms),
                "n_edges_in_list": n_edges,
                "dtype": args.dtype,
                "steps": n_steps,
                "steps_per_s": steps_s,
                "atom_steps_per_s": steps_s * len(atoms),
                "ns_per_day": steps_s * 0.5e-6 * 86400,
                "first_call_s": t_first,
                "rebuilds": int(np.sum(log.n_rebuilds)),
                "backend": jax.default_backend(),
            }
        )
        print(
            f"{name:10s} {args.dtype} {steps_s:8.2f} steps/s {steps_s * len(atoms):10.0f} "
            f"atom-steps/s {rows[-1]['ns_per_day']:.4f} ns/day (dt 0.5 fs), "
            f"{n_edges} listed pairs, first call {t_first:.1f} s",
            flush=True,
        )
    path = output_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2))
    print(f"written: {path}")


def output_path(args: argparse.Namespace) -> Path:
    """``bench_md_<dtype>.json`` next to this script with ``--record``, else in ``runs/``."""
    return (HERE if args.record else HERE / "runs") / f"bench_md_{args.dtype}.json"


if __name__ == "__main__":
    main()
