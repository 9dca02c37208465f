"""Model size by measurement: validation force MAE against CPU-hours, 3 sizes, 2 molecules.

Usage (from the repository root; the run directories live outside the work tree)::

    python -m experiments.rmd17.size_study train --runs-dir ../runs/rmd17_size --minutes 60
    python -m experiments.rmd17.size_study report --runs-dir ../runs/rmd17_size

``train`` trains (or resumes) every (size, molecule) pair named by ``--sizes`` and
``--molecules`` for at most ``--minutes`` of wall clock each, with the paper's protocol
(``configs/<molecule>.yaml``: 950/50 split, batch 5, Adam 2e-3, EMA, plateau schedule); call
it again to train longer. Only validation frames are used: the test files are not read.
``report`` reads each run's ``metrics.jsonl`` (validation force MAE and the cumulative CPU
seconds of the training process, all threads) and writes ``size_study.json`` and
``size_study.png`` next to this file: the curves, and the best validation force MAE each
size reached within the same CPU budgets.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CONFIGS = HERE / "configs"


def _architecture(variant_file: str) -> dict:
    """The model keys of a run.py variant's overrides (configs/<file>), without run settings."""
    import yaml

    keys = yaml.safe_load((CONFIGS / variant_file).read_text())
    return {k: v for k, v in keys.items() if k != "checkpoint_every"}


SIZES = {  # overrides of configs/<molecule>.yaml ("full" = the file itself)
    "small": _architecture("cpu_budget.yaml"),  # the allegro >= 0.7 default (--variant cpu)
    "mid": _architecture("mid.yaml"),  # (--variant mid)
    "full": {},  # 3 layers, S 128, C 64, MLP 128 (paper-like)
}
BUDGETS_CPU_H = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def run_dir(runs_dir: Path, size: str, molecule: str) -> Path:
    return runs_dir / size / molecule


def train(args: argparse.Namespace) -> None:
    from allegro_jax.train.config import load_config
    from allegro_jax.train.loop import train_and_evaluate

    data = Path(args.data_dir)
    for size in args.sizes:
        for mol in args.molecules:
            overrides = dict(SIZES[size])
            overrides |= {
                "dataset_file_name": str(data / f"rmd17_{mol}_train_01.npz"),
                "test_dataset_file_name": None,  # validation only
                "max_wall_time": 60.0 * args.minutes,
                "progress_bar": False,
                "checkpoint_every": None,
            }
            config = load_config(CONFIGS / f"{mol}.yaml", overrides)
            workdir = run_dir(Path(args.runs_dir), size, mol)
            summary_file = workdir / "summary.json"
            if summary_file.exists():
                done = json.loads(summary_file.read_text()).get("stop_reason")
                if done in ("early_stopping_patience", "lr_below_min", "max_epochs"):
                    print(f"[{size}/{mol}] finished ({done})", flush=True)
                    continue
            print(f"[{size}/{mol}] training in {workdir} for {args.minutes} min", flush=True)
            train_and_evaluate(config, workdir)


def curve(workdir: Path) -> list[tuple[float, float]]:
    """``(CPU hours, validation force MAE meV/Å)`` per epoch of a run."""
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        (r["cpu_time_s"] / 3600.0, r["validation_force_mae_mev_per_a"])
        for r in rows
        if "cpu_time_s" in r and "validation_force_mae_mev_per_a" in r
    ]


def count_params(path: Path) -> int:
    """Number of parameters in a saved ``params.msgpack`` (runs stopped before their summary)."""
    import jax
    import numpy as np
    from flax import serialization

    return int(
        sum(np.size(x) for x in jax.tree.leaves(serialization.msgpack_restore(path.read_bytes())))
    )


def best_within(points: list[tuple[float, float]], budget_h: float) -> float | None:
    """The best validation force MAE reached within ``budget_h`` CPU hours (None: the run
    has not used that much CPU yet, or its first epoch took longer)."""
    inside = [mae for h, mae in points if h <= budget_h]
    if not inside or points[-1][0] < budget_h:
        return None
    return min(inside)


def report(args: argparse.Namespace) -> dict:
    runs_dir = Path(args.runs_dir)
    out: dict = {"budgets_cpu_hours": list(BUDGETS_CPU_H), "runs": {}}
    for size in SIZES:
        for mol in args.molecules:
            workdir = run_dir(runs_dir, size, mol)
            points = curve(workdir)
            if not points:
                continue
            summary = workdir / "summary.json"
            n_params = json.loads(summary.read_text()).get("n_params") if summary.exists() else None
            if n_params is None and (workdir / "model" / "params.msgpack").exists():
                n_params = count_params(workdir / "model" / "params.msgpack")
            out["runs"][f"{size}/{mol}"] = {
                "size": size,
                "molecule": mol,
                "overrides": SIZES[size],
                "n_params": n_params,
                "epochs": len(points),
                "cpu_hours": round(points[-1][0], 3),
                "best_validation_force_mae": round(min(m for _, m in points), 3),
                "best_within_budget": {str(b): best_within(points, b) for b in BUDGETS_CPU_H},
                "curve": [(round(h, 4), round(m, 3)) for h, m in points],
            }
    (HERE / "size_study.json").write_text(json.dumps(out, indent=1) + "\n")
    plot(out, HERE / "size_study.png")
    print(table(out))
    return out


def table(out: dict) -> str:
    budgets = out["budgets_cpu_hours"]
    lines = [
        "| size | molecule | params | CPU h so far | "
        + " | ".join(f"best val F MAE ≤ {b} CPU h" for b in budgets)
        + " |",
        "|---|---|---:|---:|" + "---:|" * len(budgets),
    ]
    for r in out["runs"].values():
        cells = [
            ""
            if r["best_within_budget"][str(b)] is None
            else f"{r['best_within_budget'][str(b)]:.1f}"
            for b in budgets
        ]
        lines.append(
            f"| {r['size']} | {r['molecule']} | {r['n_params']} | {r['cpu_hours']:.2f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mols = sorted({r["molecule"] for r in out["runs"].values()})
    if not mols:
        return
    fig, axes = plt.subplots(1, len(mols), figsize=(5 * len(mols), 4), squeeze=False)
    for ax, mol in zip(axes[0], mols, strict=True):
        for r in out["runs"].values():
            if r["molecule"] != mol:
                continue
            h, m = zip(*r["curve"], strict=True)
            ax.loglog(h, m, label=f"{r['size']} ({r['n_params']} params)")
        ax.set(title=f"rMD17 {mol}", xlabel="CPU hours", ylabel="validation force MAE (meV/Å)")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("command", choices=("train", "report"))
    p.add_argument("--runs-dir", default=str(REPO.parent / "runs" / "rmd17_size"))
    p.add_argument("--data-dir", default=str(REPO.parent / "shared/data/rmd17"))
    p.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--molecules", nargs="*", default=["ethanol", "aspirin"])
    p.add_argument("--minutes", type=float, default=60.0, help="wall clock per run and call")
    args = p.parse_args(argv)
    if args.command == "train":
        train(args)
    else:
        report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
