"""Model-core measurements: energy+forces call times and compilations per random batch.

Prints a markdown table and writes ``benchmarks/results/model_core.json``.

    python benchmarks/model_core.py [--repeats 7] [--batches 100]

Timings: median of ``--repeats`` calls after one warm-up (compile) call, float32, the
allegro tutorial model (l_max 1, 2 layers, S 64, C 32, r_max 5 Å).
Compilations: ``--batches`` batches of 1–32 random aspirin frames or 1–4 water boxes, each
padded by ``build_graph``'s bucketed budget; every distinct budget is one jit compilation
(counted with a trace counter, not inferred).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import ase.build
import ase.io
import jax
import numpy as np

from allegro_jax import AllegroConfig, Structure, make_model
from allegro_jax.data.padding import budget_of, build_graph, precompute_graph_inputs

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def aspirin_frames(n: int) -> list[Structure]:
    d = np.load(SHARED / "rmd17" / "rmd17_aspirin_train_01.npz")
    return [Structure(numbers=d["nuclear_charges"], positions=d["coords"][i]) for i in range(n)]


def water_boxes(n: int) -> list[Structure]:
    frames = ase.io.read(SHARED / "water" / "water_train.extxyz", index=f":{n}")
    return [Structure.from_ase(a) for a in frames]


def median_ms(fn, *args, repeats: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(ts)), compile_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--l-max", type=int, default=1)
    ap.add_argument("--S", type=int, default=64, help="num_scalar_features (and MLP widths)")
    ap.add_argument("--C", type=int, default=32, help="num_tensor_features")
    ap.add_argument("--only", nargs="*", help="subset of systems to time")
    ap.add_argument("--tag", default="model_core")
    args = ap.parse_args()

    S = args.S
    cfg = AllegroConfig(
        type_names=("H", "C", "O", "Si"),
        r_max=5.0,
        l_max=args.l_max,
        num_layers=2,
        num_scalar_features=S,
        num_tensor_features=args.C,
        scalar_embed_mlp_hidden_layers_width=S,
        allegro_mlp_hidden_layers_width=S,
        readout_mlp_hidden_layers_width=S,
        avg_num_neighbors=20.0,
    )
    init_fn, apply_fn = make_model(cfg)
    params = init_fn(jax.random.PRNGKey(0))
    n_params = sum(int(x.size) for x in jax.tree.leaves(params))
    traces = []

    def counted(p, g):
        traces.append(1)
        return apply_fn(p, g)

    f = jax.jit(counted)

    si = ase.build.bulk("Si", "diamond", a=5.43, cubic=True).repeat((5, 5, 5))
    systems = {
        "aspirin x1": aspirin_frames(1),
        "aspirin x32": aspirin_frames(32),
        "water 192 atoms": water_boxes(1),
        "Si 1000 atoms": [Structure.from_ase(si)],
    }
    rows = []
    for name, structs in systems.items():
        if args.only and name not in args.only:
            continue
        g = build_graph(structs, cfg.type_names, cfg.r_max)
        ms, comp = median_ms(f, params, g, repeats=args.repeats)
        rows.append(
            {
                "system": name,
                "atoms": int(np.sum(g.node_mask)),
                "edges": int(np.sum(g.edge_mask)),
                "budget": list(budget_of(g).__dict__.values()),
                "energy_forces_ms": round(ms, 2),
                "compile_s": round(comp, 2),
            }
        )

    # compilations for random batch sizes
    rng = np.random.default_rng(0)
    asp = precompute_graph_inputs(aspirin_frames(1000), cfg.type_names, cfg.r_max)
    wat = precompute_graph_inputs(water_boxes(320), cfg.type_names, cfg.r_max)
    before = len(traces)
    budgets = set()
    for _ in range(args.batches):
        if rng.random() < 0.5:
            idx = rng.choice(len(asp), size=int(rng.integers(1, 33)), replace=False)
            batch = [asp[i] for i in idx]
        else:
            idx = rng.choice(len(wat), size=int(rng.integers(1, 5)), replace=False)
            batch = [wat[i] for i in idx]
        g = build_graph(batch, cfg.type_names, cfg.r_max)
        budgets.add(budget_of(g))
        jax.block_until_ready(f(params, g))
    compilations = len(traces) - before

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "hardware": f"{platform.processor() or 'cpu'}, "
        f"{jax.device_count()} {jax.default_backend()} device(s), 2 cores",
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        "model": {
            "l_max": args.l_max,
            "num_layers": 2,
            "S": S,
            "C": args.C,
            "r_max": 5.0,
            "dtype": "float32",
            "n_params": n_params,
        },
        "timings": rows,
        "random_batches": {
            "n_batches": args.batches,
            "distinct_budgets": len(budgets),
            "jit_compilations": compilations,
        },
    }
    print("| system | atoms | edges | energy+forces (ms) | compile (s) |\n|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['system']} | {r['atoms']} | {r['edges']} | {r['energy_forces_ms']} "
            f"| {r['compile_s']} |"
        )
    print(
        f"\n{args.batches} random aspirin/water batches: {len(budgets)} distinct budgets, "
        f"{compilations} jit compilations"
    )
    out = Path(__file__).parent / "results" / f"{args.tag}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
