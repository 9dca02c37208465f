"""allegro-jax vs nequip-allegro 0.8.3, side by side, same model, float32, same threads.

    python benchmarks/run.py            # full run (~10-15 min on 2 idle cores)
    python benchmarks/run.py --quick    # smoke version (~3 min)

Options: ``--ladder 1000 4096 ...`` (Si atom counts, each 8 n³), ``--ref-time-cap``/
``--ours-time-cap`` (skip a ladder size whose predicted time per call exceeds it),
``--mem-cap-gib``, ``--threads``, ``--no-lmax2``, ``--no-compile-train``.

Every framework/mode runs in its own subprocess (``benchmarks/bench_workers.py``) with
``OMP_WAIT_POLICY=PASSIVE`` and ``--threads`` threads (torch) / all cores (XLA:CPU; the box
has two). The reference model is built with a fixed seed; ours is its ``from_nequip``
import, so both compute the same function on the same edges (energies are compared in
the run). Reference modes: ``eager``, AOT Inductor (``nequip-compile``'s ``ase`` target,
compiled with one thread) and, for training, nequip's ``torch.compile`` mode.

Writes ``benchmarks/results/latest.json``, ``benchmarks/RESULTS.md`` and
``benchmarks/results/scaling_atoms.png`` (``--tag`` writes ``results/<tag>.json`` and
``RESULTS_<tag>.md`` instead of ``latest``/``RESULTS``).

Speedups are reference time / our time (> 1: ours faster); the reference side is its best
(fastest) mode for that measurement. ``inference_speedup_vs_reference`` is the geometric
mean over the headline systems (aspirin ×1, aspirin ×32, water 192, Si 1000) of the
headline model; ``train_step_speedup_vs_reference`` is for one training step on aspirin
batch 5 against the best of eager and ``torch.compile``.
"""

from __future__ import annotations

import argparse
import datetime
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

MODELS = {
    "lmax1": {"l_max": 1, "num_layers": 2, "S": 64, "C": 32, "r_max": 5.0, "seed": 0},
    "lmax2": {"l_max": 2, "num_layers": 2, "S": 128, "C": 64, "r_max": 5.0, "seed": 0},
}
HEADLINE = ["aspirin x1", "aspirin x32", "water 192", "Si 1000"]


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
    print(f"[run] {name}: done in {wall:.0f} s", flush=True)
    return json.loads(out_path.read_text())


def geomean(xs):
    xs = [x for x in xs if x is not None and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def ms_of(res: dict, system: str):
    row = (res or {}).get("systems", {}).get(system)
    return None if row is None or "ms" not in row else row["ms"]


def check_agreement(ours: dict, refs: dict) -> dict:
    """Relative energy/force differences ours vs each reference mode (same weights/edges)."""
    import numpy as np

    out = {}
    for mode, res in refs.items():
        for name, row in (res or {}).get("systems", {}).items():
            o = ours.get("systems", {}).get(name, {})
            if "check" not in row or "check" not in o:
                continue
            e_o, e_r = o["check"]["energy_sum"], row["check"]["energy_sum"]
            f_o = np.asarray(o["check"]["forces"])
            f_r = np.asarray(row["check"]["forces"])
            out[f"{mode}/{name}"] = {
                "energy_rel": abs(e_o - e_r) / max(abs(e_r), 1e-12),
                "forces_rel": float(np.abs(f_o - f_r).max() / max(np.abs(f_r).max(), 1e-12)),
            }
    return out


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small smoke run (~3 min)")
    ap.add_argument("--ladder", type=int, nargs="*", help="Si sizes (atoms, 8 n^3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ours-time-cap", type=float, default=20.0, help="s per call")
    ap.add_argument("--ref-time-cap", type=float, default=10.0, help="s per call")
    ap.add_argument("--mem-cap-gib", type=float, default=8.0, help="per process")
    ap.add_argument("--no-lmax2", action="store_true", help="skip the l_max 2 model")
    ap.add_argument(
        "--models", nargs="*", choices=sorted(MODELS), help="models to run (default: all)"
    )
    ap.add_argument("--no-compile-train", action="store_true", help="skip torch.compile train")
    ap.add_argument("--no-aot", action="store_true", help="skip the AOT reference mode")
    ap.add_argument("--tag", default="latest")
    args = ap.parse_args()

    quick = args.quick
    ladder = args.ladder or ([1000] if quick else [1000, 4096, 8000, 17576, 32768])
    ladder_names = [si_name(n) for n in sorted(set(ladder) | {1000})]
    main_systems = ["aspirin x1", "aspirin x32"] + ([] if quick else ["water 192"])
    timing = {"min_time": 0.3 if quick else 1.0, "max_repeats": 5 if quick else 15}
    caps = {"mem_cap_gib": args.mem_cap_gib}
    env = {
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": args.threads,
        "MKL_NUM_THREADS": args.threads,
        "BENCH_THREADS": args.threads,
        "PYTHONWARNINGS": "ignore",
    }
    load_before = load_avg()
    t_start = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="allegro_bench_"))
    env["TORCHINDUCTOR_CACHE_DIR"] = str(workdir / "inductor_cache")  # honest compile times
    models = ["lmax1"] + ([] if quick or args.no_lmax2 else ["lmax2"])
    if args.models:
        models = [m for m in MODELS if m in args.models]
    report: dict = {"models": {}}
    for key in models:
        spec = MODELS[key]
        headline_model = key == "lmax1"
        systems = main_systems + ladder_names if headline_model else ["aspirin x32", "Si 1000"]
        base = {"spec": spec, "params_path": str(workdir / f"{key}.pkl")}
        base["pt2_path"] = str(workdir / f"{key}.nequip.pt2")
        prep = run_worker("prepare", {**base, "name": f"{key}-prepare"}, workdir, env, 300)
        if "error" in prep:
            raise SystemExit(f"could not build the reference model: {prep['error']}")
        common = {**base, **timing, **caps, "systems": systems, "train_batch": 5}
        ours = run_worker(
            "ours",
            {
                **common,
                "name": f"{key}-ours",
                "time_cap_s": args.ours_time_cap,
                "train": headline_model,
                "md": headline_model,
                "md_steps": 50 if quick else 200,
                "stress": ["Si 1000", "water 192"],
            },
            workdir,
            env,
            1200,
        )
        refs = {}
        refs["eager"] = run_worker(
            "ref",
            {
                **common,
                "name": f"{key}-ref-eager",
                "mode": "eager",
                "time_cap_s": args.ref_time_cap,
                "train": headline_model,
            },
            workdir,
            env,
            1200,
        )
        aot_compile = None
        if not args.no_aot:
            aot_compile = run_worker(
                "aot",
                {**base, "name": f"{key}-aot-compile"},
                workdir,
                {**env, "OMP_NUM_THREADS": 1, "BENCH_THREADS": 1},
                900,
            )
            if "error" not in aot_compile:
                refs["aot"] = run_worker(
                    "ref",
                    {
                        **common,
                        "name": f"{key}-ref-aot",
                        "mode": "aot",
                        "time_cap_s": args.ref_time_cap,
                    },
                    workdir,
                    env,
                    1200,
                )
        if headline_model and not quick and not args.no_compile_train:
            refs["compile-train"] = run_worker(
                "ref",
                {**common, "name": f"{key}-ref-compile-train", "mode": "compile-train"},
                workdir,
                env,
                600,
            )
        report["models"][key] = summarize_model(
            key, spec, prep, ours, refs, aot_compile, systems, headline_model
        )

    head = report["models"][models[0]]
    wall = time.perf_counter() - t_start
    cmd = "python benchmarks/run.py " + " ".join(sys.argv[1:])
    report.update(
        {
            "date": datetime.date.today().isoformat(),
            "command": cmd.strip(),
            "wall_s": round(wall, 1),
            "hardware": {
                "cpu": cpu_model(),
                "cores": os.cpu_count(),
                "note": "2-core CPU, shared box",
                "load_avg_before": load_before,
                "load_avg_after": load_avg(),
            },
            "settings": {
                "dtype": "float32",
                "threads": args.threads,
                "env": {k: v for k, v in env.items() if k != "TORCHINDUCTOR_CACHE_DIR"},
                "timing": "median wall time per call after one warm-up call; "
                f"repeats until >= {timing['min_time']} s (min 3, max {timing['max_repeats']})",
                "models": {k: MODELS[k] for k in models},
                "model_common": "2 layers, 8 Bessel, p=6, parity, tp_path_channel_coupling, "
                "all MLPs 1 hidden layer of width S, avg_num_neighbors 20, "
                "types H C O Si",
                "ours": "energy+forces (jax.jit, forces = -dE/dr); the reference always also "
                "computes the virial (column 'ours +stress' for periodic systems)",
                "reference_aot": "nequip aot_export_model with the `ase` target (single frame, "
                "aspirin x32 as one 672-atom frame), compiled with 1 thread, run with "
                f"{args.threads}",
                "caps": {
                    "ours_time_cap_s": args.ours_time_cap,
                    "ref_time_cap_s": args.ref_time_cap,
                    "mem_cap_gib": args.mem_cap_gib,
                },
            },
            "inference_speedup_vs_reference": head["inference_speedup_geomean"],
            "inference_speedup_per_system": head["speedup_per_system"],
            "train_step_speedup_vs_reference": head.get("train_step_speedup"),
            "speedup_definition": "reference best mode time / ours (per measurement); "
            "inference headline = geometric mean over "
            + ", ".join(s for s in HEADLINE if s in head["speedup_per_system"])
            + " (l_max 1 model)",
        }
    )
    versions = {"python": platform.python_version()}
    ours_v = head["raw"]["ours"]
    versions["jax"] = ours_v.get("jax")
    eager = head["raw"]["refs"].get("eager", {})
    for k in ("torch", "nequip", "allegro"):
        versions[k] = eager.get(k)
    report["versions"] = versions
    RESULTS.mkdir(exist_ok=True)
    name = args.tag
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=1))
    md_name = "RESULTS.md" if name == "latest" else f"RESULTS_{name}.md"
    png = RESULTS / ("scaling_atoms.png" if name == "latest" else f"scaling_atoms_{name}.png")
    try:
        plot_scaling(head, png)
        report["plot"] = str(png.relative_to(HERE))
    except ImportError:
        report["plot"] = None
    (HERE / md_name).write_text(markdown(report))
    print((HERE / md_name).read_text())
    print(f"wrote {RESULTS / (name + '.json')}, {HERE / md_name}, {png} in {wall:.0f} s")


def summarize_model(key, spec, prep, ours, refs, aot_compile, systems, headline_model) -> dict:
    rows = {}
    for s in systems:
        o = (ours.get("systems") or {}).get(s, {})
        r_e = ms_of(refs.get("eager"), s)
        r_a = ms_of(refs.get("aot"), s)
        best = min([x for x in (r_e, r_a) if x is not None], default=None)
        row = {
            "atoms": o.get("atoms"),
            "edges": o.get("edges"),
            "ours_ms": o.get("ms"),
            "ours_with_stress_ms": o.get("with_stress_ms"),
            "ref_eager_ms": r_e,
            "ref_aot_ms": r_a,
            "ref_best_ms": best,
            "speedup": None if best is None or not o.get("ms") else best / o["ms"],
            "ours_compile_s": o.get("compile_s"),
            "ours_xla_memory_mib": o.get("xla_memory_mib"),
            "ours_rss_peak_mib": o.get("rss_peak_mib"),
            "ref_eager_rss_peak_mib": (refs.get("eager") or {})
            .get("systems", {})
            .get(s, {})
            .get("rss_peak_mib"),
            "ref_aot_rss_peak_mib": (refs.get("aot") or {})
            .get("systems", {})
            .get(s, {})
            .get("rss_peak_mib"),
        }
        for side, res in [("ours", ours)] + list(refs.items()):
            skip = (res or {}).get("systems", {}).get(s, {}).get("skipped")
            if skip:
                row[f"{side}_skipped"] = skip
        rows[s] = row
    speedups = {s: r["speedup"] for s, r in rows.items() if r["speedup"] is not None}
    out = {
        "spec": spec,
        "n_params": prep.get("n_params"),
        "systems": rows,
        "speedup_per_system": speedups,
        "inference_speedup_geomean": geomean([speedups.get(s) for s in HEADLINE]),
        "agreement": check_agreement(ours, {k: v for k, v in refs.items() if v}),
        "ref_aot_compile_s": None if not aot_compile else aot_compile.get("compile_s"),
        "raw": {"ours": ours, "refs": refs, "aot_compile": aot_compile},
    }
    for res in [ours] + list(refs.values()):
        for row in (res or {}).get("systems", {}).values():
            row.pop("check", None)
    if headline_model:
        t_o = (ours.get("train_step") or {}).get("ms")
        t_r = {
            m: (refs.get(m) or {}).get("train_step", {}).get("ms")
            for m in ("eager", "compile-train")
        }
        best = min([v for v in t_r.values() if v], default=None)
        out["train_step"] = {
            "ours_ms": t_o,
            "ours_compile_s": (ours.get("train_step") or {}).get("compile_s"),
            "ref_eager_ms": t_r["eager"],
            "ref_compile_ms": t_r["compile-train"],
            "ref_compile_first_call_s": (refs.get("compile-train") or {})
            .get("train_step", {})
            .get("first_call_s"),
            "ref_compile_error": (refs.get("compile-train") or {}).get("error"),
        }
        out["train_step_speedup"] = None if not (t_o and best) else best / t_o
        out["md_step"] = {
            "ours": ours.get("md_step"),
            "ref": "not measured (the reference has no jax-md integration)",
        }
    return out


def fmt(x, nd=1):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def markdown(rep: dict) -> str:
    hw, st = rep["hardware"], rep["settings"]
    v = rep["versions"]
    lines = [
        "# Benchmarks: allegro-jax vs nequip-allegro 0.8.3 (generated by `benchmarks/run.py`)",
        "",
        f"- date: {rep['date']}; command: `{rep['command']}`; wall time {rep['wall_s']:.0f} s",
        f"- hardware: {hw['note']}, {hw['cpu']}, {hw['cores']} cores; load average "
        f"before/after: {hw['load_avg_before']} / {hw['load_avg_after']}",
        f"- versions: python {v['python']}, jax {v['jax']}, torch {v['torch']}, "
        f"nequip {v['nequip']}, nequip-allegro {v['allegro']}",
        f"- float32, {st['threads']} threads, OMP_WAIT_POLICY=PASSIVE; {st['timing']}",
        f"- models: {st['model_common']}; {st['ours']}",
        f"- reference AOT: {st['reference_aot']}",
        "",
        f"**inference_speedup_vs_reference = {fmt(rep['inference_speedup_vs_reference'], 2)}** "
        f"({rep['speedup_definition']}); **train_step_speedup_vs_reference = "
        f"{fmt(rep['train_step_speedup_vs_reference'], 2)}** (aspirin batch 5, vs the best "
        "reference training mode). Speedup = reference best / ours.",
        "",
    ]
    for key, m in rep["models"].items():
        sp = m["spec"]
        lines += [
            f"## {key}: l_max {sp['l_max']}, {sp['num_layers']} layers, S {sp['S']}, "
            f"C {sp['C']}, r_max {sp['r_max']} Å ({m['n_params']} parameters)",
            "",
            "Energy + forces, ms per call:",
            "",
            "| system | atoms | edges | ours | ours +stress | ref eager | ref AOT | speedup "
            "| µs/atom ours | µs/atom ref best | ours compile s | ours XLA MiB | ours RSS MiB "
            "| ref eager RSS MiB | ref AOT RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s, r in m["systems"].items():
            per = lambda ms, r=r: None if ms is None or not r["atoms"] else 1e3 * ms / r["atoms"]  # noqa: E731
            lines.append(
                f"| {s} | {fmt(r['atoms'])} | {fmt(r['edges'])} | {fmt(r['ours_ms'])} "
                f"| {fmt(r['ours_with_stress_ms'])} | {fmt(r['ref_eager_ms'])} "
                f"| {fmt(r['ref_aot_ms'])} | {fmt(r['speedup'], 2)} | {fmt(per(r['ours_ms']))} "
                f"| {fmt(per(r['ref_best_ms']))} | {fmt(r['ours_compile_s'])} "
                f"| {fmt(r['ours_xla_memory_mib'], 0)} | {fmt(r['ours_rss_peak_mib'], 0)} "
                f"| {fmt(r['ref_eager_rss_peak_mib'], 0)} | {fmt(r['ref_aot_rss_peak_mib'], 0)} |"
            )
        skips = [
            f"{s}: {k.replace('_skipped', '')} skipped ({v})"
            for s, r in m["systems"].items()
            for k, v in r.items()
            if k.endswith("_skipped")
        ]
        if skips:
            lines += ["", "Skipped (caps): " + "; ".join(skips) + "."]
        agree = m["agreement"]
        if agree:
            worst_e = max(a["energy_rel"] for a in agree.values())
            worst_f = max(a["forces_rel"] for a in agree.values())
            lines += [
                "",
                f"Same function check (ours vs every reference mode, every system): max "
                f"relative energy difference {worst_e:.1e}, forces {worst_f:.1e}.",
            ]
        lines += ["", f"Reference AOT compile: {fmt(m['ref_aot_compile_s'])} s.", ""]
        if "train_step" in m:
            t = m["train_step"]
            lines += [
                "Training step, aspirin batch 5 (energy + force loss, gradient, Adam), ms:",
                "",
                "| ours | ref eager | ref torch.compile | speedup | ours compile s "
                "| ref torch.compile first call s |",
                "|---|---|---|---|---|---|",
                f"| {fmt(t['ours_ms'])} | {fmt(t['ref_eager_ms'])} | {fmt(t['ref_compile_ms'])} "
                f"| {fmt(m['train_step_speedup'], 2)} | {fmt(t['ours_compile_s'])} "
                f"| {fmt(t['ref_compile_first_call_s'])} |",
                "",
            ]
            if t.get("ref_compile_error"):
                err = t["ref_compile_error"][:300]
                lines += [f"torch.compile training mode failed: `{err}`", ""]
            md = m["md_step"]
            o = md.get("ours") or {}
            lines += [
                "MD step, water 192 atoms, NVE 0.5 fs, jax-md (ours only; the reference has "
                f"no jax-md integration): {fmt(o.get('ms_per_step'), 2)} ms/step"
                + (f" (error: {o['error']})" if "error" in o else "")
                + ".",
                "",
            ]
    if rep.get("plot"):
        lines += [f"Time per atom vs atoms (Si ladder): `{rep['plot']}`.", ""]
    lines += [
        "Multi-device scaling (1–8 devices, `benchmarks/scaling.py`): [SCALING.md](SCALING.md);",
        "ensembles (K=4 in one program vs 4 runs, `benchmarks/ensemble.py`):",
        "`results/ensemble.json`; what each speed change gained: [NOTES.md](NOTES.md).",
        "",
    ]
    return "\n".join(lines)


def plot_scaling(m: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    si = [(s, r) for s, r in m["systems"].items() if s.startswith("Si ")]
    for col, label in (
        ("ours_ms", "allegro-jax"),
        ("ref_eager_ms", "nequip-allegro eager"),
        ("ref_aot_ms", "nequip-allegro AOT"),
    ):
        pts = [(r["atoms"], 1e3 * r[col] / r["atoms"]) for _, r in si if r.get(col)]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("atoms (bulk Si, r_max 5 Å)")
    ax.set_ylabel("µs per atom (energy + forces)")
    ax.set_ylim(bottom=0)
    ax.set_title("Cost per atom, l_max 1, S 64, C 32, float32, 2 threads")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
