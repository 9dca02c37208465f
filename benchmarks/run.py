"""allegro-jax vs nequip-allegro 0.8.3 and InstaDeep mlip, side by side, calls interleaved.

    python benchmarks/run.py            # full run (~25-35 min on 2 idle cores)
    python benchmarks/run.py --quick    # smoke version (~5 min; writes the tag quick_smoke)

Options: ``--ladder 1000 4096 ...`` (Si atom counts, each 8 n³), ``--ref-time-cap``/
``--ours-time-cap`` (skip a side whose predicted time per call exceeds it), ``--threads``,
``--no-lmax2``, ``--no-peers``, ``--no-compile-train``, ``--min-rounds``, ``--budget-s``.

Fairness: for every system, ONE subprocess (``bench_workers.py compare``) holds every side
(ours, the reference eager and AOT, the mlip peers), each on the same edges, and calls them
in rounds, one call per side per round, the order rotated each round (A B C, B C A, ...),
at least ``--min-rounds`` (7) rounds; a side's time is its median over the rounds. All
sides compute energy, forces and the virial/stress (nequip always computes the virial; our
``ours`` side has ``stress=True``, ``ours_nostress`` is shown for information). The
reference model is built with a fixed seed; ours is its ``from_nequip`` import, so both
compute the same function (energies compared in the run). The reference AOT artefact
(``nequip-compile``'s ``ase`` target) is compiled with one thread and timed at 1 and at 2
torch threads; its best is used. The training step (aspirin batch 5, energy + force loss)
is interleaved in pairs, ours with each reference side in turn (the reference's
torch.compile step takes ~6 s per call, against ~0.1 s eager, and slowed the call after it
in a common rotation). ``OMP_WAIT_POLICY=PASSIVE`` everywhere; every row records the load
average at its start and end and each side's back-to-back median (``solo_ms``), so that
torch and XLA slowing each other down would show.

Writes ``benchmarks/results/<tag>.json`` (merged into an existing file: keys this script
does not write, e.g. ``floor_ratio`` from ``benchmarks/floor.py``, are kept),
``benchmarks/RESULTS.md`` (``RESULTS_<tag>.md`` for another tag) and the Si ladder plot.
Speedups are time of theirs / time of ours (> 1: ours faster), per system from medians;
``inference_speedup_vs_reference`` and ``peer_speedup`` are geometric means over aspirin
×1, aspirin ×32, water 192 and Si 1000 with the headline (l_max 1) model.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from bench_workers import PEERS  # noqa: E402

MODELS = {
    "lmax1": {"l_max": 1, "num_layers": 2, "S": 64, "C": 32, "r_max": 5.0, "seed": 0},
    "lmax2": {"l_max": 2, "num_layers": 2, "S": 128, "C": 64, "r_max": 5.0, "seed": 0},
}
UNTUNED_MALLOC_ABOVE_ATOMS = 20000
HEADLINE = ["aspirin x1", "aspirin x32", "water 192", "Si 1000"]
OURS_SIDES = ["ours", "ours_nostress"]
REF_SIDES = ["ref_eager", "ref_aot_t1", "ref_aot_t2"]
SIDE_LABELS = {
    "ours": "ours",
    "ours_nostress": "ours (no stress)",
    "ref_eager": "ref eager",
    "ref_aot_t1": "ref AOT 1 thread",
    "ref_aot_t2": "ref AOT 2 threads",
    "mlip_mace": "mlip MACE",
    "mlip_nequip": "mlip NequIP",
}


def si_name(n_atoms: int) -> str:
    n_rep = round((n_atoms / 8) ** (1 / 3))
    if 8 * n_rep**3 != n_atoms:
        raise SystemExit(f"--ladder sizes must be 8 n^3 atoms (diamond cubic cells), got {n_atoms}")
    return f"Si {n_atoms}"


def run_worker(kind: str, job: dict, workdir: Path, env_extra: dict, timeout: float) -> dict:
    name = job.get("name", kind)
    job_path = workdir / f"{name}.job.json"
    out_path = workdir / f"{name}.out.json"
    job_path.write_text(json.dumps(job))
    env = dict(os.environ)
    env.update({k: str(v) for k, v in env_extra.items()})
    cmd = [sys.executable, str(HERE / "bench_workers.py"), kind, "--job", str(job_path)]
    cmd += ["--out", str(out_path)]
    print(f"[run] {name} ...", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        print(f"[run] {name}: timed out after {timeout:.0f} s", flush=True)
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or "")[-3000:]
        print(f"[run] {name}: FAILED (rc {proc.returncode})\n{tail}", flush=True)
        return {"error": f"rc {proc.returncode}: {tail[-800:]}"}
    res = json.loads(out_path.read_text())
    sides = res.get("sides", {})
    summary = ", ".join(f"{k} {v['ms']:.1f}" for k, v in sides.items())
    print(f"[run] {name}: done in {wall:.0f} s  (ms: {summary})", flush=True)
    res["worker_process_s"] = wall
    return res


def geomean(xs):
    xs = [x for x in xs if x is not None and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def ratio(theirs, ours):
    return None if theirs is None or not ours else theirs / ours


def check_agreement(checks: dict) -> dict:
    """Relative energy/force differences of ours vs each reference side (same weights)."""
    import numpy as np

    out = {}
    o = checks.get("ours")
    for side in REF_SIDES:
        r = checks.get(side)
        if o is None or r is None:
            continue
        f_o, f_r = np.asarray(o["forces"]), np.asarray(r["forces"])
        out[side] = {
            "energy_rel": abs(o["energy_sum"] - r["energy_sum"]) / max(abs(r["energy_sum"]), 1e-12),
            "forces_rel": float(np.abs(f_o - f_r).max() / max(np.abs(f_r).max(), 1e-12)),
        }
    return out


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def capped_sides(sides: list, prev: dict | None, atoms: int, caps: dict) -> tuple[list, dict]:
    """Drop the sides whose time per call, extrapolated linearly in atoms from the previous
    (smaller) Si system, would exceed their cap."""
    if prev is None:
        return sides, {}
    keep, skipped = [], {}
    for side in sides:
        row = prev["sides"].get(side)
        if row is None:  # skipped before: stays skipped
            skipped[side] = prev.get("skipped", {}).get(side, "skipped at a smaller size")
            continue
        cap = caps["ours"] if side.startswith("ours") else caps["ref"]
        pred_s = row["ms"] / 1e3 * atoms / prev["atoms"]
        if pred_s > cap:
            skipped[side] = f"predicted {pred_s:.1f} s per call > {cap} s"
        else:
            keep.append(side)
    return keep, skipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small smoke run (~5 min)")
    ap.add_argument("--ladder", type=int, nargs="*", help="Si sizes (atoms, 8 n^3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ours-time-cap", type=float, default=20.0, help="s per call")
    ap.add_argument("--ref-time-cap", type=float, default=10.0, help="s per call (ref, peers)")
    ap.add_argument("--no-lmax2", action="store_true", help="skip the l_max 2 model")
    ap.add_argument(
        "--models", nargs="*", choices=sorted(MODELS), help="models to run (default: all)"
    )
    ap.add_argument("--no-compile-train", action="store_true", help="skip torch.compile train")
    ap.add_argument("--no-peers", action="store_true", help="skip the InstaDeep mlip peers")
    ap.add_argument("--min-rounds", type=int, default=7, help="interleaved rounds, at least")
    ap.add_argument("--budget-s", type=float, help="timed seconds per system (default 20; 3)")
    ap.add_argument("--md-atoms", type=int, help="Si atoms of the MD run (default 1000; 512)")
    ap.add_argument("--md-steps", type=int, help="timed MD steps (default 500; 100)")
    ap.add_argument("--no-aot", action="store_true", help="skip the reference's AOT sides")
    ap.add_argument(
        "--workdir",
        help="keep the prepared models and the AOT artefact here and reuse them when present "
        "(default: a fresh temporary folder, everything rebuilt)",
    )
    ap.add_argument("--tag", help="results name (default latest; quick_smoke with --quick)")
    args = ap.parse_args()

    quick = args.quick
    tag = args.tag or ("quick_smoke" if quick else "latest")
    ladder = args.ladder or ([1000] if quick else [1000, 4096, 8000, 17576, 32768])
    ladder_names = [si_name(n) for n in sorted(set(ladder) | {1000})]
    timing = {
        "min_rounds": args.min_rounds,
        "max_rounds": 10 if quick else 30,
        "budget_s": args.budget_s or (3.0 if quick else 20.0),
        "solo_calls": 2 if quick else 3,
    }
    caps = {"ours": args.ours_time_cap, "ref": args.ref_time_cap}
    env = {
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": args.threads,
        "MKL_NUM_THREADS": args.threads,
        "BENCH_THREADS": args.threads,
        "PYTHONWARNINGS": "ignore",
    }
    load_before = load_avg()
    t_start = time.perf_counter()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="allegro_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    machine = run_worker("machine", {"name": "machine"}, workdir, env, 300)

    def prepared(kind: str, job: dict, files: list, env_: dict) -> dict:
        """``run_worker``, or the result of an earlier run in ``--workdir`` whose files exist."""
        done = workdir / f"{job['name']}.out.json"
        if args.workdir and done.exists() and all(Path(f).exists() for f in files):
            print(f"[run] {job['name']}: reusing {done}", flush=True)
            return {**json.loads(done.read_text()), "reused": True}
        return run_worker(kind, job, workdir, env_, 900)

    env["TORCHINDUCTOR_CACHE_DIR"] = str(workdir / "inductor_cache")  # honest compile times
    models = ["lmax1"] + ([] if quick or args.no_lmax2 else ["lmax2"])
    if args.models:
        models = [m for m in MODELS if m in args.models]
    peers = [] if args.no_peers else list(PEERS)
    if peers and importlib.util.find_spec("mlip") is None:
        print("[run] mlip is not installed (pip install -e '.[peers]'): no peers", flush=True)
        peers = []
    report: dict = {"models": {}}
    for key in models:
        spec = MODELS[key]
        headline_model = key == "lmax1"
        systems = ["aspirin x32", "Si 1000"]
        if headline_model:
            systems = HEADLINE + [n for n in ladder_names if n not in HEADLINE]
        base = {"spec": spec, "params_path": str(workdir / f"{key}.pkl")}
        base["pt2_path"] = str(workdir / f"{key}.nequip.pt2")
        model_peers = peers if headline_model else []
        base["peer_params_path"] = {p: str(workdir / f"{key}.{p}.pkl") for p in model_peers}
        prep_files = [base["params_path"], *base["peer_params_path"].values()]
        prep = prepared("prepare", {**base, "name": f"{key}-prepare"}, prep_files, env)
        if "error" in prep:
            raise SystemExit(f"could not build the models: {prep['error']}")
        aot = {"error": "--no-aot"}
        if not args.no_aot:
            aot = prepared(
                "aot",
                {**base, "name": f"{key}-aot-compile"},
                [base["pt2_path"]],
                {**env, "OMP_NUM_THREADS": 1, "BENCH_THREADS": 1},
            )
        ref_sides = REF_SIDES if "error" not in aot else ["ref_eager"]
        rows, prev = {}, None
        for s in systems:
            sides = OURS_SIDES + ref_sides + (model_peers if s in HEADLINE else [])
            atoms = int(s.split()[1]) if s.startswith("Si ") else None
            skipped = {}
            if atoms is not None and prev is not None:
                sides, skipped = capped_sides(sides, prev, atoms, caps)
            job = {**base, **timing, "name": f"{key}-{s.replace(' ', '_')}", "system": s}
            env_s = env
            if atoms is not None and atoms > UNTUNED_MALLOC_ABOVE_ATOMS:
                # every side in one process; with the settings freed memory stays with the
                # process and Si 32768 was killed for memory (benchmarks/NOTES.md, 9)
                env_s = {**env, "ALLEGRO_JAX_TUNE_MALLOC": "0"}
            res = run_worker("compare", {**job, "sides": sides}, workdir, env_s, 1800)
            res["skipped"] = skipped
            rows[s] = res
            if atoms is not None and "error" not in res:
                prev = res
        train = None
        if headline_model:
            train_sides = ["ours", "ref_eager"]
            if not quick and not args.no_compile_train:
                train_sides.append("ref_compile")
            train = run_worker(
                "train",
                {**base, **timing, "name": f"{key}-train", "sides": train_sides, "train_batch": 5},
                workdir,
                env,
                1200,
            )
        md = None
        if headline_model:
            md_atoms = args.md_atoms or (512 if quick else 1000)
            md_steps = args.md_steps or (100 if quick else 500)
            n_rep = round((md_atoms / 8) ** (1 / 3))
            md = run_worker(
                "md",
                {"name": f"{key}-md", "md_n_rep": n_rep, "md_steps": md_steps},
                workdir,
                env,
                1200,
            )
        report["models"][key] = summarize_model(spec, prep, aot, rows, train, md)

    head = report["models"][models[0]]
    wall = time.perf_counter() - t_start
    argv = sys.argv[1:]
    if args.workdir:  # a machine path: recorded as a placeholder
        argv = [a if a != args.workdir else "DIR" for a in argv]
        argv = [a.split("=", 1)[0] + "=DIR" if a.startswith("--workdir=") else a for a in argv]
    cmd = "python benchmarks/run.py " + " ".join(argv)
    report.update(
        {
            "date": datetime.date.today().isoformat(),
            "command": cmd.strip(),
            "quick": quick,
            "wall_s": round(wall, 1),
            "hardware": {
                "cpu": machine.get("cpu") or platform.processor() or "unknown CPU",
                "cores": os.cpu_count(),
                "matmul_gflops": machine.get("matmul_gflops"),
                "note": "2-core CPU, shared box",
                "load_avg_before": load_before,
                "load_avg_after": load_avg(),
            },
            "settings": {
                "dtype": "float32",
                "threads": args.threads,
                "env": {k: v for k, v in env.items() if k != "TORCHINDUCTOR_CACHE_DIR"},
                "timing": timing,
                "timing_text": "one process per system holding every side; after one warm-up "
                f"call and {timing['solo_calls']} back-to-back calls per side (solo_ms), "
                f"rounds of one call per side, order rotated each round, >= "
                f"{timing['min_rounds']} rounds (up to {timing['max_rounds']}, enough for "
                f"{timing['budget_s']} s); median over the rounds",
                "models": {k: MODELS[k] for k in models},
                "model_common": "2 layers, 8 Bessel, p=6, parity, tp_path_channel_coupling, "
                "all MLPs 1 hidden layer of width S, avg_num_neighbors 20, "
                "types H C O Si",
                "work": "energy + forces + virial/stress on every side (nequip always "
                "computes the virial; ours with stress=True; mlip with "
                "Properties(stress=True)); 'ours (no stress)' for information",
                "reference_aot": "nequip aot_export_model with the `ase` target (single frame, "
                "aspirin x32 as one 672-atom frame), compiled with 1 thread, run at 1 and "
                "at 2 torch threads (the faster is the reference's AOT time)",
                "peers": {p: PEERS[p] for p in peers},
                "caps": caps,
            },
            "inference_speedup_vs_reference": head["inference_speedup_geomean"],
            "inference_speedup_per_system": head["speedup_per_system"],
            "train_step_speedup_vs_reference": head.get("train_step_speedup"),
            "peer_speedup": head.get("peer_speedup"),
            "peer_params": head.get("peer_params"),
            "md_step": head.get("md_step"),
            "speedup_definition": "their median time / our median time, same process, "
            "calls interleaved, all with stress; inference and peer headlines = geometric "
            "mean over " + ", ".join(HEADLINE) + " (l_max 1 model); reference = best of "
            "eager and AOT (1 or 2 threads); training = best of eager and torch.compile",
        }
    )
    versions = {"python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "flax", "e3nn-jax", "jax-md", "torch", "nequip"):
        versions[pkg] = package_version(pkg)
    versions["nequip-allegro"] = package_version("nequip-allegro")
    versions["mlip"] = package_version("mlip")
    report["versions"] = versions
    RESULTS.mkdir(exist_ok=True)
    json_path = RESULTS / f"{tag}.json"
    merged = json.loads(json_path.read_text()) if json_path.exists() else {}
    merged.update(report)
    md_name = "RESULTS.md" if tag == "latest" else f"RESULTS_{tag}.md"
    png = RESULTS / ("scaling_atoms.png" if tag == "latest" else f"scaling_atoms_{tag}.png")
    try:
        plot_scaling(head, png)
        merged["plot"] = str(png.relative_to(HERE))
    except ImportError:
        merged["plot"] = None
    json_path.write_text(json.dumps(merged, indent=1))
    (HERE / md_name).write_text(markdown(merged))
    print((HERE / md_name).read_text())
    print(f"wrote {json_path}, {HERE / md_name}, {png} in {wall:.0f} s")


def best_of(row: dict, sides) -> tuple[float | None, str | None]:
    got = [(row[s]["ms"], s) for s in sides if s in row]
    return min(got) if got else (None, None)


def summarize_model(spec, prep, aot, rows, train, md) -> dict:
    table = {}
    agreement = {}
    for s, res in rows.items():
        sides = res.get("sides", {})
        ours = sides.get("ours", {}).get("ms")
        ref_best, ref_best_side = best_of(sides, REF_SIDES)
        row = {
            "atoms": res.get("atoms"),
            "edges": res.get("edges"),
            "rounds": res.get("rounds"),
            **{f"{side}_ms": v["ms"] for side, v in sides.items()},
            **{f"{side}_solo_ms": v["solo_ms"] for side, v in sides.items()},
            "ref_best_ms": ref_best,
            "ref_best_side": ref_best_side,
            "speedup": ratio(ref_best, ours),
            "ours_compile_s": sides.get("ours", {}).get("compile_s"),
            "ours_xla_memory_mib": sides.get("ours", {}).get("xla_memory_mib"),
            "load_avg_start": res.get("load_avg_start"),
            "load_avg_end": res.get("load_avg_end"),
            "process_rss_peak_mib": res.get("rss_peak_mib"),
            "malloc_tuning": res.get("malloc_tuning"),
            "skipped": res.get("skipped") or {},
        }
        for p in PEERS:
            if p in sides:
                row[f"speedup_vs_{p}"] = ratio(sides[p]["ms"], ours)
        if "error" in res:
            row["error"] = res["error"]
        table[s] = row
        agree = check_agreement(res.get("checks", {}))
        if agree:
            agreement[s] = agree
    speedups = {s: r["speedup"] for s, r in table.items() if r["speedup"] is not None}
    out = {
        "spec": spec,
        "n_params": prep.get("n_params"),
        "systems": table,
        "speedup_per_system": speedups,
        "inference_speedup_geomean": geomean([speedups.get(s) for s in HEADLINE]),
        "agreement": agreement,
        "ref_aot_compile_s": aot.get("compile_s"),
        "ref_aot_reused": aot.get("reused", False),
        "models_reused": prep.get("reused", False),
        "ref_aot_error": aot.get("error"),
        "raw": {"rows": rows, "train": train, "md": md},
    }
    peers_prep = prep.get("peers") or {}
    if peers_prep:
        out["peer_params"] = {"ours": prep.get("n_params")}
        out["peer_params"].update({p: v["n_params"] for p, v in peers_prep.items()})
        out["peer_speedup"] = {
            p: geomean([table.get(s, {}).get(f"speedup_vs_{p}") for s in HEADLINE])
            for p in peers_prep
        }
    if train is not None:
        t_sides = train.get("sides", {})
        best, best_side = best_of(t_sides, ["ref_eager", "ref_compile"])
        # ours from the same interleaved pair as the fastest reference side
        by_pair = t_sides.get("ours", {}).get("ms_by_pair", {})
        ours = by_pair.get(best_side, t_sides.get("ours", {}).get("ms"))
        out["train_step"] = {
            **{f"{side}_ms": v["ms"] for side, v in t_sides.items()},
            "ours_ms": ours,
            "ours_ms_by_pair": by_pair,
            **{f"{side}_solo_ms": v["solo_ms"] for side, v in t_sides.items()},
            "ours_compile_s": t_sides.get("ours", {}).get("compile_s"),
            "ref_compile_first_call_s": t_sides.get("ref_compile", {}).get("first_call_s"),
            "ref_best_side": best_side,
            "rounds": train.get("rounds"),
            "load_avg_start": train.get("load_avg_start"),
            "load_avg_end": train.get("load_avg_end"),
            "error": train.get("error"),
        }
        out["train_step_speedup"] = ratio(best, ours)
    if md is not None:
        out["md_step"] = md
    return out


def fmt(x, nd=1):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def fmt_pairs(d, nd=1) -> str:
    """``{"ref_eager": 15.0, ...}`` -> ``"eager 15.0, compile 7"``; a number as it is."""
    if not isinstance(d, dict):
        return fmt(d, nd)
    return ", ".join(f"{k.removeprefix('ref_')} {fmt(v, nd)}" for k, v in d.items()) or "–"


def fmt_load(row) -> str:
    a, b = row.get("load_avg_start"), row.get("load_avg_end")
    return "–" if not a or not b else f"{a[0]:.1f}/{b[0]:.1f}"


def markdown(rep: dict) -> str:
    hw, st = rep["hardware"], rep["settings"]
    v = rep["versions"]
    title = (
        "# Benchmarks: allegro-jax vs nequip-allegro and mlip (generated by `benchmarks/run.py`)"
    )
    lines = [title, ""]
    if rep.get("quick"):
        lines += [
            "**QUICK SMOKE RUN** (`--quick`: fewer systems and rounds, no l_max 2, no "
            "torch.compile training): checks that the benchmark runs; not the benchmark result.",
            "",
        ]
    lines += [
        f"- date: {rep['date']}; command: `{rep['command']}`; wall time {rep['wall_s']:.0f} s",
        f"- hardware: {hw['note']}, {hw['cpu']}, {hw['cores']} cores; a 2048² float32 "
        f"product at {fmt(hw.get('matmul_gflops'))} GFLOP/s before the run; load average "
        f"before/after: {hw['load_avg_before']} / {hw['load_avg_after']}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"- float32, {st['threads']} threads, OMP_WAIT_POLICY=PASSIVE; {st['timing_text']}",
        f"- work: {st['work']}",
        f"- models: {st['model_common']}",
        f"- reference AOT: {st['reference_aot']}",
    ]
    for p, cfg in st.get("peers", {}).items():
        n = (rep.get("peer_params") or {}).get(p)
        lines.append(f"- peer {p}: mlip `{cfg['model']}` {cfg['config']} ({fmt(n)} parameters)")
    lines += [
        "",
        f"**inference_speedup_vs_reference = {fmt(rep['inference_speedup_vs_reference'], 2)}**; "
        f"**train_step_speedup_vs_reference = {fmt(rep['train_step_speedup_vs_reference'], 2)}**",
    ]
    if rep.get("peer_speedup"):
        ps = rep["peer_speedup"]
        lines[-1] += (
            "; **peer_speedup: "
            + ", ".join(f"{p} = {fmt(x, 2)}" for p, x in ps.items())
            + f"** (ours has {fmt((rep.get('peer_params') or {}).get('ours'))} parameters)"
        )
    if rep.get("floor_ratio"):
        lines += ["", f"floor_ratio (from `benchmarks/floor.py`): {rep['floor_ratio']}"]
    lines += ["", f"Definition: {rep['speedup_definition']}.", ""]
    for key, m in rep["models"].items():
        sp = m["spec"]
        present = [
            s
            for s in SIDE_LABELS
            if any(r.get(f"{s}_ms") is not None for r in m["systems"].values())
        ]
        lines += [
            f"## {key}: l_max {sp['l_max']}, {sp['num_layers']} layers, S {sp['S']}, "
            f"C {sp['C']}, r_max {sp['r_max']} Å ({m['n_params']} parameters)",
            "",
            "Energy + forces + stress, median ms per call (interleaved); speedup = reference "
            "best / ours; load = 1-min load average at start/end of the row:",
            "",
            "| system | atoms | edges | "
            + " | ".join(SIDE_LABELS[s] for s in present)
            + " | speedup vs ref | "
            + " | ".join(f"vs {p}" for p in PEERS if p in present)
            + " | rounds | load | ours compile s | ours XLA MiB |",
            "|---" * (3 + len(present) + 1 + sum(p in present for p in PEERS) + 4) + "|",
        ]
        for s, r in m["systems"].items():
            lines.append(
                f"| {s} | {fmt(r['atoms'])} | {fmt(r['edges'])} | "
                + " | ".join(fmt(r.get(f"{side}_ms")) for side in present)
                + f" | {fmt(r['speedup'], 2)} | "
                + " | ".join(fmt(r.get(f"speedup_vs_{p}"), 2) for p in PEERS if p in present)
                + f" | {fmt(r['rounds'])} | {fmt_load(r)} | {fmt(r['ours_compile_s'])} "
                f"| {fmt(r['ours_xla_memory_mib'], 0)} |"
            )
        skips = [
            f"{s}: {side} ({why})"
            for s, r in m["systems"].items()
            for side, why in r["skipped"].items()
        ]
        errors = [f"{s}: {r['error'][:200]}" for s, r in m["systems"].items() if r.get("error")]
        if skips:
            lines += ["", "Skipped (caps): " + "; ".join(skips) + "."]
        if errors:
            lines += ["", "Errors: " + "; ".join(errors)]
        lines += ["", malloc_line(m["systems"]), "", interference_line(m["systems"])]
        agree = m["agreement"]
        if agree:
            worst_e = max(a["energy_rel"] for d in agree.values() for a in d.values())
            worst_f = max(a["forces_rel"] for d in agree.values() for a in d.values())
            lines += [
                "",
                f"Same function check (ours vs every reference side, every system): max "
                f"relative energy difference {worst_e:.1e}, forces {worst_f:.1e}.",
            ]
        reused = (
            " (artefact reused from an earlier run's --workdir)" if m.get("ref_aot_reused") else ""
        )
        lines += ["", f"Reference AOT compile: {fmt(m['ref_aot_compile_s'])} s{reused}.", ""]
        if "train_step" in m:
            t = m["train_step"]
            lines += [
                "Training step, aspirin batch 5 (energy + force loss, gradient, Adam), median ms, "
                "ours interleaved call by call with each reference side in turn (pairs: the "
                "torch.compile step, ~6 s per call, slowed whatever ran after it); "
                "ours = its median in the pair with the fastest reference side "
                f"(per pair: {fmt_pairs(t.get('ours_ms_by_pair'))}):",
                "",
                "| ours | ref eager | ref torch.compile | speedup | rounds | load "
                "| ours compile s | ref torch.compile first call s |",
                "|---|---|---|---|---|---|---|---|",
                f"| {fmt(t.get('ours_ms'))} | {fmt(t.get('ref_eager_ms'))} "
                f"| {fmt(t.get('ref_compile_ms'))} | {fmt(m['train_step_speedup'], 2)} "
                f"| {fmt_pairs(t.get('rounds'), 0)} | {fmt_load(t)} "
                f"| {fmt(t.get('ours_compile_s'))} "
                f"| {fmt(t.get('ref_compile_first_call_s'))} |",
                "",
            ]
            if t.get("error"):
                lines += [f"Training comparison failed: `{t['error'][:300]}`", ""]
        if m.get("md_step"):
            lines += [md_line(m["md_step"]), ""]
    if rep.get("plot"):
        lines += [f"Time per atom vs atoms (Si ladder): `{rep['plot']}`.", ""]
    lines += [
        "Multi-device scaling (1–8 devices, `benchmarks/scaling.py`): [SCALING.md](SCALING.md);",
        "ensembles (K=4 in one program vs 4 runs, `benchmarks/ensemble.py`):",
        "`results/ensemble.json`; GPU: `benchmarks/gpu/`; what each speed change gained: "
        "[NOTES.md](NOTES.md).",
        "",
    ]
    return "\n".join(lines)


def malloc_line(systems: dict) -> str:
    """Which glibc malloc settings (``allegro_jax._malloc``) each system's process ran with."""
    by: dict = {}
    for name, r in systems.items():
        by.setdefault(r.get("malloc_tuning") or "not recorded", []).append(name)
    parts = [f"{how} ({', '.join(names)})" for how, names in by.items()]
    return (
        "glibc malloc settings of `import allegro_jax` (benchmarks/NOTES.md, 9), per process: "
        + "; ".join(parts)
        + "."
    )


def interference_line(systems: dict) -> str:
    """Interleaved median / back-to-back median per side, worst over the systems."""
    worst = {}
    for r in systems.values():
        for side in SIDE_LABELS:
            a, b = r.get(f"{side}_ms"), r.get(f"{side}_solo_ms")
            if a and b:
                worst[side] = max(worst.get(side, 0.0), a / b)
    if not worst:
        return ""
    return (
        "Interleaved / back-to-back median (> 1: a side is slowed by the others), largest "
        "over the systems: "
        + ", ".join(f"{SIDE_LABELS[s]} {x:.2f}" for s, x in worst.items())
        + "."
    )


def md_line(md: dict) -> str:
    if "error" in md:
        return f"MD: failed: `{md['error'][:300]}`"
    lay = md.get("block_layout")
    layout = "" if not lay else f"; blocks of {lay['atoms']} atoms, up to {lay['edges']} pairs"
    return (
        f"MD, {md['system']} diamond at {md['initial_temperature_K']:.0f} K, NVE "
        f"{md['timestep_fs']} fs, jax-md, {md['model']}: **{md['steps_per_s']:.2f} steps/s** "
        f"({md['ms_per_step']:.1f} ms/step over {md['steps']} steps{layout}), "
        f"{md['rebuilds_per_100_steps']:.1f} neighbour-list rebuilds per 100 steps, max "
        f"temperature {md['max_temperature_K']:.0f} K (load {fmt_load(md)}); ours only: the "
        "reference has no jax-md integration."
    )


def plot_scaling(m: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    si = [(s, r) for s, r in m["systems"].items() if s.startswith("Si ")]
    for col, label in (
        ("ours_ms", "allegro-jax"),
        ("ref_eager_ms", "nequip-allegro eager"),
        ("ref_aot_t2_ms", "nequip-allegro AOT, 2 threads"),
        ("ref_aot_t1_ms", "nequip-allegro AOT, 1 thread"),
    ):
        pts = [(r["atoms"], 1e3 * r[col] / r["atoms"]) for _, r in si if r.get(col)]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("atoms (bulk Si, r_max 5 Å)")
    ax.set_ylabel("µs per atom (energy + forces + stress)")
    ax.set_ylim(bottom=0)
    ax.set_title("Cost per atom, l_max 1, S 64, C 32, float32, 2 threads")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
