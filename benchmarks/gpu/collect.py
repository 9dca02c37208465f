"""Merge the outputs of ``benchmarks/gpu/run.sh`` into ``<OUT>/<prefix>_<device>.json``
and print a summary; the file is what gets committed as ``benchmarks/results/``.

    python benchmarks/gpu/collect.py OUT_DIR gpu --wall-s 420
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
from pathlib import Path


def device_slug(parts: dict) -> str:
    for p in parts.values():
        kind = p.get("device_kind") if isinstance(p, dict) else None
        if kind:
            return re.sub(r"[^a-z0-9]+", "_", kind.lower()).strip("_")
    return "unknown"


def summary(rep: dict) -> str:
    lines = []
    for dtype in ("float32", "float64"):
        part = rep.get(dtype) or {}
        for row in part.get("energy_forces") or []:
            if "ms" in row:
                lines.append(
                    f"{dtype} E+F Si {row['atoms']}: {row['ms']:.2f} ms "
                    f"({row['us_per_atom']:.3f} us/atom, {row['xla_memory_gib']:.2f} GiB)"
                )
            else:
                lines.append(
                    f"{dtype} E+F Si {row['atoms']}: {row.get('skipped') or row.get('error')}"
                )
        for row in part.get("md") or []:
            if "steps_per_s" in row:
                lines.append(
                    f"{dtype} MD Si {row['atoms']}: {row['steps_per_s']:.1f} steps/s, "
                    f"{row['atom_steps_per_s']:.3g} atom-steps/s, "
                    f"{row['rebuilds_per_100_steps']:.1f} rebuilds/100 steps, "
                    f"max {row['max_temperature_K']:.0f} K"
                )
            else:
                lines.append(
                    f"{dtype} MD Si {row['atoms']}: {row.get('skipped') or row.get('error')}"
                )
        for row in part.get("train_step") or []:
            lines.append(
                f"{dtype} train {row['batch']} x Si {row['cell_atoms']}: "
                + (f"{row['ms']:.2f} ms" if "ms" in row else str(row.get("error")))
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("prefix")
    ap.add_argument("--wall-s", type=float)
    args = ap.parse_args()
    out = Path(args.out_dir)
    parts = {}
    for name in ("env", "float32", "float64"):
        path = out / f"{args.prefix}_{name}.json"
        if path.exists() and path.stat().st_size:
            parts[name] = json.loads(path.read_text())
    commit = os.environ.get("GIT_COMMIT")  # set it when the tree is a copy without .git
    if not commit:
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip()
        except OSError:
            commit = None
    rep = {
        "date": datetime.date.today().isoformat(),
        "command": "bash benchmarks/gpu/run.sh"
        + (" --cpu-smoke" if args.prefix == "smoke" else ""),
        "git_commit": commit or None,
        "wall_s": args.wall_s,
        **parts,
    }
    path = out / f"{args.prefix}_{device_slug(parts)}.json"
    path.write_text(json.dumps(rep, indent=1))
    print(summary(rep))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
