"""Tiny models, systems and the MPI launcher for the LAMMPS tests
(``from lammps_helpers import ...``)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
from systems import REPO, random_periodic, water_box

from allegro_jax.config import AllegroConfig
from allegro_jax.data.graph import Structure
from allegro_jax.data.padding import build_graph
from allegro_jax.io.model import save_model
from allegro_jax.nn.model import make_model

WORKER = Path(__file__).with_name("lammps_worker.py")
#: LAMMPS metal units: pressure [bar] = NKTV2P * virial [eV] / volume [Å^3]
NKTV2P = 1.6021765e6


def tiny_config(type_names, dtype: str, r_max: float = 2.6, **changes) -> AllegroConfig:
    kwargs = dict(
        type_names=tuple(type_names),
        r_max=r_max,
        l_max=1,
        num_layers=1,
        num_scalar_features=8,
        num_tensor_features=4,
        scalar_embed_mlp_hidden_layers_width=8,
        allegro_mlp_hidden_layers_width=8,
        readout_mlp_hidden_layers_width=8,
        avg_num_neighbors=8.0,
        per_type_energy_shifts=tuple(-1.0 - t for t in range(len(type_names))),
        per_type_energy_scales=0.1,
        model_dtype=dtype,
    )
    kwargs.update(changes)
    return AllegroConfig(**kwargs)


def make_model_dir(path: Path, config: AllegroConfig, seed: int = 0) -> tuple[Path, dict]:
    init_fn, _ = make_model(config)
    params = init_fn(jax.random.PRNGKey(seed))
    save_model(path, config, params)
    return path, params


def triclinic_cell() -> Structure:
    """Two species (O, Si) in a skewed triclinic cell, 2x2x1 of a random 6-atom cell."""
    s = random_periodic(np.random.default_rng(3), n=6)
    reps = np.array([2, 2, 1])
    shifts = np.array(list(np.ndindex(*reps))) @ s.cell  # [4, 3]
    pos = (s.positions[None] + shifts[:, None]).reshape(-1, 3)
    return Structure(
        numbers=np.tile(s.numbers, len(shifts)),
        positions=pos,
        cell=s.cell * reps[:, None],
        pbc=True,
    )


def water() -> Structure:
    return water_box(3, seed=1)


def reference(config: AllegroConfig, params, structure: Structure, budget=None) -> dict:
    """Energy, forces and virial of the single-process model (float64 geometry)."""
    _, apply_fn = make_model(config)
    graph = build_graph([structure], config.type_names, config.r_max, budget, dtype=np.float64)
    out = jax.jit(apply_fn, static_argnames=("forces", "stress"))(params, graph, stress=True)
    n = structure.n_atoms
    return {
        "energy": float(out["energy"][0]),
        "forces": np.asarray(out["forces"][:n], dtype=np.float64),
        "virial": np.asarray(out["virial"][0], dtype=np.float64),
        "stress": np.asarray(out["stress"][0], dtype=np.float64),
    }


def mpiexec() -> str:
    local = Path(sys.executable).with_name("mpiexec")
    return str(local) if local.exists() else (shutil.which("mpiexec") or "mpiexec")


def subprocess_env(cache_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env.setdefault("OMP_NUM_THREADS", "1")
    if cache_dir is not None:  # compiled shapes are shared between the ranks and the runs
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


def run_mpi(args, n_ranks: int, cwd: Path, timeout: float = 300, cache_dir=None):
    """``mpiexec -n n_ranks <args>``; returns the CompletedProcess (never hangs: timeout)."""
    cmd = [mpiexec(), "-n", str(n_ranks), *map(str, args)]
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=subprocess_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_worker(jobs: list[dict], n_ranks: int, cwd: Path, cache_dir=None) -> list[dict]:
    """Run LAMMPS jobs (see lammps_worker.py) on ``n_ranks`` ranks; their results."""
    spec = cwd / f"jobs_{n_ranks}.json"
    out = cwd / f"results_{n_ranks}.json"
    spec.write_text(json.dumps(jobs))
    proc = run_mpi([sys.executable, WORKER, spec, out], n_ranks, cwd, cache_dir=cache_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    for r in results:
        for key in ("forces", "positions", "velocities", "cell"):
            if key in r:
                r[key] = np.asarray(r[key])
    return results


def lammps_virial(pressure_virial: np.ndarray, volume: float) -> np.ndarray:
    """The 3x3 virial (eV) from LAMMPS's virial-only pressure vector (bar; xx yy zz xy xz yz)."""
    w = np.asarray(pressure_virial) * volume / NKTV2P
    return np.array([[w[0], w[3], w[4]], [w[3], w[1], w[5]], [w[4], w[5], w[2]]])


def emulate_ranks(structure, n_ranks: int, ghost_cut: float):
    """Per rank: (positions [owned + ghosts], atom index of each, n_owned)."""
    cell = structure.cell
    frac = structure.positions @ np.linalg.inv(cell)
    frac -= np.floor(frac)
    pos = frac @ cell
    heights = np.abs(np.linalg.det(cell)) / np.linalg.norm(
        np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1
    )
    reach = np.ceil(ghost_cut / heights).astype(int) + 1
    images = np.array(list(itertools.product(*(range(-r, r + 1) for r in reach))))
    all_pos = (pos[None] + (images @ cell)[:, None]).reshape(-1, 3)  # [n_img * n, 3]
    all_idx = np.tile(np.arange(structure.n_atoms), len(images))
    is_home = np.repeat(np.all(images == 0, axis=1), structure.n_atoms)
    owner = np.minimum((frac[:, 0] * n_ranks).astype(int), n_ranks - 1)
    ranks = []
    for r in range(n_ranks):
        owned = np.flatnonzero(owner == r)
        d = np.linalg.norm(all_pos[:, None] - pos[owned][None], axis=-1).min(axis=1)
        ghost = np.flatnonzero((d < ghost_cut) & ~(is_home & np.isin(all_idx, owned)))
        ranks.append(
            (
                np.concatenate([pos[owned], all_pos[ghost]]),
                np.concatenate([owned, all_idx[ghost]]),
                owned.size,
            )
        )
    return pos, ranks
