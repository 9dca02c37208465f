"""What the water runs measure: the runs' frames and speed, the O–O, O–H and H–H radial
distribution functions, the O mean-squared displacement and self-diffusion coefficient."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from experiments.water.structure import oh_bond_lengths

MSD_FIT_PS = (1.0, 4.0)  # window of the Einstein fit (lag times, ≤ half the production)
RDF_R_MAX, RDF_BINS = 6.0, 120
RDF_PAIRS = {"O-O": ("O", "O"), "O-H": ("O", "H"), "H-H": ("H", "H")}


def dt_fs(run: Path) -> float:
    """The run's timestep, from its thermo log (``time_fs / step``)."""
    first = np.genfromtxt(run / "thermo.csv", delimiter=",", names=True, max_rows=1)
    return float(first["time_fs"] / first["step"])


def read_frames(run: Path, skip_ps: float):
    """The run's frames from ``skip_ps`` on, each with ``info["time_fs"]``."""
    import ase.io

    dt = dt_fs(run)
    frames = ase.io.read(run / "trajectory.extxyz", index=":")
    for f in frames:
        f.info["time_fs"] = f.info["step"] * dt
    return [f for f in frames if f.info["time_fs"] >= skip_ps * 1000]


def md_speed(run: Path) -> dict | None:
    """Steps per second of a run (after its first chunk), from its ``timing.jsonl``."""
    if not (run / "timing.jsonl").exists():  # a run killed before it finished
        return None
    rows = [json.loads(ln) for ln in (run / "timing.jsonl").read_text().splitlines() if ln]
    steps = sum(r["steps"] for r in rows)
    wall = sum(r["wall_s"] for r in rows)
    steady = [r for r in rows if r["steps_per_s_after_first_chunk"]]
    rate = (
        sum(r["steps_per_s_after_first_chunk"] * r["steps"] for r in steady)
        / sum(r["steps"] for r in steady)
        if steady
        else steps / wall
    )
    n_atoms = rows[-1]["n_atoms"]
    return {
        "steps_per_s": rate,
        "atom_steps_per_s": rate * n_atoms,
        "ns_per_day": rate * dt_fs(run) * 1e-6 * 86400,
        "total_steps": steps,
        "total_wall_s": wall,
        "load_average_1min": [r["load_average"][0] for r in rows],
    }


def partial_rdfs(frames, edges) -> dict[str, np.ndarray]:
    """g(r) of each pair of :data:`RDF_PAIRS` over a list of frames, on the bins ``edges``."""
    from allegro_jax.md.analysis import rdf

    symbols = np.array(frames[0].get_chemical_symbols())
    pos = np.stack([f.positions for f in frames])
    cell = np.array(frames[0].cell)
    return {
        name: rdf(pos, cell, symbols == a, symbols == b, edges)
        for name, (a, b) in RDF_PAIRS.items()
    }


def frame_observables(frames, rdfs, g_dft, r):
    """RDF differences to DFT and the O self-diffusion coefficient of a list of frames."""
    from allegro_jax.md.analysis import diffusion_coefficient

    g = rdfs(frames)
    info: dict = {"rdf_max_abs_diff": {k: float(np.max(np.abs(g[k] - g_dft[k]))) for k in g}}
    info["oh_bond"] = oh_bond_lengths(frames)
    peak = (r > 2.4) & (r < 3.3)
    info["rdf_OO_first_peak"] = {
        "max_abs_diff": float(np.max(np.abs(g["O-O"][peak] - g_dft["O-O"][peak]))),
        "md_height": float(g["O-O"][peak].max()),
        "dft_height": float(g_dft["O-O"][peak].max()),
        "md_position_A": float(r[peak][np.argmax(g["O-O"][peak])]),
        "dft_position_A": float(r[peak][np.argmax(g_dft["O-O"][peak])]),
    }
    t, msd = oxygen_msd(frames)
    dt_frame_ps = (frames[1].info["time_fs"] - frames[0].info["time_fs"]) / 1000
    if t[-1] < MSD_FIT_PS[1]:
        info["diffusion_O_cm2_per_s"] = None
        info["diffusion_note"] = f"production too short for the {MSD_FIT_PS} ps window"
        return info, g, None
    d, slope, intercept = diffusion_coefficient(t, msd, MSD_FIT_PS)
    info["diffusion_O_cm2_per_s"] = d
    # Spread over independent time blocks, each long enough for the same fit window.
    n_blocks = int(len(frames) * dt_frame_ps // (2 * MSD_FIT_PS[1]))
    if n_blocks >= 2:
        per_block = []
        for block in np.array_split(np.arange(len(frames)), n_blocks):
            per_block.append(oxygen_diffusion(frames[block[0] : block[-1] + 1]))
        info["diffusion_O_blocks_cm2_per_s"] = per_block
        info["diffusion_O_standard_error_cm2_per_s"] = float(
            np.std(per_block, ddof=1) / np.sqrt(n_blocks)
        )
    return info, g, ((t, msd), (slope, intercept))


def oxygen_msd(frames) -> tuple[np.ndarray, np.ndarray]:
    """Lag times (ps) and the O mean-squared displacement (Å², all time origins, unwrapped,
    centre-of-mass drift removed) of a list of frames, up to half their length."""
    from allegro_jax.md.analysis import (
        mean_squared_displacement,
        remove_center_of_mass_drift,
        unwrap,
    )

    pos = unwrap(np.stack([f.positions for f in frames]), np.array(frames[0].cell))
    pos = remove_center_of_mass_drift(pos, frames[0].get_masses())
    oxygen = np.array(frames[0].get_chemical_symbols()) == "O"
    dt_frame_ps = (frames[1].info["time_fs"] - frames[0].info["time_fs"]) / 1000
    lags, msd = mean_squared_displacement(pos[:, oxygen], max_lag=len(frames) // 2)
    return lags * dt_frame_ps, msd


def oxygen_diffusion(frames) -> float:
    """D_O (cm²/s) of a list of frames: Einstein fit of the O MSD over ``MSD_FIT_PS``."""
    from allegro_jax.md.analysis import diffusion_coefficient

    return diffusion_coefficient(*oxygen_msd(frames), MSD_FIT_PS)[0]
