"""GPU (or CPU smoke) benchmark of one dtype: energy+forces and MD on a Si ladder, a
training step. Run by ``benchmarks/gpu/run.sh``; writes one JSON file.

    python benchmarks/gpu/bench.py --dtype float32 --budget-s 240 --out gpu_float32.json
    python benchmarks/gpu/bench.py --dtype float64 --cpu-smoke --out smoke_float64.json

Model: the trained Si potential of ``benchmarks/models/si_lmax1`` (the headline
architecture of ``benchmarks/run.py``: l_max 1, 2 layers, S 64, C 32, r_max 5 Å). Systems:
diamond Si supercells of ``8 n³`` atoms, rattled; energy+forces by the library's rule
(``ChunkPlanner``: block-wise above 8 blocks' worth of edges, 262,144 per block on a GPU,
so the largest sizes need far less memory; each row records its ``chunks``); MD is NVE
at 300 K, 1 fs (the lattice is near a minimum of the trained model, so it neither heats up
nor rebuilds the neighbour list every step). Each ladder goes up until the next size does
not fit in device memory (XLA's memory analysis of the compiled program against the
device's limit, or an out-of-memory error), or its predicted time would overrun the
stage's share of ``--budget-s``. Every stage catches its own errors, so a failure leaves
the others' numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

LADDER = [5, 10, 16, 24, 32, 40, 46, 52]  # n: 8 n^3 atoms, 1000 ... 1.1 M
SMOKE_LADDER = [2, 3]  # 64, 216 atoms (MD needs a box wider than 2 r_max: from 216)


def predicted_s(row: dict, atoms: int) -> float:
    """Time the next ladder size would take: set-up and compilation as the previous one's
    (``fixed_s``), the rest (graph building, timed calls or steps) linear in atoms."""
    scale = atoms / row["atoms"]
    return row["fixed_s"] + (row["s_total"] - row["fixed_s"]) * scale


class Clock:
    """The run's deadline and each stage's share of it."""

    def __init__(self, budget_s: float):
        self.t0 = time.perf_counter()
        self.budget_s = budget_s

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)


def device_info() -> dict:
    import jax

    d = jax.devices()[0]
    info = {
        "backend": jax.default_backend(),
        "device_kind": d.device_kind,
        "n_devices": jax.device_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
    }
    try:
        stats = d.memory_stats() or {}
        info["memory_limit_gib"] = stats.get("bytes_limit", 0) / 2**30 or None
    except Exception:  # CPU devices have no memory stats
        info["memory_limit_gib"] = None
    return info


def memory_gib(compiled) -> float | None:
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    total = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
    return total / 2**30


def is_oom(e: Exception) -> bool:
    text = str(e).lower()
    return "resource_exhausted" in text or "out of memory" in text


def timed_calls(fn, n_min: int = 3, min_time: float = 1.0, max_calls: int = 20) -> list[float]:
    ts: list[float] = []
    t_start = time.perf_counter()
    while len(ts) < max_calls and (len(ts) < n_min or time.perf_counter() - t_start < min_time):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return ts


def energy_forces_ladder(cfg, params, ladder, dtype, stage_s, limit_gib) -> list[dict]:
    import jax
    from bench_workers import si_atoms

    from allegro_jax import Structure, make_model
    from allegro_jax.data.padding import build_graph
    from allegro_jax.nn.model import ChunkPlanner

    _, apply_fn = make_model(cfg)
    planner = ChunkPlanner()  # the library's rule: block-wise above 8 blocks of edges
    params = jax.device_put(params)
    rows: list[dict] = []
    t_stage = time.perf_counter()
    for n in ladder:
        spent = time.perf_counter() - t_stage
        if rows and "s_total" in rows[-1] and spent + predicted_s(rows[-1], 8 * n**3) > stage_s:
            rows.append({"atoms": 8 * n**3, "skipped": "stage time budget"})
            break
        row: dict = {"atoms": 8 * n**3}
        t_row = time.perf_counter()
        try:
            g_np = build_graph(
                [Structure.from_ase(si_atoms(n))], cfg.type_names, cfg.r_max, dtype=dtype
            )
            row["edges"] = int(np.sum(g_np.edge_mask))
            row["graph_build_s"] = time.perf_counter() - t_row
            g = jax.device_put(g_np)
            chunks = planner(g_np)
            row["chunks"] = None if chunks is None else [chunks.atoms, chunks.edges]
            fn = jax.jit(lambda p, g, c=chunks: apply_fn(p, g, forces=True, chunks=c))
            t0 = time.perf_counter()
            compiled = fn.lower(params, g).compile()
            row["compile_s"] = time.perf_counter() - t0
            row["xla_memory_gib"] = memory_gib(compiled)
            if limit_gib and row["xla_memory_gib"] and row["xla_memory_gib"] > 0.95 * limit_gib:
                row["skipped"] = f"needs {row['xla_memory_gib']:.1f} GiB > device limit"
                rows.append(row)
                break
            jax.block_until_ready(compiled(params, g))
            ts = timed_calls(lambda c=compiled, g=g: jax.block_until_ready(c(params, g)))
            row.update(
                ms=1e3 * float(np.median(ts)),
                ms_min=1e3 * float(np.min(ts)),
                calls=len(ts),
                us_per_atom=1e6 * float(np.median(ts)) / row["atoms"],
            )
            row["s_total"] = time.perf_counter() - t_row
            row["fixed_s"] = row["s_total"] - row["graph_build_s"] - sum(ts) - 1e-3 * row["ms"]
            print(f"E+F {cfg.model_dtype} Si {row['atoms']}: {row['ms']:.2f} ms", flush=True)
        except Exception as e:  # keep the smaller sizes' numbers
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            row["out_of_memory"] = is_oom(e)
            rows.append(row)
            break
        rows.append(row)
        del g, compiled
    return rows


def md_ladder(cfg, params, ladder, stage_s, smoke: bool) -> list[dict]:
    from bench_workers import md_benchmark

    rows: list[dict] = []
    t_stage = time.perf_counter()
    for n in ladder:
        spent = time.perf_counter() - t_stage
        if rows and "s_total" in rows[-1] and spent + predicted_s(rows[-1], 8 * n**3) > stage_s:
            rows.append({"atoms": 8 * n**3, "skipped": "stage time budget"})
            break
        t_row = time.perf_counter()
        chunk = 20 if smoke else (100 if n <= 16 else 20)
        try:
            row = md_benchmark(cfg, params, n, steps=chunk if smoke else 2 * chunk, chunk=chunk)
            row["s_total"] = time.perf_counter() - t_row
            # all but the steps (timed ones and the warm-up chunk) is set-up and compilation
            steps_s = (row["steps"] + chunk) * row["ms_per_step"] / 1e3
            row["fixed_s"] = max(0.0, row["s_total"] - steps_s)
            print(f"MD Si {row['atoms']}: {row['steps_per_s']:.1f} steps/s", flush=True)
        except Exception as e:
            rows.append(
                {
                    "atoms": 8 * n**3,
                    "error": f"{type(e).__name__}: {str(e)[:300]}",
                    "out_of_memory": is_oom(e),
                }
            )
            break
        rows.append(row)
    return rows


def train_steps(cfg, params, dtype, cases) -> list[dict]:
    """One optimiser step (energy + force loss, grad, Adam, EMA) on a batch of rattled Si
    cells with synthetic labels (zero energy and forces: the cost does not depend on them)."""
    import jax
    from bench_workers import si_atoms

    from allegro_jax import Structure, make_model
    from allegro_jax.data.padding import budget_of, build_graph
    from allegro_jax.train.loss import Batch, make_labels
    from allegro_jax.train.optimizer import make_optimizer
    from allegro_jax.train.state import create_train_state
    from allegro_jax.train.step import make_train_step

    _, apply_fn = make_model(cfg)
    tx = make_optimizer(1e-3)
    step = make_train_step(apply_fn, tx, {"total_energy": 1.0, "forces": 1.0})
    rows = []
    for n_rep, batch in cases:
        row: dict = {"cell_atoms": 8 * n_rep**3, "batch": batch}
        try:
            structs = []
            for k in range(batch):
                atoms = si_atoms(n_rep)
                atoms.rattle(0.05, seed=k + 1)
                structs.append(
                    Structure.from_ase(atoms, energy=0.0, forces=np.zeros((len(atoms), 3)))
                )
            g = build_graph(structs, cfg.type_names, cfg.r_max, dtype=dtype)
            labels = make_labels(structs, budget_of(g), dtype=dtype)
            batch_ = jax.device_put(Batch(g, labels))
            state = create_train_state(jax.device_put(params), tx, 1e-3, jax.random.PRNGKey(1))
            t0 = time.perf_counter()
            compiled = step.lower(state, batch_).compile()
            row["compile_s"] = time.perf_counter() - t0
            row["xla_memory_gib"] = memory_gib(compiled)
            row["edges"] = int(np.sum(g.edge_mask))
            holder = [state]

            def one(c=compiled, b=batch_, holder=holder):
                s, m = c(holder[0], b)
                jax.block_until_ready(m)
                holder[0] = s

            one()
            ts = timed_calls(one, n_min=5)
            row.update(ms=1e3 * float(np.median(ts)), ms_min=1e3 * float(np.min(ts)), calls=len(ts))
            print(
                f"train {cfg.model_dtype} {batch} x Si {row['cell_atoms']}: {row['ms']:.2f} ms",
                flush=True,
            )
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--budget-s", type=float, default=240.0, help="this process's time")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    clock = Clock(args.budget_s)
    if args.dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)
    from bench_workers import load_si_model

    out: dict = {"dtype": args.dtype, "cpu_smoke": args.cpu_smoke, **device_info()}
    out["cpu_kernel_env"] = os.environ.get("ALLEGRO_JAX_CPU_KERNEL")
    cfg, params = load_si_model(args.dtype)
    dtype = np.float64 if args.dtype == "float64" else np.float32
    ladder = SMOKE_LADDER if args.cpu_smoke else LADDER
    # shares of what is left: energy+forces 40 %, MD 70 % of the rest, training the rest
    stages = [
        ("energy_forces", 0.4, lambda s: energy_forces_ladder(
            cfg, params, ladder, dtype, s, out["memory_limit_gib"])),
        ("md", 0.7, lambda s: md_ladder(cfg, params, ladder[1:] if args.cpu_smoke else ladder,
                                        s, args.cpu_smoke)),
        ("train_step", 1.0, lambda s: train_steps(
            cfg, params, dtype, [(2, 2)] if args.cpu_smoke else [(2, 5), (4, 5)])),
    ]  # fmt: skip
    for name, share, run in stages:
        stage_s = max(0.0, clock.left()) * share
        t0 = time.perf_counter()
        try:
            out[name] = run(stage_s)
        except Exception:
            out[name] = {"error": traceback.format_exc()[-1500:]}
        out[f"{name}_wall_s"] = time.perf_counter() - t0
        Path(args.out).write_text(json.dumps(out, indent=1))  # partial results survive
    out["wall_s"] = time.perf_counter() - clock.t0
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out} in {out['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
