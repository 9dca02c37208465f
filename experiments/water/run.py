"""Liquid water with Allegro: train, NVT molecular dynamics, RDF and diffusion analysis.

Subcommands (run from the repository root; outputs under experiments/water/runs/):

    python -m experiments.water.run train [--set key=value ...]  # resumes runs/train
    python -m experiments.water.run md --size 64 --ps 25  # NVT 300 K, 192 atoms
    python -m experiments.water.run nve-check             # 2 ps NVE from the md64 state
    python -m experiments.water.run nve-check --source R --model M  # from run R, its dt
    python -m experiments.water.run md --size 512 --ps 25  # 55 min on one CPU core
    python -m experiments.water.run analyse               # runs/results.json, rdf.png, msd.png
    python -m experiments.water.run diffusion-blocks --runs A B  # D_O per block and window
    python -m experiments.water.run barrier  # model 3 + O-H barrier -> runs/attempts/B_barrier
    python -m experiments.water.run stretch --models train  # bond-stretch probes -> stretch.json
    python -m experiments.water.run augment  # synthetic stretched-bond frames (README, attempt E)
    python -m experiments.water.run committee --model ens4 --runs R  # ensemble spread on R
    python -m experiments.water.run publish --run seed3 --name seed3  # -> models/seed3
    python -m experiments.water.run analyse --record      # the committed files, see below

``train --config C --run R`` trains another model into ``runs/R``; ``md --model R --out O
--temperature T`` runs it (e.g. a hotter stability test). ``md`` resumes from its checkpoint
when run again (``--ps`` is the total length), so a longer run is the same command with a
larger ``--ps``; ``--stop-when-broken`` runs it in ``--chunk-ps`` calls and stops at the
first chunk with broken water. ``--model`` names a run folder under ``runs/`` or a
committed model (``models/seed3``). For a single-core run set ``taskset -c 1`` and
``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"``.

``analyse``, ``stretch`` and ``diffusion-blocks`` write their reports (``results.json``,
``rdf.png``, ``msd.png``; ``stretch.json``; ``diffusion_blocks.json``) into ``runs/``
(git-ignored); only with ``--record`` do they replace the committed files next to this
script.

This module is the command line; the work is in the modules beside it: ``settings`` (files,
MD protocol), ``structure`` (intact-water checks), ``augment`` (stretched-bond frames),
``probes`` (stretch and approach energy profiles), ``observables`` (frames, speed, RDF, MSD,
diffusion), ``plots``, ``report`` (README table) and ``barrier`` (attempt B's model).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from experiments import runinfo
from experiments.water.augment import augment
from experiments.water.barrier import AlreadyHasBarrier, add_barrier
from experiments.water.history import STRESS_360K, stability_keys
from experiments.water.observables import (
    MSD_FIT_PS,
    RDF_BINS,
    RDF_R_MAX,
    dt_fs,
    frame_observables,
    md_speed,
    oxygen_diffusion,
    partial_rdfs,
    read_frames,
)
from experiments.water.plots import plot_committee, plot_msd, plot_rdf
from experiments.water.probes import (
    APPROACH_DISTANCES,
    CONTACT_DISTANCES,
    STRETCH_DISTANCES,
    approach_profile,
    contact_profile,
    stretch_profile,
)
from experiments.water.report import markdown_table, stability_table, versions
from experiments.water.settings import (
    AUGMENTED_FILE,
    DT_FS,
    EQUILIBRATION_PS,
    HERE,
    LOG_EVERY,
    LOGS_PER_CHUNK,
    RUNS,
    SKIN,
    TAU_T_FS,
    TEMPERATURE_K,
    TRAIN_FILE,
    VALID_FILE,
)
from experiments.water.structure import (
    broken_episodes,
    describe_break,
    first_broken_frame,
    oh_bond_lengths,
)

RECORD_HELP = "write the committed report files next to run.py (default: into runs/)"


MODELS = HERE / "models"


def model_path(name: str) -> Path:
    """A model named on the command line: a run folder under ``runs/``, else a committed
    model under ``models/`` (``models/seed0``), else the path as given."""
    for candidate in (RUNS / name, HERE / name, Path(name)):
        if candidate.exists():
            return candidate
    return RUNS / name


def cmd_publish(args: argparse.Namespace) -> int:
    """Copy a run's best model (or an ensemble model folder) to ``models/NAME`` (committed:
    float32 weights, config, metrics curve, summary)."""
    source = RUNS / args.run
    if (source / "config.json").exists() and not (source / "model").exists():
        dest = MODELS / args.name  # an ensemble made by allegro-jax ensemble
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    else:
        dest = runinfo.publish_model(source, MODELS / args.name, HERE.parents[1])
    _written(dest)
    return 0


def report_dir(args: argparse.Namespace) -> Path:
    """Where ``analyse``, ``stretch`` and ``diffusion-blocks`` write: next to this script
    (the committed files) with ``--record``, else ``runs/``."""
    return HERE if getattr(args, "record", False) else RUNS


def _written(*paths: Path) -> None:
    print("written: " + ", ".join(runinfo.repo_path(p, HERE.parents[1]) for p in paths))


def _cli(args: list[str]) -> int:
    from allegro_jax.cli import main

    print("allegro-jax " + " ".join(args), flush=True)
    return main(args)


def cmd_train(args: argparse.Namespace) -> int:
    overrides = [arg for kv in args.set for arg in ("--set", kv)]
    config = Path(args.config) if args.config else HERE / "train.yaml"
    names_augmented = config.exists() and AUGMENTED_FILE.name in config.read_text()
    if names_augmented and not AUGMENTED_FILE.exists():
        augment()
    return _cli(["train", str(config), "--workdir", str(RUNS / args.run), *overrides])


def _start_structure(size: int) -> Path:
    import ase.io

    path = RUNS / f"start_{size}.extxyz"
    if not path.exists():
        atoms = ase.io.read(TRAIN_FILE, index=0)
        if size == 512:
            atoms = atoms.repeat((2, 2, 2))
        elif size != 64:
            raise ValueError(f"--size must be 64 or 512, got {size}")
        atoms.info = {}
        atoms.calc = None
        atoms.arrays.pop("forces", None)
        path.parent.mkdir(parents=True, exist_ok=True)
        ase.io.write(path, atoms)
    return path


def _log_every(dt: float) -> int:
    """Steps between thermo rows: a row every 10 fs whatever the step."""
    return round(LOG_EVERY * DT_FS / dt)


def _md_args(
    out: Path,
    structure: Path,
    ensemble: str,
    until_step: int,
    model: str = "train",
    temperature: float = TEMPERATURE_K,
    dt: float = DT_FS,
) -> list[str]:
    return [
        "md",
        "--model",
        str(model_path(model)),
        "--structure",
        str(structure),
        "--out",
        str(out),
        "--ensemble",
        ensemble,
        "--dt",
        str(dt),
        "--temperature",
        str(temperature),
        "--tau-t",
        str(TAU_T_FS),
        "--skin",
        str(SKIN),
        "--log-every",
        str(_log_every(dt)),
        "--logs-per-chunk",
        str(LOGS_PER_CHUNK),
        "--until-step",
        str(until_step),
        "--progress",
        "log",
    ]


RUN_CARD = "water_md.json"


def write_run_card(out: Path, args: argparse.Namespace) -> dict:
    """``OUT/water_md.json``: what the run is (model, whether it has fixed pair terms, its
    ensemble size, molecules, step, temperature), read back by ``analyse``."""
    from allegro_jax.io.model import read_ensemble_size, read_model_config

    model = model_path(args.model)
    try:
        config = read_model_config(model)
    except FileNotFoundError:  # allegro-jax md says so, with the path
        return {}
    card = {
        "model": args.model,
        "pair_terms": bool(config.pair_potential),
        "ensemble_size": read_ensemble_size(model),
        "molecules": args.size,
        "dt_fs": args.dt,
        "temperature_K": args.temperature,
        "velocity_seed": 0 if args.seed is None else args.seed,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_CARD).write_text(json.dumps(card, indent=1) + "\n")
    return card


def cmd_md(args: argparse.Namespace) -> int:
    """NVT of the water box; with ``--stop-when-broken`` in calls of ``--chunk-ps`` that
    each resume the last, until the water is broken (``structure.first_broken_frame``) or
    ``--ps`` is reached: a stability test spends no time after its failure."""
    out = RUNS / (args.out or f"md{args.size}")
    write_run_card(out, args)
    t0 = time.monotonic()
    target_ps = args.ps
    while True:
        if args.stop_when_broken:
            done_ps = 0.0
            if (out / "thermo.csv").exists():
                done_ps = float(np.atleast_1d(_thermo_times(out))[-1]) / 1000
            target_ps = min(args.ps, done_ps + args.chunk_ps)
        cli = _md_args(
            out,
            _start_structure(args.size),
            "nvt_nose_hoover",
            round(target_ps * 1000 / args.dt),
            model=args.model,
            temperature=args.temperature,
            dt=args.dt,
        )
        if (out / "checkpoint.npz").exists():
            cli.append("--restart")
        if args.max_wall_time:
            left = args.max_wall_time - (time.monotonic() - t0)
            if left <= 0:
                print(f"{out.name}: --max-wall-time reached")
                return 0
            cli += ["--max-wall-time", str(round(left, 1))]
        if args.seed is not None:
            cli += ["--seed", str(args.seed)]
        rc = _cli(cli)
        if rc != 0 or not args.stop_when_broken:
            return rc
        frames = read_frames(out, 0.0)
        broken = first_broken_frame(frames)
        if broken is not None:
            t_break = frames[broken].info["time_fs"] / 1000
            print(f"{out.name}: water broken at {t_break:g} ps; stopped (--stop-when-broken)")
            return 0
        if target_ps >= args.ps:
            return 0


def _thermo_times(run: Path) -> np.ndarray:
    return np.genfromtxt(run / "thermo.csv", delimiter=",", names=True)["time_fs"]


def cmd_nve_check(args: argparse.Namespace) -> int:
    """NVE from the frame at ``--from-ps`` of an NVT run (positions, velocities), with that
    run's model and timestep unless told otherwise."""
    import ase.io

    source = RUNS / args.source
    dt = args.dt or dt_fs(source)
    out = RUNS / (args.out or ("nve64" if args.source == "md64" else f"nve_{args.source}"))
    if not (out / "checkpoint.npz").exists():
        frames = ase.io.read(source / "trajectory.extxyz", index=":")
        frame = min(frames, key=lambda f: abs(f.info["step"] * dt - args.from_ps * 1000))
        out.mkdir(parents=True, exist_ok=True)
        np.savez(  # positions and velocities only: the NVE run starts its own state
            out / "checkpoint.npz",
            positions=frame.positions,
            velocities=frame.arrays["velocities_A_per_fs"],
            cell=np.array(frame.cell),
            step=np.asarray(frame.info["step"]),
        )
    start = int(np.load(out / "checkpoint.npz")["step"])
    if (out / "thermo.csv").exists():
        first = np.genfromtxt(out / "thermo.csv", delimiter=",", names=True, max_rows=1)
        start = int(first["step"]) - _log_every(dt)
    steps = round(args.ps * 1000 / dt)
    structure = _start_structure(64)
    cli = _md_args(out, structure, "nve", start + steps, model=args.model, dt=dt)
    return _cli([*cli, "--restart"])


def cmd_stretch(args: argparse.Namespace) -> int:
    """Stretched-bond and approach profiles of trained models on validation frames ->
    stretch.json and a printed table (median and minimum over the probes)."""
    import ase.io

    from allegro_jax import AllegroCalculator

    frames = ase.io.read(VALID_FILE, index=f":{args.frames}")
    out = {"frames": args.frames, "models": {}}
    probes = {
        "stretch": (stretch_profile, STRETCH_DISTANCES, "H moved to d from its O"),
        "approach": (approach_profile, APPROACH_DISTANCES, "acceptor O moved to d from the H"),
        "contact": (contact_profile, CONTACT_DISTANCES, "nearest molecule moved to O–O d"),
    }
    for name in args.models:
        calc = AllegroCalculator.from_model_dir(model_path(name))
        out["models"][name] = {}
        for probe, (fn, distances, what) in probes.items():
            de = fn(frames, calc)
            out["models"][name][probe] = {
                "what": what,
                "distances_A": list(distances),
                "n_probes": len(de),
                "median_eV": np.median(de, axis=0).tolist(),
                "min_eV": de.min(axis=0).tolist(),
            }
            print(f"{probe} ({what}), d (Å): " + " ".join(f"{d:6.2f}" for d in distances))
            for label, values in (("median", np.median(de, 0)), ("min", de.min(0))):
                print(f"  {name:>16} {label:>6} " + " ".join(f"{v:6.2f}" for v in values))
    committed = HERE / "stretch.json"  # models probed before and not now are kept
    if committed.exists():
        for name, probed in json.loads(committed.read_text()).get("models", {}).items():
            out["models"].setdefault(name, probed)
    path = report_dir(args) / "stretch.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    _written(path)
    return 0


def cmd_barrier(args: argparse.Namespace) -> int:
    """A trained model plus :data:`~experiments.water.barrier.BARRIER` (attempt B), same
    weights, in ``runs/OUT/model``."""
    try:
        out = add_barrier(RUNS / args.model, RUNS / args.out / "model")
    except AlreadyHasBarrier as e:
        print(f"{args.model} {e}")
        return 1
    print(f"wrote {out}")
    return 0


def cmd_diffusion_blocks(args: argparse.Namespace) -> int:
    """D_O of each run over one common window (its intact part only) and over consecutive
    ``--block-ps`` blocks: how much of a difference between runs is sampling."""
    out: dict = {"window_ps": [EQUILIBRATION_PS, args.until_ps], "block_ps": args.block_ps}
    out["runs"] = {}
    for name in args.runs:
        frames = read_frames(RUNS / name, EQUILIBRATION_PS)
        broken = first_broken_frame(frames)
        intact = frames if broken is None else frames[:broken]
        window = [f for f in intact if f.info["time_fs"] <= args.until_ps * 1000 + 1e-6]
        spacing = frames[1].info["time_fs"] - frames[0].info["time_fs"]
        length = args.block_ps * 1000
        per_block, start = [], EQUILIBRATION_PS * 1000
        while intact and intact[-1].info["time_fs"] >= start + length - spacing:  # whole blocks
            block = [f for f in intact if start <= f.info["time_fs"] < start + length]
            per_block.append(oxygen_diffusion(block))
            start += length
        out["runs"][name] = {
            "dt_fs": dt_fs(RUNS / name),
            "intact_until_ps": None if broken is None else frames[broken].info["time_fs"] / 1000,
            "window_end_ps": window[-1].info["time_fs"] / 1000,
            "D_O_window_1e5_cm2_per_s": oxygen_diffusion(window) * 1e5,
            "D_O_blocks_1e5_cm2_per_s": [d * 1e5 for d in per_block],
        }
        r = out["runs"][name]
        print(
            f"{name:24s} dt {r['dt_fs']:g} fs  D_O 5-{r['window_end_ps']:.1f} ps "
            f"{r['D_O_window_1e5_cm2_per_s']:.2f}  {args.block_ps:g} ps blocks "
            + " ".join(f"{d:.2f}" for d in r["D_O_blocks_1e5_cm2_per_s"])
        )
    path = report_dir(args) / "diffusion_blocks.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    _written(path)
    return 0


def training_summary(run: Path) -> dict:
    """Epochs, wall and CPU seconds of a training run and the validation errors of its best
    epoch (lowest validation loss), from its ``metrics.csv``."""
    import csv

    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    best = min(rows, key=lambda row: float(row["validation_loss"]))
    out = {
        "epochs": len(rows),
        "wall_s": float(rows[-1]["wall_time_s"]),
        "best_epoch": int(best["epoch"]),
    }
    if rows[-1].get("cpu_time_s"):
        out["cpu_s"] = float(rows[-1]["cpu_time_s"])
    for key in (
        "validation_energy_per_atom_mae_mev",
        "validation_force_mae_mev_per_a",
        "validation_force_rmse_mev_per_a",
    ):
        out[key] = float(best[key])
    return out


def model_summary(path: Path) -> dict:
    """What an MD run's model is: its size, seed and training (a run folder), or its
    members' (an ensemble made by ``allegro-jax ensemble``)."""
    from allegro_jax.io.model import find_model_dir, read_ensemble_size, read_model_config

    try:
        config = read_model_config(path)
    except FileNotFoundError:
        return {}
    out = {
        "num_layers": config.num_layers,
        "r_max": config.r_max,
        "l_max": config.l_max,
        "num_scalar_features": config.num_scalar_features,
        "num_tensor_features": config.num_tensor_features,
        "ensemble_size": read_ensemble_size(path),
    }
    if (path / "metrics.csv").exists():
        out["training"] = training_summary(path)
    train_config = path / "train_config.yaml"
    if train_config.exists():
        import yaml

        out["seed"] = (yaml.safe_load(train_config.read_text()) or {}).get("seed")
    if out["ensemble_size"] > 1:
        doc = json.loads((find_model_dir(path) / "config.json").read_text())
        out["members"] = [
            runinfo.repo_path(m["source"], HERE.parents[1]) if "source" in m else None
            for m in doc.get("metadata", {}).get("members", [])
        ]
    return out


def force_std_summary(thermo: np.ndarray, broken_ps: float | None) -> dict:
    """An ensemble run's force spread (eV/Å) from its thermo rows: over the whole run, and
    for a run that broke, in the last picosecond before the first broken frame against the
    intact run before that."""
    t_ps = thermo["time_fs"] / 1000
    smax = thermo["force_std_max"]
    out = {
        "max_over_run_eV_per_A": float(np.max(smax)),
        "median_of_max_eV_per_A": float(np.median(smax)),
        "mean_of_mean_eV_per_A": float(np.mean(thermo["force_std_mean"])),
    }
    if broken_ps is not None:
        before = (t_ps < broken_ps - 1.0) & (t_ps >= EQUILIBRATION_PS)
        last = (t_ps >= broken_ps - 1.0) & (t_ps < broken_ps)
        if before.any() and last.any():
            out["intact_until_1ps_before_break"] = {
                "median_of_max": float(np.median(smax[before])),
                "p99_of_max": float(np.percentile(smax[before], 99)),
                "max": float(np.max(smax[before])),
            }
            out["last_ps_before_break"] = {
                "median_of_max": float(np.median(smax[last])),
                "max": float(np.max(smax[last])),
            }
    return out


def cmd_committee(args: argparse.Namespace) -> int:
    """The force spread of an ensemble (``--model``) on the frames of MD runs (``--runs``,
    e.g. single-model runs that broke): does it rise before the first broken frame?
    -> committee.json and committee.png."""
    from allegro_jax.io.model import load_model, read_ensemble_size

    model = model_path(args.model)
    if read_ensemble_size(model) < 2:
        print(f"{model} is not an ensemble (allegro-jax ensemble --members ... makes one)")
        return 1
    _, _, predict = load_model(model)
    out: dict = {"model": args.model, "runs": {}}
    curves = {}
    for name in args.runs:
        frames = read_frames(RUNS / name, 0.0)
        broken = first_broken_frame(frames)
        t_ps = np.array([f.info["time_fs"] / 1000 for f in frames])
        smax, smean = [], []
        for k in range(0, len(frames), args.batch):
            for pred in predict(frames[k : k + args.batch]):
                smax.append(float(pred["forces_std"].max()))
                smean.append(float(pred["forces_std"].mean()))
        smax = np.array(smax)
        broken_ps = None if broken is None else float(t_ps[broken])
        thermo = {"time_fs": t_ps * 1000, "force_std_max": smax, "force_std_mean": np.array(smean)}
        out["runs"][name] = {
            "frames": len(frames),
            "frame_spacing_ps": float(t_ps[1] - t_ps[0]),
            "first_broken_frame_ps": broken_ps,
            "force_std_eV_per_A": force_std_summary(thermo, broken_ps),
            "series": {"time_ps": t_ps.round(4).tolist(), "force_std_max": smax.round(5).tolist()},
        }
        curves[name] = (t_ps, smax, broken_ps)
        print(f"{name}: {json.dumps(out['runs'][name]['force_std_eV_per_A'])}")
    dest = report_dir(args)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "committee.json").write_text(json.dumps(out, indent=1) + "\n")
    plot_committee(curves, args.model, dest / "committee.png")
    _written(dest / "committee.json", dest / "committee.png")
    return 0


def carry_over_history(results: dict, committed: Path) -> None:
    """Keep in ``results["runs"]`` every run of the committed ``results.json`` whose folder
    was not analysed now (``carried_over_from`` its date) and the 360 K tests of
    :data:`~experiments.water.history.STRESS_360K`, each with the stability keys."""
    old = json.loads(committed.read_text()) if committed.exists() else {}
    if "training" not in results and "training" in old:  # model 3's, runs/train not here
        results["training"] = old["training"]
    for key, value in old.items():  # NVE checks of runs not re-read here
        if key.startswith("nve") or key.startswith("model2/nve"):
            results.setdefault(key, value)
    for name, info in old.get("runs", {}).items():
        if name not in results["runs"]:
            info = {**info, "carried_over_from": info.get("carried_over_from", old.get("date"))}
            info.update(stability_keys(name, info))
            results["runs"][name] = info
    for name, info in STRESS_360K.items():
        results["runs"].setdefault(name, dict(info))


def cmd_analyse(args: argparse.Namespace) -> int:
    import ase.io

    edges = np.linspace(0.0, RDF_R_MAX, RDF_BINS + 1)
    r = 0.5 * (edges[1:] + edges[:-1])

    def rdfs(frames):
        return partial_rdfs(frames, edges)

    dft_frames = ase.io.read(TRAIN_FILE, index=":") + ase.io.read(VALID_FILE, index=":")
    g_dft = rdfs(dft_frames)
    results: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "hardware": f"2-core CPU, shared box ({runinfo.cpu_model()}); MD pinned to one core",
        "versions": versions(),
        "dt_fs": DT_FS,
        "ensemble": f"NVT Nosé–Hoover chain, {TEMPERATURE_K} K, tau {TAU_T_FS} fs",
        "equilibration_discarded_ps": EQUILIBRATION_PS,
        "rdf": {"r_max": RDF_R_MAX, "bins": RDF_BINS, "dft_frames": len(dft_frames)},
        "dft_oh_bond": oh_bond_lengths(dft_frames),
        "msd_fit_window_ps": list(MSD_FIT_PS),
        "runs": {},
    }
    if (RUNS / "train" / "metrics.csv").exists():
        results["training"] = training_summary(RUNS / "train")
    md_curves, md_rdfs, fits = {}, {}, {}
    for name in [*args.runs, *args.compare]:
        run = RUNS / name
        if not (run / "trajectory.extxyz").exists():
            continue
        size = len(ase.io.read(run / "trajectory.extxyz", index=0)) // 3
        all_frames = read_frames(run, 0.0)
        thermo = np.genfromtxt(run / "thermo.csv", delimiter=",", names=True)
        broken = first_broken_frame(all_frames)
        end_fs = thermo["time_fs"][-1]
        if broken is not None:  # production ends at the last intact frame
            end_fs = all_frames[max(broken - 1, 0)].info["time_fs"]
        frames = [f for f in all_frames if EQUILIBRATION_PS * 1000 <= f.info["time_fs"] <= end_fs]
        prod = (thermo["time_fs"] >= EQUILIBRATION_PS * 1000) & (thermo["time_fs"] <= end_fs)
        card_file = run / RUN_CARD
        card = json.loads(card_file.read_text()) if card_file.exists() else {}
        info: dict = {
            "n_molecules": size,
            "n_atoms": len(all_frames[0]),
            "dt_fs": dt_fs(run),
            "simulated_ps": float(thermo["time_fs"][-1] / 1000),
            "molecules_intact_until_ps": None
            if broken is None
            else float(all_frames[broken].info["time_fs"] / 1000),
            "production_ps": float(max(end_fs - EQUILIBRATION_PS * 1000, 0) / 1000),
            "production_frames": len(frames),
            "mean_temperature_K": float(np.mean(thermo["temperature_K"][prod]))
            if prod.any()
            else None,
            "speed": md_speed(run),
        }
        info.update({k: card[k] for k in ("model", "pair_terms", "ensemble_size") if k in card})
        if "temperature_K" in card:
            info["temperature_K"] = card["temperature_K"]
        info.update(stability_keys(name, info))
        model = card.get("model")
        if model and model not in results.setdefault("models", {}):
            results["models"][model] = model_summary(model_path(model))
        if broken is not None:
            info["first_break"] = describe_break(all_frames[broken])
            episodes = broken_episodes(all_frames)
            info["broken_episodes"] = episodes
            lasting = [e for e in episodes if not e["healed"]]
            info["first_lasting_break_ps"] = lasting[0]["start_ps"] if lasting else None
        if "force_std_max" in (thermo.dtype.names or ()):
            info["force_std"] = force_std_summary(thermo, info["molecules_intact_until_ps"])
        label = f"{name}: {size} H2O ({info['production_ps']:.1f} ps)"
        if len(frames) >= 2:
            part, g, curve = frame_observables(frames, rdfs, g_dft, r)
            info.update(part)
            if name in args.runs:  # --compare runs are tabulated, not plotted
                md_rdfs[label] = g
                if curve is not None:
                    md_curves[label], fits[label] = curve
        if broken is not None:  # sensitivity: the whole run after equilibration, defects incl.
            tail = [f for f in all_frames if f.info["time_fs"] >= EQUILIBRATION_PS * 1000]
        if broken is not None and len(tail) >= 2:  # (none for a run broken and ended early)
            part, _, _ = frame_observables(tail, rdfs, g_dft, r)
            part["production_ps"] = float(
                (tail[-1].info["time_fs"] - tail[0].info["time_fs"]) / 1000
            )
            info["whole_run_including_defects"] = part
        results["runs"][name] = info
    for nve_name in ("nve64", "model2/nve64", "nve64_model1", "nve_md64_barrier_dt05"):
        nve = RUNS / nve_name / "thermo.csv"
        if not nve.exists():
            continue
        th = np.genfromtxt(nve, delimiter=",", names=True)
        e = th["total_energy"]
        t_ps = (th["time_fs"] - th["time_fs"][0]) / 1000
        slope = np.polyfit(t_ps, e, 1)[0]
        results[nve_name] = {
            "dt_fs": dt_fs(RUNS / nve_name),
            "length_ps": float(t_ps[-1]),
            "max_abs_drift_eV": float(np.max(np.abs(e - e[0]))),
            "max_abs_drift_meV_per_atom": float(np.max(np.abs(e - e[0])) / 192 * 1000),
            "linear_drift_meV_per_atom_per_ps": float(slope / 192 * 1000),
            "relative_drift": float(np.max(np.abs(e - e[0])) / abs(e[0])),
            "E_tot_std_meV_per_atom": float(np.std(e) / 192 * 1000),
            "mean_temperature_K": float(np.mean(th["temperature_K"])),
        }
    carry_over_history(results, HERE / "results.json")
    out = report_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json"]
    if md_rdfs:
        plot_rdf(r, g_dft, md_rdfs, out / "rdf.png")
        written.append(out / "rdf.png")
    if md_curves:
        plot_msd(md_curves, fits, out / "msd.png")
        written.append(out / "msd.png")
    RUNS.mkdir(parents=True, exist_ok=True)
    np.savez(RUNS / "rdf_curves.npz", r=r, **{f"dft_{k}": v for k, v in g_dft.items()})
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(markdown_table(results))
    print(stability_table(results))
    _written(*written)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("train", help="train (or resume) runs/train from train.yaml")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override passed to allegro-jax train (repeatable)",
    )
    p.add_argument("--config", default=None, help="training config (default train.yaml)")
    p.add_argument("--run", default="train", help="run folder under runs/ (default train)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("md")
    p.add_argument("--size", type=int, choices=(64, 512), default=64, help="water molecules")
    p.add_argument("--ps", type=float, default=25.0, help="total length (incl. equilibration)")
    p.add_argument("--max-wall-time", type=float, default=None, help="seconds, this call")
    p.add_argument("--model", default="train", help="trained run folder under runs/")
    p.add_argument("--out", default=None, help="output folder under runs/ (default mdN)")
    p.add_argument("--temperature", type=float, default=TEMPERATURE_K, help="K")
    p.add_argument("--seed", type=int, default=None, help="velocity seed (default 0)")
    p.add_argument("--dt", type=float, default=DT_FS, help="timestep, fs (default 1)")
    p.add_argument(
        "--stop-when-broken",
        action="store_true",
        help="run in --chunk-ps calls and stop at the first chunk whose water is broken",
    )
    p.add_argument("--chunk-ps", type=float, default=5.0, help="with --stop-when-broken")
    p.set_defaults(func=cmd_md)
    p = sub.add_parser("nve-check")
    p.add_argument("--ps", type=float, default=2.0)
    p.add_argument("--from-ps", type=float, default=5.0, help="start frame of the NVT run")
    p.add_argument("--source", default="md64", help="64-molecule NVT run folder under runs/")
    p.add_argument("--model", default="train", help="trained run folder under runs/")
    p.add_argument("--dt", type=float, default=None, help="fs (default: the source run's)")
    p.add_argument("--out", default=None, help="output folder (default nve64 or nve_SOURCE)")
    p.set_defaults(func=cmd_nve_check)
    p = sub.add_parser("analyse")
    p.add_argument(
        "--runs",
        nargs="+",
        default=["seed3_md64_dt05", "ens4_md64_dt05"],
        help="run folders (plotted)",
    )
    p.add_argument(
        "--compare",
        nargs="*",
        default=[
            "single_md64_dt05",
            "seed1_md64_dt05",
            "seed2_md64_dt05",
            "layers2_md64_dt05",
            "seed3_md512_dt05",
            "seed3_md512_dt05_v1",
            "seed0_md512_dt05",
            "seed2_md512_dt05",
        ],
        help="more run folders (e.g. earlier models) for the table and results.json, not plots",
    )
    p.add_argument("--record", action="store_true", help=RECORD_HELP)
    p.set_defaults(func=cmd_analyse)
    p = sub.add_parser("barrier", help="a trained model plus the O-H barrier (attempt B)")
    p.add_argument("--model", default="train", help="trained run folder under runs/")
    p.add_argument("--out", default="attempts/B_barrier/model3_barrier", help="under runs/")
    p.set_defaults(func=cmd_barrier)
    p = sub.add_parser("diffusion-blocks", help="D_O over a common window and in blocks")
    p.add_argument(
        "--runs",
        nargs="+",
        default=["md64", "md64_dt05", "md64_barrier_dt05", "md512_barrier_dt05"],
    )
    p.add_argument("--until-ps", type=float, default=42.7, help="end of the common window")
    p.add_argument("--block-ps", type=float, default=10.0)
    p.add_argument("--record", action="store_true", help=RECORD_HELP)
    p.set_defaults(func=cmd_diffusion_blocks)
    p = sub.add_parser("committee", help="an ensemble's force spread on MD runs' frames")
    p.add_argument("--model", required=True, help="ensemble model folder under runs/")
    p.add_argument("--runs", nargs="+", required=True, help="MD run folders under runs/")
    p.add_argument("--batch", type=int, default=8, help="frames per evaluation")
    p.add_argument("--record", action="store_true", help=RECORD_HELP)
    p.set_defaults(func=cmd_committee)
    p = sub.add_parser("publish", help="copy a trained model to models/NAME (committed)")
    p.add_argument("--run", required=True, help="run folder (or ensemble model) under runs/")
    p.add_argument("--name", required=True, help="folder under models/")
    p.set_defaults(func=cmd_publish)
    p = sub.add_parser("augment", help="DFT + synthetic stretched-bond frames (attempt E)")
    p.set_defaults(func=lambda args: 0 if augment() else 1)
    p = sub.add_parser("stretch", help="stretched O-H bonds and approaching molecules")
    p.add_argument("--models", nargs="+", default=["train"], help="trained run folders")
    p.add_argument("--frames", type=int, default=4, help="validation frames to probe")
    p.add_argument("--record", action="store_true", help=RECORD_HELP)
    p.set_defaults(func=cmd_stretch)
    args = parser.parse_args(argv)
    t0 = time.time()
    rc = args.func(args)
    print(f"[{args.cmd}] done in {time.time() - t0:.0f} s, rc {rc}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
