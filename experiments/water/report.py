"""The water README's results table (from ``results.json``) and the package versions
``results.json`` records."""

from __future__ import annotations

import platform

from experiments.water.settings import DT_FS


def markdown_table(results: dict) -> str:
    """The README's results table from ``results.json``."""
    head = (
        "| run | molecules | dt (fs) | production (ps) | intact until (ps) | ⟨T⟩ (K) "
        "| O–O peak max abs Δg "
        "| O–O peak height MD / DFT (position, Å) | max abs Δg O–O / O–H / H–H "
        "| D_O (10⁻⁵ cm²/s) | steps/s | atom-steps/s | ns/day | load avg |\n"
        "|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---|\n"
    )
    rows = []
    for name, r in results["runs"].items():
        if "production_ps" not in r:  # a stability test tabled by stability_table only
            continue
        pk, g, sp = r.get("rdf_OO_first_peak"), r.get("rdf_max_abs_diff"), r.get("speed")
        d = r.get("diffusion_O_cm2_per_s")
        rows.append(
            f"| {name} | {r['n_molecules']} | {r.get('dt_fs', DT_FS):g} | {r['production_ps']:.1f} "
            f"| {r['molecules_intact_until_ps'] or '—'} "
            + (f"| {r['mean_temperature_K']:.1f} " if r.get("mean_temperature_K") else "| — ")
            + ""
            + (
                f"| {pk['max_abs_diff']:.2f} | {pk['md_height']:.2f} / {pk['dft_height']:.2f} "
                f"({pk['md_position_A']:.3f} / {pk['dft_position_A']:.3f}) "
                f"| {g['O-O']:.2f} / {g['O-H']:.2f} / {g['H-H']:.2f} "
                if pk
                else "| — | — | — "
            )
            + (
                f"| {d * 1e5:.2f} ± {se * 1e5:.2f} "
                if d and (se := r.get("diffusion_O_standard_error_cm2_per_s"))
                else (f"| {d * 1e5:.2f} " if d else "| — ")
            )
            + (
                f"| {sp['steps_per_s']:.2f} | {sp['atom_steps_per_s']:.0f} "
                f"| {sp['ns_per_day']:.2f} "
                f"| {', '.join(f'{x:.1f}' for x in sp['load_average_1min'])} |"
                if sp
                else "| — | — | — | — |"
            )
        )
    return head + "\n".join(rows) + "\n"


def stability_table(results: dict) -> str:
    """Every MD run of ``results.json``: model, molecules, fixed pair terms or not, step,
    temperature, simulated time and how long the water stayed intact."""
    head = (
        "| run | model | molecules | pair terms | dt (fs) | T (K) | simulated (ps) "
        "| intact (ps) | note |\n|---|---|---:|---|---:|---:|---:|---:|---|\n"
    )
    rows = []
    for name, r in results["runs"].items():
        broke = r.get("molecules_intact_until_ps")
        intact = f"**{r['intact_ps']:.1f}** (whole run)" if broke is None else f"{broke:.1f}"
        if broke is not None and "first_lasting_break_ps" in r:
            lasting = r["first_lasting_break_ps"]
            healed = sum(e["healed"] for e in r.get("broken_episodes", []))
            intact += f"; {healed} transient, lasting defect " + (
                "none" if lasting is None else f"at {lasting:.1f}"
            )
        rows.append(
            f"| {name} | {r.get('model') or '—'} | {r['molecules']} "
            f"| {({True: 'yes', False: 'no'}).get(r['pair_terms'], '—')} | {r['dt_fs']:g} "
            f"| {r.get('temperature_K', 300.0):g} | {r['simulated_ps']:.1f} | {intact} "
            f"| {r.get('note', '')} |"
        )
    return head + "\n".join(rows) + "\n"


def probe_table(stretch: dict, points: dict | None = None) -> str:
    """Median / minimum energy change (eV) of each model's probes (``stretch.json``) at a
    few distances: where the DFT frames never go, a physical model costs energy."""
    points = points or {
        "stretch": (1.2, 1.4, 1.6),
        "approach": (1.2, 1.0),
        "contact": (2.0, 1.8, 1.7),
    }
    head = "| model | " + " | ".join(f"{probe} {d:g} Å" for probe, ds in points.items() for d in ds)
    n = sum(len(ds) for ds in points.values())
    rows = [head + " |", "|---|" + "---|" * n]
    for name, probes in stretch["models"].items():
        cells = []
        for probe, ds in points.items():
            p = probes.get(probe)
            for d in ds:
                if p is None or d not in p["distances_A"]:
                    cells.append("—")
                    continue
                k = p["distances_A"].index(d)
                cells.append(f"{p['median_eV'][k]:.2f} / {p['min_eV'][k]:.2f}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "jax-md", "e3nn-jax", "flax", "ase", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out
