"""Provenance helpers for experiment and benchmark reports (not part of ``allegro_jax``;
imported as ``experiments.runinfo``): the CPU model, generated tables spliced into
hand-written READMEs, and paths and commands recorded without anything specific to one
machine (:func:`repo_path`, :func:`portable_config`, :func:`portable_command`)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere),
    with its family and model numbers and widest x86 vector extension where the file has
    them: ``"AMD EPYC (family 26 model 2, AVX-512)"``. A hypervisor may name every EPYC
    generation ``"AMD EPYC"``, and timings from two of them differ by more than any change
    of ours (benchmarks/NOTES.md, 13). ``cpuinfo``: the file's text (for tests)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return platform.processor() or "unknown CPU"
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is enough
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    details = []
    if "cpu family" in fields and "model" in fields:
        details.append(f"family {fields['cpu family']} model {fields['model']}")
    flags = set(fields.get("flags", "").split())
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    if vector:
        details.append(vector)
    return f"{name} ({', '.join(details)})" if details else name


def matmul_gflops(n: int = 2048, repeats: int = 20) -> float:
    """GFLOP/s of a jitted float32 ``n x n`` matrix product on the default device (median
    of ``repeats`` calls after one warm-up): the machine's speed beside a benchmark's
    timings, since a model name may not tell two machines apart (:func:`cpu_model`)."""
    a = jnp.ones((n, n), jnp.float32)
    product = jax.jit(lambda x: x @ x)
    product(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        product(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return round(2.0 * n**3 / float(np.median(times)) / 1e9, 1)


def splice_block(path: Path, start: str, end: str, body: str, new_text: str = "") -> None:
    """Replace the text between the marker lines ``start`` and ``end`` of ``path`` by
    ``body``; markers missing are appended (to ``new_text`` if the file does not exist)."""
    text = path.read_text() if path.exists() else new_text
    if start not in text or end not in text:
        text = text.rstrip() + f"\n\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{body}\n{end}{tail}")


# ---- what experiment scripts record: paths that mean the same on every machine ------------

PATH_KEYS = (
    "dataset_file_name",
    "validation_dataset_file_name",
    "test_dataset_file_name",
    "initial_model",
    "workdir",
)
"""Keys of a training config (:meth:`TrainConfig.to_dict`) that hold paths."""


def repo_path(path: str | os.PathLike, repo: str | os.PathLike) -> str:
    """A path as an experiment records it: relative to the repository root ``repo``
    (``experiments/rmd17/runs/...``), or to its parent folder (``../shared/data/...``, where
    the project keeps its data), else absolute.

    Args:
        path: any path (a relative one is taken relative to the working directory).
        repo: the repository root.
    """
    given, root = Path(os.path.abspath(path)), Path(os.path.abspath(repo))
    for p, r in ((given, root), (given.resolve(), root.resolve())):  # as given, then real
        if p.is_relative_to(r):
            return p.relative_to(r).as_posix()
        if p.is_relative_to(r.parent):
            return (Path("..") / p.relative_to(r.parent)).as_posix()
    return str(given)


def portable_config(config: dict[str, Any], repo: str | os.PathLike) -> dict[str, Any]:
    """A training config dict with its paths (:data:`PATH_KEYS`) made :func:`repo_path`."""
    return {
        k: repo_path(v, repo) if k in PATH_KEYS and isinstance(v, str) and v else v
        for k, v in config.items()
    }


def portable_command(args: Sequence[str], repo: str | os.PathLike) -> str:
    """A command line as an experiment records it (``shlex.join``): this Python interpreter
    as ``python``, other programs next to it by their name (``nequip-train``), and absolute
    paths, also in ``key=/abs/path`` arguments, made :func:`repo_path`."""
    bindir = Path(sys.executable).parent

    def one(arg: str) -> str:
        if arg == sys.executable:
            return "python"
        if os.path.isabs(arg) and Path(arg).parent == bindir:
            return Path(arg).name
        if os.path.isabs(arg):
            return repo_path(arg, repo)
        key, sep, value = arg.partition("=")
        if sep and os.path.isabs(value):
            return f"{key}={repo_path(value, repo)}"
        return arg

    return shlex.join(one(str(a)) for a in args)


def publish_model(workdir: Path, dest: Path, repo: str | os.PathLike) -> Path:
    """Copy a run's best model to ``dest`` (atomically replaced), with the run's metrics
    curve, summary, statistics and test metrics; the test metrics' data path is recorded
    relative to the repository (:func:`repo_path`), as the experiments record every path.

    Raises:
        SystemExit: the run has no exported model yet.
    """
    if not (workdir / "model" / "config.json").exists():
        raise SystemExit(f"{workdir / 'model'}: no trained model to publish")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(workdir / "model", tmp)
    for name in ("metrics.csv", "summary.json", "statistics.json", "test_metrics.json"):
        if (workdir / name).exists():
            shutil.copy2(workdir / name, tmp / name)
    test = tmp / "test_metrics.json"
    if test.exists():
        metrics = json.loads(test.read_text())
        if isinstance(metrics.get("data"), str):
            metrics["data"] = repo_path(metrics["data"], repo)
        test.write_text(json.dumps(metrics, indent=2) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def device_description() -> str:
    """The first JAX device: the GPU's name, or the CPU model string and usable core count."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        return f"{dev.device_kind} ({jax.device_count()}x {dev.platform})"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_model()}, {cores} cores (CPU)"


def learning_curve(rows: list[dict[str, Any]], key: str, points: int = 200) -> list[list[float]]:
    """``[CPU hours, row[key]]`` of the metrics rows that have both, thinned to about
    ``points`` (the last row always kept): the data of a learning-curve plot."""
    pts = [
        [round(r["cpu_time_s"] / 3600.0, 4), round(r[key], 3)]
        for r in rows
        if r.get("cpu_time_s") is not None and r.get(key) is not None
    ]
    step = max(1, -(-len(pts) // points))
    return pts[::step] + ([pts[-1]] if pts and (len(pts) - 1) % step else [])


def training_stages(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Every training run behind a model, oldest first (its ``previous_stages``, then the
    run of ``summary`` itself): hardware, epochs, steps, wall minutes, CPU hours, stop."""

    def one(s: dict[str, Any]) -> dict[str, Any]:
        return {
            "hardware": s.get("device_kind") or s.get("backend"),
            "epochs": s.get("epochs"),
            "steps": s.get("steps"),
            "wall_minutes": round((s.get("train_wall_time_s") or 0.0) / 60.0, 1),
            "cpu_hours": round((s.get("train_cpu_time_s") or 0.0) / 3600.0, 3),
            "stop_reason": s.get("stop_reason"),
        }

    earlier = [one(s) for s in summary.get("previous_stages") or []]
    return earlier + ([one(summary)] if summary else [])


def previous_cpu_hours(summary: dict[str, Any]) -> float:
    """CPU hours of the runs a fine-tuned model started from (0 for a run from scratch)."""
    cpu_s = [s.get("train_cpu_time_s") or 0.0 for s in summary.get("previous_stages") or []]
    return sum(cpu_s) / 3600.0


def add_cosine_epochs_option(parser: argparse.ArgumentParser, start: str) -> None:
    """``--cosine-epochs N`` of the experiment scripts (:func:`cosine_overrides`)."""
    parser.add_argument(
        "--cosine-epochs",
        type=int,
        default=None,
        help="train this many epochs with the rate falling along a half cosine to 0 (a run "
        f"that finishes: no early stopping; from the {start} model when the run directory "
        "is new)",
    )


def cosine_overrides(epochs: int | None) -> dict[str, Any]:
    """Training-config overrides of a run of ``epochs`` epochs that ends annealed
    (``lr_scheduler_name: cosine``, no early stopping: the best models come at the end of
    the annealing, and a patience counted on a noisy validation metric stopped a 300-epoch
    Mo run at epoch 176 with the rate still at half its start); none for ``None``."""
    if epochs is None:
        return {}
    return {"lr_scheduler_name": "cosine", "max_epochs": epochs, "early_stopping_patiences": {}}


def git_commit(repo: str | os.PathLike) -> str | None:
    """The repository's HEAD as a short hash, ``+dirty`` when tracked files have changes
    (None outside a git checkout)."""

    def git(*args: str) -> str:
        cmd = ["git", "-C", str(repo), *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()

    try:
        rev = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev + ("+dirty" if dirty else "")
