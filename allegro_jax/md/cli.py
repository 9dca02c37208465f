"""``allegro-jax md``: run MD from a trained model and a structure file.

Writes, after every chunk (``log_every * logs_per_chunk`` steps):

* ``OUT/thermo.csv``: step, time_fs, T_K, E_pot, E_kin, E_tot, conserved, pressure_bar,
  volume, one row per ``log_every`` steps; for an ensemble model (``ensemble_size`` > 1)
  the dynamics follow the members' mean and two more columns, ``force_std_max`` and
  ``force_std_mean`` (eV/Å), give the members' force standard deviation as an uncertainty;
* ``OUT/trajectory.extxyz``: one frame per chunk (positions, velocities in Å/fs, cell,
  energy, step);
* ``OUT/timing.jsonl``: one line per invocation (steps, wall time, steps/s after the first
  chunk, i.e. without compilation, load average);
* ``OUT/checkpoint.npz``: the full integrator state (positions, momenta, forces,
  Nosé–Hoover chain variables, Langevin PRNG key, NPT box and barostat, neighbour list,
  step) plus the settings it belongs to, written atomically.

``--restart`` continues from that checkpoint exactly: the continued trajectory is the one an
uninterrupted run would have produced (bit for bit unless the neighbour list had been
reallocated). Rows and frames written after the checkpoint (a run killed between the two)
are dropped first. If the ensemble, temperature, pressure, timestep or thermostat/barostat
time constants changed, only positions and velocities are taken over and the
thermostat/barostat start afresh. ``--until-step N`` runs until step N (so the same
command resumes a run to its end), ``--max-wall-time`` stops cleanly after a chunk.

Progress: a tqdm bar on a terminal; otherwise one line every ``--log-interval`` seconds
(``--progress none`` for silence).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

THERMO_FIELDS = (
    "step",
    "time_fs",
    "temperature_K",
    "potential_energy",
    "kinetic_energy",
    "total_energy",
    "conserved",
    "pressure_bar",
    "volume",
)
# extra thermo.csv columns of an ensemble model (eV/Å): max and mean over atoms of the
# members' force standard deviation, an uncertainty estimate
ENSEMBLE_FIELDS = ("force_std_max", "force_std_mean")
CHECKPOINT_FORMAT = 2
# settings the saved thermostat/barostat state belongs to
_STATE_SETTINGS = ("ensemble", "dt", "temperature", "pressure", "tau_t", "tau_p", "dtype")


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where directories can't be
    opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _flush(f) -> None:
    """Flush Python's buffer and the operating system's (the data is on disk)."""
    f.flush()
    os.fsync(f.fileno())


def _previous(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def _save_checkpoint(path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` to a temporary file, then an atomic rename; the checkpoint it replaces
    is kept as ``<name>.prev.npz``, the fallback when the newest one cannot be read."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
        _flush(f)
    if path.exists():
        os.replace(path, _previous(path))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class CheckpointUnreadable(RuntimeError):
    """Checkpoints exist but none can be read."""


_CHECKPOINT_KEYS = ("positions", "velocities", "cell", "step")


def _load_checkpoint(path: Path) -> tuple[dict[str, np.ndarray] | None, Path | None]:
    """The newest readable checkpoint: ``path``, else the previous one (``.prev.npz``).

    Every array is read (so a damaged file fails its zip CRC check here); an unreadable
    file is reported on stderr and skipped. Returns ``(None, None)`` when neither exists.

    Raises:
        CheckpointUnreadable: checkpoints exist but none can be read.
    """
    problems = []
    for candidate in (path, _previous(path)):
        if not candidate.exists():
            continue
        try:
            with np.load(candidate, allow_pickle=False) as data:
                ck = {key: data[key] for key in data.files}
            missing = [key for key in _CHECKPOINT_KEYS if key not in ck]
            if missing:
                raise ValueError(f"it lacks {missing}")
        except Exception as err:  # any damage: zip CRC, truncation, garbage, missing keys
            problems.append(f"{candidate} cannot be read ({type(err).__name__}: {err})")
            continue
        if problems:
            # kept for inspection, and so that the next save does not make it the fallback
            damaged = path.with_name(path.name + ".damaged")
            os.replace(path, damaged)
            print(
                f"warning: {problems[0]}; continuing from the previous checkpoint {candidate} "
                f"(step {int(ck['step'])}) instead; the damaged file is now {damaged}",
                file=sys.stderr,
            )
        return ck, candidate
    if problems:
        raise CheckpointUnreadable(
            "; ".join(problems)
            + ". The run cannot be continued exactly: start a new run from the last frame of "
            "its trajectory (--structure OUT/trajectory.extxyz --index -1) with another --out."
        )
    return None, None


_STEP_IN_COMMENT = re.compile(rb"\bstep=(-?\d+)")


def _thermo_end(path: Path, last_step: int) -> int:
    """Byte offset after the header and the complete rows up to ``last_step`` of
    ``thermo.csv`` (0 when even the header is incomplete)."""
    with open(path, "rb") as f:
        header = f.readline()
        if not header.endswith(b"\n"):
            return 0
        n_fields = header.count(b",") + 1
        end = len(header)
        for line in f:
            fields = line.split(b",")
            if not line.endswith(b"\n") or len(fields) != n_fields:
                break  # a row cut short by a kill
            try:
                step = int(fields[0])
            except ValueError:
                break
            if step > last_step:
                break
            end += len(line)
    return end


def _trajectory_end(path: Path, last_step: int) -> int:
    """Byte offset after the complete extxyz frames up to ``last_step`` (a frame without a
    ``step=`` entry is kept; a frame cut short by a kill ends the scan)."""
    end = 0
    with open(path, "rb") as f:
        while True:
            count = f.readline()
            if not count.endswith(b"\n"):
                break
            try:
                n_atoms = int(count)
            except ValueError:
                break
            comment = f.readline()
            lines = [f.readline() for _ in range(n_atoms)]
            if not comment.endswith(b"\n") or not all(ln.endswith(b"\n") for ln in lines):
                break
            match = _STEP_IN_COMMENT.search(comment)
            if match is not None and int(match.group(1)) > last_step:
                break
            end += len(count) + len(comment) + sum(len(ln) for ln in lines)
    return end


def _truncate_outputs(
    thermo_path: Path, traj_path: Path, last_step: int, sizes: dict | None = None
) -> None:
    """Cut ``thermo.csv`` and ``trajectory.extxyz`` back to the checkpoint at ``last_step``.

    Both are written (and flushed to disk) before the checkpoint, so everything up to the
    checkpoint is there; what follows (rows and frames of a chunk whose checkpoint was never
    written, or the partial last row or frame of a kill) is dropped and will be written
    again. ``sizes`` (``{file name: bytes}``, recorded in the checkpoint) gives the cut
    directly; without it, the files are scanned for the last complete row/frame up to
    ``last_step``.
    """
    for path, scan in ((thermo_path, _thermo_end), (traj_path, _trajectory_end)):
        if not path.exists():
            continue
        size = path.stat().st_size
        recorded = None if sizes is None else sizes.get(path.name)
        if recorded is None:
            end = scan(path, last_step)
        elif recorded > size:
            print(
                f"warning: {path} has {size} bytes, {recorded} when the checkpoint at step "
                f"{last_step} was written: it was cut or replaced since, rows or frames are "
                "missing",
                file=sys.stderr,
            )
            end = size
        else:
            end = recorded
        if end < size:
            with open(path, "r+b") as f:
                f.truncate(end)
                _flush(f)


class _Progress:
    """tqdm bar on a TTY, a line every ``interval`` seconds otherwise, or nothing."""

    def __init__(self, mode: str, total: int, initial: int, interval: float):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode, self.total, self.interval = mode, total, interval
        self.t0 = self.t_last = time.perf_counter()
        self.initial = initial
        self.bar = None
        if mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step: int, n: int, temperature: float, e_tot: float, force: bool = False):
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(T=f"{temperature:.1f} K", E_tot=f"{e_tot:.4f} eV", refresh=False)
            return
        now = time.perf_counter()
        if self.mode == "log" and (force or now - self.t_last >= self.interval):
            self.t_last = now
            rate = (step - self.initial) / max(now - self.t0, 1e-9)
            print(
                f"md step {step}/{self.total}  T {temperature:.1f} K  E_tot {e_tot:.6f} eV  "
                f"{rate:.2f} steps/s  elapsed {now - self.t0:.0f} s",
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run_md(args: argparse.Namespace) -> int:
    import ase.io
    import jax
    import jax.numpy as jnp
    from jax_md import simulate

    from ..train.export import load_model, read_ensemble_size
    from . import units
    from .integrate import make_simulation, positions_angstrom, state_from_arrays, state_to_arrays

    # 64-bit JAX on: float64 models need it; float32 models still run in float32
    jax.config.update("jax_enable_x64", True)
    config, params, _ = load_model(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atoms = ase.io.read(args.structure, index=args.index)
    checkpoint = out / "checkpoint.npz"
    thermo_path, traj_path = out / "thermo.csv", out / "trajectory.extxyz"
    settings = {
        "format": CHECKPOINT_FORMAT,
        "ensemble": args.ensemble,
        "dt": args.dt,
        "temperature": args.temperature,
        "pressure": args.pressure,
        "tau_t": args.tau_t,
        "tau_p": args.tau_p,
        "dtype": config.model_dtype,
        "n_atoms": len(atoms),
    }
    ck, start_step, velocities = None, 0, None
    if args.restart:
        try:
            ck, ck_path = _load_checkpoint(checkpoint)
        except CheckpointUnreadable as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if ck is None:
            print(f"error: --restart: no checkpoint at {checkpoint}", file=sys.stderr)
            return 2
        if len(ck["positions"]) != len(atoms):
            print(
                f"error: {ck_path} has {len(ck['positions'])} atoms, {args.structure} "
                f"has {len(atoms)}",
                file=sys.stderr,
            )
            return 2
        atoms.set_cell(ck["cell"], scale_atoms=False)
        atoms.set_positions(ck["positions"])
        velocities, start_step = ck["velocities"], int(ck["step"])
        saved_meta = json.loads(str(ck.get("meta", "{}")))
        _truncate_outputs(thermo_path, traj_path, start_step, saved_meta.get("sizes"))
    species = np.array([config.type_names.index(s) for s in atoms.get_chemical_symbols()])
    periodic = bool(all(atoms.pbc))
    chunk = args.log_every * args.logs_per_chunk
    fields = THERMO_FIELDS
    system = force_std_fn = None
    if read_ensemble_size(args.model) > 1:
        # dynamics on the ensemble mean; the members' force spread is logged
        from ..ensemble import make_ensemble_system

        system, force_std_fn = make_ensemble_system(
            config,
            params,
            species,
            cell=np.array(atoms.cell) if periodic else None,
            skin=args.skin,
            real_coordinates=args.ensemble == "npt_nose_hoover",
        )
        fields = THERMO_FIELDS + ENSEMBLE_FIELDS
    init_fn, apply_fn = make_simulation(
        config,
        params,
        species,
        cell=np.array(atoms.cell) if periodic else None,
        ensemble=args.ensemble,
        timestep_fs=args.dt,
        temperature_K=args.temperature,
        pressure_bar=args.pressure,
        friction_per_fs=args.friction,
        tau_t_fs=args.tau_t,
        tau_p_fs=args.tau_p,
        skin=args.skin,
        log_every=args.log_every,
        logs_per_chunk=args.logs_per_chunk,
        system=system,
        force_std_fn=force_std_fn,
    )
    rotation = np.eye(3)
    if periodic:
        from .jax_md import box_from_cell

        _, rotation = box_from_cell(np.array(atoms.cell))
    state = init_fn(jax.random.PRNGKey(args.seed), atoms.positions, velocities)
    if ck is not None:
        saved = json.loads(str(ck.get("meta", "{}")))
        changed = [k for k in _STATE_SETTINGS if saved.get(k) != settings[k]]
        arrays = {k[len("state") :]: v for k, v in ck.items() if k.startswith("state.")}
        if changed or not arrays:
            why = f"{', '.join(changed)} changed" if changed else "an old checkpoint format"
            print(f"restart: {why}; taking over positions and velocities only")
            state = state.replace(step=jnp.asarray(start_step, state.step.dtype))
        else:
            state = state_from_arrays(state, arrays)
    steps = args.steps if args.until_step is None else args.until_step - start_step
    steps -= steps % args.log_every
    mode = "a" if args.restart and thermo_path.exists() else "w"
    progress = _Progress(args.progress, start_step + max(steps, 0), start_step, args.log_interval)
    t0, done, stopped = time.perf_counter(), 0, False
    t_first, done_first = None, 0  # after the first chunk (compilation) for the speed
    with open(thermo_path, mode) as thermo, open(traj_path, mode) as traj:
        if thermo_path.stat().st_size == 0:
            thermo.write(",".join(fields) + "\n")
        while done < steps:
            if args.max_wall_time is not None and time.perf_counter() - t0 > args.max_wall_time:
                stopped = True
                break
            n = min(chunk, steps - done)
            state, log = apply_fn(state, n)
            done += n
            for row in zip(*(np.asarray(getattr(log, f)) for f in fields), strict=True):
                thermo.write(",".join(f"{v:.10g}" for v in (int(row[0]), *row[1:])) + "\n")
            pos = np.asarray(positions_angstrom(state)) @ rotation.T
            vel = np.asarray(state.sim.momentum / state.sim.mass) / units.TIME_UNIT_FS
            vel = vel @ rotation.T
            frame = atoms.copy()
            frame.set_positions(pos)
            if args.ensemble == "npt_nose_hoover":
                frame.set_cell(np.asarray(simulate.npt_box(state.sim)).T @ rotation.T)
            frame.info["energy"] = float(np.asarray(log.potential_energy)[-1])
            frame.info["step"] = int(state.step)
            frame.arrays["velocities_A_per_fs"] = vel
            # frames and rows first, on disk, then the checkpoint: a kill at any point leaves
            # a checkpoint whose rows and frames are all written (a restart cuts what follows)
            _flush(thermo)
            ase.io.write(traj, frame, format="extxyz")
            _flush(traj)
            sizes = {p.name: p.stat().st_size for p in (thermo_path, traj_path)}
            _save_checkpoint(
                checkpoint,
                {**settings, "sizes": sizes},
                {
                    "positions": pos,
                    "velocities": vel,
                    "cell": np.array(frame.cell),
                    "step": np.asarray(int(state.step)),
                    **{f"state{k}": v for k, v in state_to_arrays(state).items()},
                },
            )
            if t_first is None:
                t_first, done_first = time.perf_counter(), done
            progress.update(
                int(state.step),
                n,
                float(log.temperature_K[-1]),
                float(log.total_energy[-1]),
                force=done >= steps,
            )
    progress.close()
    wall = time.perf_counter() - t0
    rate = done / max(wall, 1e-9)
    steady = None
    if t_first is not None and done > done_first:
        steady = (done - done_first) / max(time.perf_counter() - t_first, 1e-9)
    timing = {
        "steps": done,
        "wall_s": wall,
        "first_chunk_s": None if t_first is None else t_first - t0,
        "steps_per_s_after_first_chunk": steady,
        "n_atoms": len(atoms),
        "end_step": int(state.step),
        "load_average": list(os.getloadavg()),
    }
    with open(out / "timing.jsonl", "a") as f:
        f.write(json.dumps(timing) + "\n")
    msg = f"md: {done} steps ({rate:.2f} steps/s), now at step {int(state.step)}"
    if stopped:
        msg += f"; stopped after --max-wall-time {args.max_wall_time} s, continue with --restart"
    print(msg, flush=True)
    return 0


def add_md_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``allegro-jax md`` on a sub-parser collection."""
    p = subparsers.add_parser("md", help="run molecular dynamics with a trained model")
    p.add_argument("--model", required=True, help="run directory or model directory")
    p.add_argument("--structure", required=True, help="any file ASE can read")
    p.add_argument("--index", type=int, default=0, help="frame of the structure file")
    p.add_argument("--out", default="md_out")
    p.add_argument(
        "--ensemble",
        default="nvt_langevin",
        choices=("nve", "nvt_langevin", "nvt_nose_hoover", "npt_nose_hoover"),
    )
    p.add_argument("--steps", type=int, default=1000, help="steps to run (this invocation)")
    p.add_argument(
        "--until-step", type=int, default=None, help="run until this step (overrides --steps)"
    )
    p.add_argument("--dt", type=float, default=0.5, help="timestep in fs")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--pressure", type=float, default=1.0, help="bar (NPT)")
    p.add_argument("--friction", type=float, default=0.01, help="Langevin, 1/fs")
    p.add_argument(
        "--tau-t", type=float, default=None, help="Nosé–Hoover thermostat time, fs (100 dt)"
    )
    p.add_argument("--tau-p", type=float, default=None, help="NPT barostat time, fs (1000 dt)")
    p.add_argument("--skin", type=float, default=1.0, help="Å")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--logs-per-chunk", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restart", action="store_true", help="continue from OUT/checkpoint.npz")
    p.add_argument(
        "--max-wall-time",
        type=float,
        default=None,
        help="stop (checkpointed) after the chunk that passes this many seconds",
    )
    p.add_argument(
        "--progress",
        default="auto",
        choices=("auto", "bar", "log", "none"),
        help="auto: a bar on a terminal, else a line every --log-interval seconds",
    )
    p.add_argument("--log-interval", type=float, default=60.0, help="seconds (--progress log)")
    p.set_defaults(func=_run_md)
    return p
