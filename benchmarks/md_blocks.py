"""MD steps per second with the model evaluated a block of atoms at a time (what
``allegro-jax md`` runs since 2026-12-06, ``chunk_edges="auto"``) against the whole
neighbour list at once (before, ``chunk_edges=None``).

NVE MD of diamond Si at 300 K (``benchmarks/models/si_lmax1``, the trained model of the MD
row of ``benchmarks/run.py``, float32, 1 fs, skin 0.5 Å) for each system size: both
simulations start from the same state; after one warm-up chunk each (compilation), timed
chunks of ``--chunk`` steps alternate A B A B ... in one process; medians reported with
the neighbour-list rebuilds per 100 steps, the block layout and the load average. Both
trajectories are compared at the end (float32 rounding).

Usage (from the repository root)::

    python -m benchmarks.md_blocks --sizes 5 8 10 --rounds 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from importlib.metadata import version
from pathlib import Path

import jax
import numpy as np

from allegro_jax._malloc import malloc_tuning
from benchmarks.bench_workers import load_si_model, si_atoms
from experiments.runinfo import cpu_model

HERE = Path(__file__).resolve().parent


def compare(n_rep: int, rounds: int, chunk: int) -> dict:
    from allegro_jax.md.integrate import make_simulation, make_system, positions_angstrom

    cfg, params = load_si_model()
    atoms = si_atoms(n_rep, rattle=0.01)
    species = np.full(len(atoms), cfg.type_names.index("Si"))
    system = make_system(cfg, params, species, cell=np.asarray(atoms.cell), skin=0.5)
    sides = {}
    for name, chunk_edges in (("whole list", None), ("blocks", "auto")):
        init_fn, apply_fn = make_simulation(
            cfg,
            params,
            species,
            cell=np.asarray(atoms.cell),
            timestep_fs=1.0,
            temperature_K=300.0,
            skin=0.5,
            log_every=10,
            logs_per_chunk=max(1, chunk // 10),
            log_pressure=False,
            chunk_edges=chunk_edges,
            system=system,
        )
        state = init_fn(jax.random.PRNGKey(0), atoms.positions)
        # XLA's temporary memory of the force call alone
        energy_fn = (
            system.energy_fn if state.chunks is None else system.blockwise_energy_fn(state.chunks)
        )
        force = jax.jit(jax.grad(energy_fn)).lower(state.sim.position, state.neighbor).compile()
        memory = force.memory_analysis()
        t0 = time.perf_counter()
        state, _ = apply_fn(state, chunk)  # compiles
        jax.block_until_ready(state.sim.position)
        sides[name] = {
            "apply": apply_fn,
            "state": state,
            "first_chunk_s": time.perf_counter() - t0,
            "force_temp_mib": None if memory is None else memory.temp_size_in_bytes / 2**20,
            "times": [],
            "rebuilds": 0,
        }
    load0 = os.getloadavg()
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            side = sides[name]
            t0 = time.perf_counter()
            side["state"], log = side["apply"](side["state"], chunk)
            jax.block_until_ready(side["state"].sim.position)
            side["times"].append(time.perf_counter() - t0)
            side["rebuilds"] += int(np.sum(np.asarray(log.n_rebuilds)))
    load1 = os.getloadavg()
    pos = {k: np.asarray(positions_angstrom(s["state"])) for k, s in sides.items()}
    row = {
        "system": f"Si {len(atoms)}",
        "atoms": len(atoms),
        "neighbor_capacity": int(sides["blocks"]["state"].neighbor.idx.shape[1]),
        "steps_timed": rounds * chunk,
        "load_avg_start": [round(x, 2) for x in load0],
        "load_avg_end": [round(x, 2) for x in load1],
        "max_position_difference_A": float(np.max(np.abs(pos["blocks"] - pos["whole list"]))),
    }
    for name, side in sides.items():
        ms = 1e3 * np.median(side["times"]) / chunk
        chunks = side["state"].chunks
        row[name] = {
            "ms_per_step": ms,
            "steps_per_s": 1e3 / ms,
            "first_chunk_s": side["first_chunk_s"],
            "force_call_xla_temp_mib": side["force_temp_mib"],
            "rebuilds_per_100_steps": 100.0 * side["rebuilds"] / (rounds * chunk),
            "layout": None if chunks is None else {"atoms": chunks.atoms, "edges": chunks.edges},
            "replans": side["state"].n_replans,
        }
    row["speedup"] = row["whole list"]["ms_per_step"] / row["blocks"]["ms_per_step"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 8, 10], help="n³ cells")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=20, help="steps per timed chunk")
    parser.add_argument("--out", default=str(HERE / "results" / "md_blocks.json"))
    args = parser.parse_args()
    rows = []
    print(
        "| system | whole list ms/step | blocks ms/step | speedup | layout | "
        "force-call XLA temp MiB (whole / blocks) | rebuilds/100 | load |"
    )
    print("|---|---:|---:|---:|---|---|---:|---|")
    for n_rep in args.sizes:
        row = compare(n_rep, args.rounds, args.chunk)
        rows.append(row)
        lay = row["blocks"]["layout"]
        layout = "whole" if lay is None else f"{lay['atoms']} atoms, {lay['edges']} pairs"
        print(
            f"| {row['system']} | {row['whole list']['ms_per_step']:.1f} | "
            f"{row['blocks']['ms_per_step']:.1f} | {row['speedup']:.2f} | "
            f"{layout} | {row['whole list']['force_call_xla_temp_mib']:.0f} / "
            f"{row['blocks']['force_call_xla_temp_mib']:.0f} | "
            f"{row['blocks']['rebuilds_per_100_steps']:.1f} | "
            f"{row['load_avg_start'][0]}/{row['load_avg_end'][0]} |",
            flush=True,
        )
    out = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "command": "python -m benchmarks.md_blocks "
        + " ".join(
            [
                f"--sizes {' '.join(map(str, args.sizes))}",
                f"--rounds {args.rounds}",
                f"--chunk {args.chunk}",
            ]
        ),
        "hardware": f"{cpu_model()}, {os.cpu_count()} cores",
        "versions": {k: version(k) for k in ("jax", "jaxlib", "jax-md")},
        "malloc_tuning": malloc_tuning(),
        "what": "NVE, diamond Si at 300 K, benchmarks/models/si_lmax1 (float32), 1 fs, skin "
        "0.5 A; chunks of steps alternating A B A B in one process, median ms per step",
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
