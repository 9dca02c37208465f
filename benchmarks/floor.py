"""Training step and energy+forces against the FLOP floor (issue 12's fixed yardstick).

    python benchmarks/floor.py              # ~5 min on 2 idle cores
    python benchmarks/floor.py --rounds 3   # quicker, noisier

The floor is a fixed yardstick: the XLA FLOP count of the same work in the formulation of
2026-11-28 (1.50 GFLOP for the cpu-variant train step, 14.1 GFLOP for the full-variant
train step, 60 GFLOP for energy+forces on Si 8000) divided by 190 GFLOP/s, the float32 FMA
peak of two AVX2 cores: 7.9 ms, 74 ms and 316 ms. A formulation that spends more FLOPs to
run faster does not move it. Workloads:

* train step, rMD17 aspirin, batch 5 (``experiments/rmd17/configs/aspirin.yaml``): the
  ``cpu`` variant (l_max 2, 2 layers, S 64, C 16) and the ``full`` one (l_max 2, 3 layers,
  S 128, C 64), energy + force loss, gradient, Adam, EMA;
* energy + forces, Si 8000 atoms (diamond, 0.05 Å rattle), l_max 1, 2 layers, S 64, C 32,
  r_max 5 Å: block-wise (``plan_atom_chunks``, blocks of ~2048 edges, the path the ASE
  calculator takes for large structures) and, as ``..._whole_graph``, the whole graph at
  once (the path before 2026-12-06).

Each runs in its own block of rounds after all of them are compiled (interleaving them made
the small step 2x slower: the large one evicts its caches). For each: median and minimum
ms, the ratio of the median to the floor, the compiled program's own XLA GFLOP (custom
calls excluded), the XLA GFLOP of the tensor products that run as CPU kernels (counted by
compiling the same work with the kernels off), compile time and the load average. Writes
``benchmarks/results/floor.json``, ``benchmarks/FLOOR.md`` and the ``floor_ratio`` key of
``benchmarks/results/latest.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # `python benchmarks/floor.py` finds experiments.runinfo

from experiments.runinfo import cpu_model, matmul_gflops  # noqa: E402

RESULTS = HERE / "results"
FLOOR_GFLOP = {
    "train_step_cpu_variant": 1.50,
    "train_step_full_variant": 14.1,
    "energy_forces_si_8000": 60.0,
    "energy_forces_si_8000_whole_graph": 60.0,
}
PEAK_GFLOPS = 190.0


def xla_gflop(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0)) / 1e9


def train_step_workload(variant: str, data_dir: Path):
    """``(fn, args)`` of one rMD17 aspirin training step, batch 5."""
    from allegro_jax.nn.model import make_model
    from allegro_jax.nn.xla_options import compiler_options
    from allegro_jax.train.config import load_config
    from allegro_jax.train.data import SplitData, epoch_permutation
    from allegro_jax.train.loop import complete_model_config, load_splits
    from allegro_jax.train.optimizer import make_optimizer
    from allegro_jax.train.state import create_train_state
    from allegro_jax.train.step import make_train_step

    configs = REPO / "experiments/rmd17/configs"
    overrides = {
        "dataset_file_name": str(data_dir / "rmd17_aspirin_train_01.npz"),
        "test_dataset_file_name": None,
        "n_train": 50,
        "n_val": 10,
    }
    if variant == "cpu":
        overrides |= yaml.safe_load((configs / "cpu_budget.yaml").read_text())
    config = load_config(configs / "aspirin.yaml", overrides)
    train_s, _ = load_splits(config)
    model_config, _ = complete_model_config(config.model, train_s)
    train = SplitData(train_s, model_config.type_names, model_config.r_max, 5, np.float32)
    init_fn, apply_fn = make_model(model_config)
    tx = make_optimizer(config.learning_rate)
    state = create_train_state(
        init_fn(jax.random.PRNGKey(0)), tx, config.learning_rate, jax.random.PRNGKey(1)
    )
    step = make_train_step(
        apply_fn,
        tx,
        config.loss_coeffs,
        compiler_options=compiler_options(),  # as `allegro-jax train`
    )
    batch = next(iter(train.batches(epoch_permutation(len(train), 0, 0))))
    return step, (state, batch), int(np.sum(batch.graph.edge_mask))


def si_workload(n_rep: int = 10, blocks: bool = True):
    from ase.build import bulk

    from allegro_jax import AllegroConfig, Structure, make_model, plan_atom_chunks
    from allegro_jax.data.padding import build_graph
    from allegro_jax.nn.xla_options import compiler_options

    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((n_rep,) * 3)
    atoms.rattle(0.05, seed=0)
    cfg = AllegroConfig(
        type_names=("Si",),
        r_max=5.0,
        l_max=1,
        num_layers=2,
        num_scalar_features=64,
        num_tensor_features=32,
        avg_num_neighbors=28.0,
    )
    structure = Structure(
        numbers=atoms.numbers,
        positions=atoms.positions,
        cell=np.asarray(atoms.cell),
        pbc=atoms.pbc,
    )
    graph = build_graph([structure], cfg.type_names, cfg.r_max)
    init_fn, apply_fn = make_model(cfg)
    chunks = plan_atom_chunks(graph) if blocks else None
    fn = jax.jit(lambda p, g: apply_fn(p, g, chunks=chunks), compiler_options=compiler_options())
    return fn, (init_fn(jax.random.PRNGKey(0)), graph), int(np.sum(graph.edge_mask))


def compile_both(build):
    """The compiled program of ``build()`` and the XLA GFLOP of its kernel tensor products."""
    from allegro_jax._malloc import ready_on_device
    from allegro_jax.nn import cpu_kernel

    fn, args, n_edges = build()
    # on the device before the calls: with host (numpy) inputs XLA:CPU runs the program on
    # a pool thread, whose temporaries above 64 MiB are mmapped and faulted in at every call
    # (the whole-graph Si row: 1070 ms before 2026-12-06, session 3; NOTES.md section 10)
    args = ready_on_device(args)
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    with cpu_kernel.use_cpu_kernel(False):  # a fresh jit, traced with the kernels off
        fn_xla, args_xla, _ = build()
        xla_only = xla_gflop(fn_xla.lower(*args_xla).compile())
    return compiled, args, n_edges, compile_s, xla_gflop(compiled), xla_only - xla_gflop(compiled)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9, help="timed rounds (after one warm-up)")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared/data/rmd17"))
    ap.add_argument("--tag", default="floor", help="results/<tag>.json (and FLOOR.md if 'floor')")
    args = ap.parse_args()

    from allegro_jax._malloc import malloc_tuning  # (importing allegro_jax applies them)
    from allegro_jax.nn import cpu_kernel

    data_dir = Path(args.data_dir)
    load_before = os.getloadavg()
    workloads = {}
    for name, build in {
        "train_step_cpu_variant": lambda: train_step_workload("cpu", data_dir),
        "train_step_full_variant": lambda: train_step_workload("full", data_dir),
        "energy_forces_si_8000": si_workload,
        "energy_forces_si_8000_whole_graph": lambda: si_workload(blocks=False),
    }.items():
        print(f"[floor] compiling {name} ...", flush=True)
        compiled, fargs, n_edges, compile_s, gflop, kernel_gflop = compile_both(build)
        workloads[name] = dict(
            compiled=compiled,
            args=fargs,
            times=[],
            compile_s=compile_s,
            gflop=gflop,
            kernel_gflop=kernel_gflop,
            edges=n_edges,
        )
    for w in workloads.values():  # each in its own block: no cache or allocator
        w["load_before"] = os.getloadavg()  # interference between the workloads
        for r in range(args.rounds + 1):  # round 0 warms up
            t0 = time.perf_counter()
            jax.block_until_ready(w["compiled"](*w["args"]))
            if r:
                w["times"].append(time.perf_counter() - t0)
        w["load_after"] = os.getloadavg()
    load_after = os.getloadavg()

    rows = {}
    for name, w in workloads.items():
        floor_ms = 1e3 * FLOOR_GFLOP[name] / PEAK_GFLOPS
        median = 1e3 * float(np.median(w["times"]))
        rows[name] = {
            "ms_median": round(median, 2),
            "ms_min": round(1e3 * min(w["times"]), 2),
            "floor_ms": round(floor_ms, 2),
            "ratio_to_floor": round(median / floor_ms, 2),
            "xla_gflop": round(w["gflop"], 3),
            "kernel_tp_xla_gflop": round(w["kernel_gflop"], 3),
            "compile_s": round(w["compile_s"], 1),
            "edges": w["edges"],
            "rounds": args.rounds,
            "load_average": [round(x, 2) for x in w["load_after"]],
        }
    blocked, whole = (
        rows.get("energy_forces_si_8000"),
        rows.get("energy_forces_si_8000_whole_graph"),
    )
    if blocked and whole:  # XLA's cost analysis counts a loop body once, not per block
        blocked["xla_gflop_loop_body_once"] = blocked["xla_gflop"]
        blocked["xla_gflop"] = whole["xla_gflop"]  # the same per-edge arithmetic
        blocked["kernel_tp_xla_gflop"] = whole["kernel_tp_xla_gflop"]
        blocked["speedup_over_whole_graph"] = round(whole["ms_median"] / blocked["ms_median"], 2)
    import jaxlib

    report = {
        "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/floor.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "hardware": f"{cpu_model()}, {os.cpu_count()} cores",
        "matmul_gflops": matmul_gflops(),
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
        },
        "cpu_kernel": cpu_kernel.enabled(),
        "malloc_tuning": malloc_tuning(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "floor": {"gflop": FLOOR_GFLOP, "peak_gflops": PEAK_GFLOPS},
        "workloads": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.tag}.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    print(table)
    if args.tag == "floor":
        (HERE / "FLOOR.md").write_text(table)
        latest = RESULTS / "latest.json"
        merged = json.loads(latest.read_text()) if latest.exists() else {}
        merged["floor_ratio"] = {k: v["ratio_to_floor"] for k, v in rows.items()}
        merged["floor_ratio_source"] = "benchmarks/results/floor.json"
        latest.write_text(json.dumps(merged, indent=1))  # as benchmarks/run.py writes it


def markdown(rep: dict) -> str:
    lines = [
        "# The FLOP floor (generated by `benchmarks/floor.py`)",
        "",
        f"- date: {rep['date']}; command: `{rep['command']}`",
        f"- hardware: {rep['hardware']}; a 2048² float32 product at "
        f"{rep.get('matmul_gflops')} GFLOP/s (the yardstick below is fixed: 190); load "
        "average before/after: "
        f"{rep['load_average_before']} / {rep['load_average_after']}",
        f"- versions: {rep['versions']}; CPU tensor-product kernels: {rep['cpu_kernel']}; "
        f"malloc settings (`allegro_jax._malloc`): {rep.get('malloc_tuning', 'none')}",
        "- floor = fixed GFLOP of the work (2026-11-28 formulation) / 190 GFLOP/s; ms = median "
        "of the timed rounds; own GFLOP = XLA's count of today's program (custom calls "
        "excluded) + kernel TP = XLA's count of the tensor products that run as kernels; the "
        "block-wise Si row lists the whole graph's count (the same per-edge arithmetic: XLA "
        "counts a loop body once)",
        "",
        "| workload | edges | ms (median) | ms (min) | floor ms | × floor | own GFLOP | kernel TP "
        "GFLOP | compile s | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rep["workloads"].items():
        lines.append(
            f"| {name} | {r['edges']} | {r['ms_median']} | {r['ms_min']} | {r['floor_ms']} | "
            f"{r['ratio_to_floor']} | {r['xla_gflop']} | {r['kernel_tp_xla_gflop']} | "
            f"{r['compile_s']} | {r['load_average'][0]} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
