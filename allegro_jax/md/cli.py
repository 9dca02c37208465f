"""``allegro-jax md``: run MD from a trained model and one frame of a structure file.

The structure is any file the data readers take (:func:`read_structure`: extxyz/xyz and the
other formats ASE reads, rMD17 and QM9 ``.npz``), frame ``--index``. Options and inputs are
checked before anything is written, so a bad start leaves no folder behind. Writes:

* ``OUT/thermo.csv``: step, time_fs, T_K, E_pot, E_kin, E_tot, conserved, pressure_bar,
  volume, one row per ``log_every`` steps; for an ensemble model (``ensemble_size`` > 1)
  the dynamics follow the members' mean and two more columns, ``force_std_max`` and
  ``force_std_mean`` (eV/Å), give the members' force standard deviation as an uncertainty;
* ``OUT/trajectory.extxyz``: the starting frame, then one every ``--traj-every`` steps
  (default: one per chunk of ``log_every * logs_per_chunk`` steps): positions, velocities
  (``velocities_A_per_fs``), cell, ``step``, ``time_fs``, and the potential energy and
  forces as a single-point calculator's results (``frame.get_potential_energy()``,
  ``frame.get_forces()`` after ``ase.io.read``);
* ``OUT/timing.jsonl``: one line per invocation (steps, wall time, steps/s after the first
  chunk, i.e. without compilation, load average);
* ``OUT/checkpoint.npz``: the full integrator state (positions, momenta, forces,
  Nosé–Hoover chain variables, Langevin PRNG key, NPT box and barostat, neighbour list,
  step) plus the settings it belongs to and the sizes of the two files above at that
  moment, written atomically at the start and after every chunk (and frame); the one it
  replaces is kept as ``OUT/checkpoint.prev.npz``.

Nothing lost: rows and frames are flushed to disk before the checkpoint that covers them.
``--restart`` continues from the newest readable checkpoint (a damaged one, e.g. with a bad
zip CRC, is moved aside with a warning and the previous one is used) and first cuts the
trajectory and the log back to the sizes it recorded, dropping what a killed run wrote after
it, a half-written last frame or row included; the continued trajectory is the one an
uninterrupted run would have produced (bit for bit unless the neighbour list had been
reallocated). If the ensemble, temperature, pressure, timestep or thermostat/barostat
time constants changed, only positions and velocities are taken over and the
thermostat/barostat start afresh. ``--until-step N`` runs until step N (so the same
command resumes a run to its end), ``--max-wall-time`` stops cleanly after a chunk.

Never overwritten: without ``--restart``, an ``OUT`` that holds a run is an error, and a
second process on the same ``OUT`` is refused while the first holds its lock
(:func:`allegro_jax.io.runlock.run_lock`).

Run-away guard: after every chunk, a temperature above ``--max-temperature``, a potential
energy further than ``--max-energy-change`` eV/atom from the run's first, an atom of a
free-space system with no other atom within ``--detach-distance`` (default ``r_max``), or
non-finite values stop the run with exit code 3 (its rows and frame stay, the checkpoint is
the last good state); ``--on-blowup warn`` warns once per kind instead (non-finite values
always stop).

Progress: ``compiling…`` and the compile time, then a tqdm bar on a terminal, otherwise one
line every ``--log-interval`` seconds (``--progress none`` for silence); rates and ETAs only
from steps timed after compilation.

Why the checkpoint is one ``.npz`` and not an orbax checkpoint like training's: it is written
after every chunk, and for a 192-atom state one atomic ``np.savez`` + rename + fsync takes
3.5 ms (1.6 ms to read back) against 188 ms (15 ms) for an orbax ``CheckpointManager`` save
of the same arrays and metadata (13 files per step); the single file also carries the
output-file sizes it covers, its zip CRCs detect damage, and the previous file is the
fallback, which is what ``--restart``'s no-loss guarantee rests on (tests/md).

The trajectory scan (:func:`_trajectory_end`) reads extxyz frames itself, not with
``ase.io``: it needs the byte offset after the last complete frame, to cut a killed run's
partial frame, which ``ase.io`` does not expose; it is only used for checkpoints written
before the file sizes were recorded in them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

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
    """tqdm bar on a TTY, a line every ``interval`` seconds otherwise, or nothing.

    The bar starts, and rates and ETAs are given, only once steps have been timed: the first
    chunk compiles the integrator and would make any estimate from it wrong.
    """

    def __init__(self, mode: str, end_step: int, interval: float):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode, self.end_step, self.interval = mode, end_step, interval
        self.t_last = time.perf_counter()
        self.t_timed: float | None = None  # when timing started (after the first chunk)
        self.step_timed = 0
        self.bar = None

    def start_timing(self, step: int) -> None:
        """Called after the first chunk (the compilation): steps from here on are timed."""
        self.t_timed, self.step_timed = time.perf_counter(), step
        if self.mode == "bar" and step < self.end_step:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=self.end_step, initial=step, unit="step", dynamic_ncols=True, smoothing=0.1
            )

    def update(self, step: int, n: int, temperature: float, e_tot: float, force: bool = False):
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(T=f"{temperature:.1f} K", E_tot=f"{e_tot:.4f} eV", refresh=False)
            return
        now = time.perf_counter()
        if self.mode == "log" and (force or now - self.t_last >= self.interval):
            self.t_last = now
            line = f"md step {step}/{self.end_step}  T {temperature:.1f} K  E_tot {e_tot:.6f} eV"
            if self.t_timed is not None and step > self.step_timed:
                rate = (step - self.step_timed) / max(now - self.t_timed, 1e-9)
                eta = (self.end_step - step) / rate
                line += f"  {rate:.2f} steps/s  ETA {_duration(eta)}"
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class MDError(Exception):
    """An expected failure: printed as ``error: <message>`` with exit code ``code``."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


RUN_FILES = ("checkpoint.npz", "checkpoint.prev.npz", "thermo.csv", "trajectory.extxyz")


def _existing_run(out: Path) -> list[str]:
    """The files of an MD run already in ``out``."""
    return [name for name in RUN_FILES if (out / name).exists()]


def read_structure(path: str | os.PathLike, index: int = 0):
    """One frame of a structure file as ``ase.Atoms``: anything the data readers take
    (:func:`allegro_jax.data.datasets.read_dataset`: extxyz/xyz and every other format ASE
    reads, rMD17 and QM9 ``.npz``), labels not needed.

    Raises:
        MDError: the file is missing, unreadable, or has no frame ``index``.
    """
    from ..data.datasets import read_dataset

    path = Path(path)
    if not path.is_file():
        raise MDError(f"--structure {path}: no such file")
    try:
        if path.suffix == ".npz":
            with np.load(path) as data:
                lazy = {"lazy": True} if "natoms" in data.files else {}  # QM9: 130k molecules
            frames = read_dataset(path, **lazy)
            n = len(frames)
            if not -n <= index < n:
                raise MDError(
                    f"--structure {path} has {n} frames; --index {index} is not one of them "
                    f"(0 to {n - 1}, or -1 for the last)"
                )
            structure = frames[index]
        else:
            (structure,) = read_dataset(path, index=index, required=())
    except MDError:
        raise
    except IndexError:
        raise MDError(
            f"--structure {path} has no frame --index {index} (the first is 0, the last -1)"
        ) from None
    except Exception as err:  # the readers' own errors: name the file and what we take
        raise MDError(
            f"--structure {path} (--index {index}) cannot be read: {type(err).__name__}: "
            f"{err}. allegro-jax md takes extxyz/xyz and the other formats ASE reads, and "
            "rMD17 or QM9 .npz files."
        ) from None
    return structure.to_ase()


def _thresholds(args: argparse.Namespace, r_max: float, periodic: bool) -> dict[str, float]:
    max_t = args.max_temperature
    if max_t is None:
        max_t = max(10.0 * args.temperature, 1000.0)
    detach = args.detach_distance
    if detach is None:
        detach = r_max
    return {
        "temperature": max_t,
        "energy": args.max_energy_change,
        "detach": 0.0 if periodic else detach,
    }


def _blowups(
    log: Any,
    positions: np.ndarray,
    symbols: list[str],
    reference_epot: float,
    limits: dict[str, float],
) -> dict[str, str]:
    """What ran away in the rows of one chunk and at its last positions:
    ``{kind: description}`` for ``nonfinite``, ``temperature``, ``energy``, ``detach``."""
    found = {}
    steps = np.asarray(log.step)
    temp = np.asarray(log.temperature_K, dtype=np.float64)
    e_pot = np.asarray(log.potential_energy, dtype=np.float64)
    n_atoms = len(symbols)
    bad = ~(np.isfinite(temp) & np.isfinite(e_pot))
    if bad.any() or not np.isfinite(positions).all():
        step = int(steps[np.argmax(bad)]) if bad.any() else int(steps[-1])
        found["nonfinite"] = f"non-finite energy, temperature or positions at step {step}"
        return found
    hot = temp > limits["temperature"]
    if hot.any():
        i = int(np.argmax(hot))
        found["temperature"] = (
            f"temperature {temp[i]:.4g} K at step {int(steps[i])} is above --max-temperature "
            f"{limits['temperature']:g} K"
        )
    change = np.abs(e_pot - reference_epot) / n_atoms
    far = change > limits["energy"]
    if far.any():
        i = int(np.argmax(far))
        found["energy"] = (
            f"the potential energy at step {int(steps[i])} differs from the run's first by "
            f"{change[i]:.4g} eV/atom, more than --max-energy-change {limits['energy']:g}"
        )
    if limits["detach"] > 0 and n_atoms > 1:
        from scipy.spatial import cKDTree

        dist, _ = cKDTree(positions).query(positions, k=2)
        nearest = dist[:, 1]
        i = int(np.argmax(nearest))
        if nearest[i] > limits["detach"]:
            found["detach"] = (
                f"atom {i} ({symbols[i]}) has no other atom within {limits['detach']:g} Å at "
                f"step {int(steps[-1])} (nearest {nearest[i]:.4g} Å): beyond the model's reach "
                "it feels no force and flies off (--detach-distance)"
            )
    return found


def _run_md(args: argparse.Namespace) -> int:
    out = Path(args.out)
    existed = out.exists()
    try:
        return _md(args)
    except MDError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code
    finally:
        if not existed and out.is_dir():  # a failed start leaves no empty folder behind
            from ..io.runlock import HOLDER_FILE, LOCK_FILE

            if {p.name for p in out.iterdir()} <= {LOCK_FILE, HOLDER_FILE}:
                (out / LOCK_FILE).unlink(missing_ok=True)
                (out / HOLDER_FILE).unlink(missing_ok=True)
                out.rmdir()


def _check_options(args: argparse.Namespace) -> None:
    problems = []
    if args.dt <= 0:
        problems.append(f"--dt must be positive, got {args.dt}")
    if args.temperature < 0:
        problems.append(f"--temperature must be >= 0 K, got {args.temperature}")
    if args.log_every < 1 or args.logs_per_chunk < 1:
        problems.append("--log-every and --logs-per-chunk must be >= 1")
    elif args.traj_every is not None and (args.traj_every < 1 or args.traj_every % args.log_every):
        problems.append(
            f"--traj-every {args.traj_every} must be a positive multiple of --log-every "
            f"{args.log_every} (frames are written at logged steps)"
        )
    if args.steps < 0:
        problems.append(f"--steps must be >= 0, got {args.steps}")
    if problems:
        raise MDError("; ".join(problems))


def _md(args: argparse.Namespace) -> int:
    _check_options(args)
    import ase.io
    import jax
    import jax.numpy as jnp
    from ase.calculators.singlepoint import SinglePointCalculator
    from jax_md import simulate

    from ..compiling import compiling
    from ..io.model import load_model, read_ensemble_size
    from ..io.runlock import RunLockedError, run_lock
    from ..nn.xla_options import compiler_options
    from . import units
    from .integrate import (
        make_simulation,
        make_system,
        positions_angstrom,
        state_from_arrays,
        state_to_arrays,
    )

    # 64-bit JAX on: float64 models need it; float32 models still run in float32
    jax.config.update("jax_enable_x64", True)
    try:
        config, params, _ = load_model(args.model)
        ensemble_size = read_ensemble_size(args.model)
    except (OSError, ValueError) as err:
        raise MDError(f"--model {args.model}: {err}") from None
    atoms = read_structure(args.structure, args.index)
    unknown = sorted(set(atoms.get_chemical_symbols()) - set(config.type_names))
    if unknown:
        raise MDError(
            f"--structure {args.structure} (--index {args.index}) has element(s) "
            f"{', '.join(unknown)} that the model does not know (it has "
            f"{', '.join(config.type_names)})"
        )
    if atoms.pbc.any() and not atoms.pbc.all():
        raise MDError(
            f"--structure {args.structure} is periodic along some axes only "
            f"(pbc={atoms.pbc.tolist()}); allegro-jax md runs fully periodic cells or free "
            "space. Use ASE's integrators with AllegroCalculator for slabs and wires."
        )
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise MDError(f"--out {out} is a file, not a directory")
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
    say = None if args.progress == "none" else sys.stdout

    with contextlib.ExitStack() as stack:

        def lock() -> None:
            try:
                stack.enter_context(run_lock(out, "MD run"))
            except RunLockedError as err:
                raise MDError(str(err)) from None

        ck, start_step, velocities, saved_meta = None, 0, None, {}
        if out.is_dir():
            lock()
        existing = _existing_run(out)
        if existing and not args.restart:
            ck_step = ""
            if checkpoint.exists():
                with contextlib.suppress(Exception), np.load(checkpoint) as data:
                    ck_step = f", checkpoint at step {int(data['step'])}"
            raise MDError(
                f"{out} already holds an MD run ({', '.join(existing)}{ck_step}); allegro-jax "
                "md never overwrites one. Continue it with --restart (runs --steps more steps, "
                "or up to --until-step), or choose another --out."
            )
        if args.restart:
            try:
                ck, ck_path = _load_checkpoint(checkpoint)
            except CheckpointUnreadable as err:
                raise MDError(str(err)) from None
            if ck is None and not existing:
                raise MDError(f"--restart: no checkpoint at {checkpoint}")
            if ck is None:
                print(
                    f"restart: {out} has no checkpoint (the run stopped before its first one); "
                    "starting again from the structure at step 0"
                )
                _truncate_outputs(thermo_path, traj_path, -1, None)
            else:
                if len(ck["positions"]) != len(atoms):
                    raise MDError(
                        f"{ck_path} has {len(ck['positions'])} atoms, --structure "
                        f"{args.structure} (--index {args.index}) has {len(atoms)}: give the "
                        "structure the run started from"
                    )
                atoms.set_cell(ck["cell"], scale_atoms=False)
                atoms.set_positions(ck["positions"])
                velocities, start_step = ck["velocities"], int(ck["step"])
                saved_meta = json.loads(str(ck.get("meta", "{}")))
                _truncate_outputs(thermo_path, traj_path, start_step, saved_meta.get("sizes"))
        if start_step % args.log_every:
            raise MDError(
                f"the checkpoint is at step {start_step}, not a multiple of --log-every "
                f"{args.log_every}: use a --log-every that divides it"
            )

        species = np.array([config.type_names.index(s) for s in atoms.get_chemical_symbols()])
        periodic = bool(all(atoms.pbc))
        cell = np.array(atoms.cell) if periodic else None
        npt = args.ensemble == "npt_nose_hoover"
        chunk = args.log_every * args.logs_per_chunk
        traj_every = args.traj_every or chunk
        fields = THERMO_FIELDS
        force_std_fn = None
        try:
            if ensemble_size > 1:
                # dynamics on the ensemble mean; the members' force spread is logged
                from .ensemble import make_ensemble_system

                system, force_std_fn = make_ensemble_system(
                    config, params, species, cell=cell, skin=args.skin, real_coordinates=npt
                )
                fields = THERMO_FIELDS + ENSEMBLE_FIELDS
            else:
                system = make_system(
                    config, params, species, cell=cell, skin=args.skin, real_coordinates=npt
                )
            init_fn, apply_fn = make_simulation(
                config,
                params,
                species,
                cell=cell,
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
                chunk_edges=args.chunk_edges,
            )
        except ValueError as err:  # e.g. a box too small for the cutoff
            raise MDError(f"--structure {args.structure}: {err}") from None
        rotation = system.rotation

        def box_kwargs(state: Any) -> dict:
            return {"box": simulate.npt_box(state.sim)} if npt else {}

        energy_fn = jax.jit(
            lambda state: system.energy_fn(state.sim.position, state.neighbor, **box_kwargs(state)),
            compiler_options=compiler_options(),
        )
        limits = _thresholds(args, config.r_max, periodic)
        symbols = atoms.get_chemical_symbols()

        with compiling("the simulation (first steps)", quiet=True) as clock:
            if say is not None:
                print(
                    f"md: {len(atoms)} atoms, {args.ensemble}; compiling the integrator (the "
                    "first chunk includes it)…",
                    file=say,
                    flush=True,
                )
            state = init_fn(jax.random.PRNGKey(args.seed), atoms.positions, velocities)
            if ck is not None:
                changed = [k for k in _STATE_SETTINGS if saved_meta.get(k) != settings[k]]
                arrays = {k[len("state") :]: v for k, v in ck.items() if k.startswith("state.")}
                if changed or not arrays:
                    why = f"{', '.join(changed)} changed" if changed else "an old checkpoint format"
                    print(f"restart: {why}; taking over positions and velocities only")
                    state = state.replace(step=jnp.asarray(start_step, state.step.dtype))
                else:
                    state = state_from_arrays(state, arrays)
            e_start = float(energy_fn(state))
        if say is not None and state.chunks is not None:
            print(
                f"md: the model runs {state.chunks.atoms} atoms at a time (blocks of up to "
                f"{state.chunks.edges} neighbour pairs; --chunk-edges none: the whole list)",
                file=say,
                flush=True,
            )
        reference_epot = saved_meta.get("reference_potential_energy", e_start)
        settings["reference_potential_energy"] = reference_epot

        def snapshot(state: Any, energy: float) -> tuple[Any, dict[str, np.ndarray]]:
            """The frame (in the structure's frame of reference) and the checkpoint arrays."""
            pos = np.asarray(positions_angstrom(state), dtype=np.float64) @ rotation.T
            vel = np.asarray(state.sim.momentum / state.sim.mass) / units.TIME_UNIT_FS
            vel = vel @ rotation.T
            forces = np.asarray(state.sim.force, dtype=np.float64) @ rotation.T
            frame = atoms.copy()
            frame.set_positions(pos)
            if npt:
                frame.set_cell(np.asarray(simulate.npt_box(state.sim)).T @ rotation.T)
            step = int(state.step)
            frame.info["step"] = step
            frame.info["time_fs"] = step * args.dt
            frame.arrays["velocities_A_per_fs"] = vel
            frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces)
            arrays = {
                "positions": pos,
                "velocities": vel,
                "cell": np.array(frame.cell),
                "step": np.asarray(step),
                **{f"state{k}": v for k, v in state_to_arrays(state).items()},
            }
            return frame, arrays

        def write(thermo: Any, traj: Any, frame: Any) -> None:
            """Rows and the frame (if any) onto the disk."""
            _flush(thermo)
            if frame is not None:
                ase.io.write(traj, frame, format="extxyz")
            _flush(traj)

        def save(arrays: dict) -> None:
            """The checkpoint, always after the rows and frames it covers: a kill at any
            point leaves a checkpoint whose output is all written (a restart cuts what
            follows it), with the files' sizes at that point."""
            sizes = {p.name: p.stat().st_size for p in (thermo_path, traj_path)}
            _save_checkpoint(checkpoint, {**settings, "sizes": sizes}, arrays)

        if not out.is_dir():
            out.mkdir(parents=True)
            lock()
            if _existing_run(out):  # another process started one in between
                raise MDError(f"{out} now holds an MD run started by another process")

        steps = args.steps if args.until_step is None else args.until_step - start_step
        steps -= steps % args.log_every
        end_step = start_step + max(steps, 0)
        progress = _Progress(args.progress, end_step, args.log_interval)
        t0, done, stopped, blown = time.perf_counter(), 0, False, {}
        t_first, done_first = None, 0  # after the first chunk (compilation) for the speed
        with open(thermo_path, "a") as thermo, open(traj_path, "a") as traj:
            if thermo_path.stat().st_size == 0:
                thermo.write(",".join(fields) + "\n")
            if traj_path.stat().st_size == 0 and start_step % traj_every == 0:
                # the starting frame (a new run, or a restart from a bare checkpoint)
                frame, arrays = snapshot(state, e_start)
                write(thermo, traj, frame)
                save(arrays)
            warned: set[str] = set()
            while done < steps:
                if args.max_wall_time is not None and time.perf_counter() - t0 > args.max_wall_time:
                    stopped = True
                    break
                step = int(state.step)
                next_frame = (step // traj_every + 1) * traj_every
                n = min(chunk, steps - done, next_frame - step)
                if t_first is None:
                    with compiling("", quiet=True) as first:
                        state, log = apply_fn(state, n)
                        jax.block_until_ready(state)
                    if say is not None:
                        print(
                            f"md: compiled in {clock.compile_s + first.compile_s:.1f} s (with "
                            f"the first {n} steps: {clock.wall_s + first.wall_s:.1f} s)",
                            file=say,
                            flush=True,
                        )
                else:
                    state, log = apply_fn(state, n)
                done += n
                for row in zip(*(np.asarray(getattr(log, f)) for f in fields), strict=True):
                    thermo.write(",".join(f"{v:.10g}" for v in (int(row[0]), *row[1:])) + "\n")
                energy = float(np.asarray(log.potential_energy)[-1])
                frame, arrays = snapshot(state, energy)
                blown = _blowups(log, arrays["positions"], symbols, reference_epot, limits)
                on_frame = int(state.step) % traj_every == 0
                if blown and (args.on_blowup == "stop" or "nonfinite" in blown):
                    # its rows and frame stay for inspection, but no checkpoint of a
                    # blown-up state: --restart continues from the last good one
                    write(thermo, traj, frame)
                    break
                for kind, what in blown.items():
                    if kind not in warned:
                        warned.add(kind)
                        print(
                            f"WARNING: md: {what}; going on (--on-blowup warn)",
                            file=sys.stderr,
                            flush=True,
                        )
                blown = {}
                write(thermo, traj, frame if on_frame else None)
                save(arrays)
                if t_first is None:
                    t_first, done_first = time.perf_counter(), done
                    progress.start_timing(int(state.step))
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
    if blown:
        last = int(np.load(checkpoint)["step"]) if checkpoint.exists() else start_step
        raise MDError(
            f"the simulation ran away: {'; '.join(blown.values())}. Stopped at step "
            f"{int(state.step)}; its rows and frame are in {out}, the last good state is the "
            f"checkpoint at step {last}. Use a smaller --dt or check the model on such "
            "structures, then continue with --restart (which drops the output after the "
            "checkpoint); to go on regardless, raise the threshold or pass --on-blowup warn.",
            code=3,
        )
    msg = f"md: {done} steps ({rate:.2f} steps/s), now at step {int(state.step)}"
    if state.n_replans:
        msg += f"; block layout enlarged {state.n_replans} time(s), now {state.chunks.edges} pairs"
    if stopped:
        msg += f"; stopped after --max-wall-time {args.max_wall_time} s, continue with --restart"
    print(msg, flush=True)
    return 0


def _chunk_edges(text: str) -> int | str | None:
    if text in ("auto", "none"):
        return None if text == "none" else text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected 'auto', 'none' or a positive integer, got {text!r}"
        )
    return value


def add_md_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``allegro-jax md`` on a sub-parser collection."""
    p = subparsers.add_parser(
        "md",
        help="run molecular dynamics with a trained model (extxyz trajectory, thermo log, "
        "restartable)",
        description=(
            "Molecular dynamics with jax-md from a trained model and one frame of a structure "
            "file. Writes OUT/trajectory.extxyz (positions, velocities, forces, energy; the "
            "starting frame first), OUT/thermo.csv, OUT/timing.jsonl and OUT/checkpoint.npz. "
            "An OUT that already holds a run is never overwritten: continue it with --restart. "
            "Exit codes: 0 done, 2 bad input, 3 stopped because the simulation ran away."
        ),
    )
    p.add_argument("--model", required=True, help="run directory or model directory")
    p.add_argument(
        "--structure",
        required=True,
        help="starting structure: extxyz/xyz or any format ASE reads, rMD17 or QM9 .npz",
    )
    p.add_argument(
        "--index",
        type=int,
        default=0,
        help="which frame of --structure (0 the first, -1 the last; default 0)",
    )
    p.add_argument(
        "--out",
        default="md_out",
        help="output directory (default md_out); created, or continued with --restart",
    )
    p.add_argument(
        "--ensemble",
        default="nvt_langevin",
        choices=("nve", "nvt_langevin", "nvt_nose_hoover", "npt_nose_hoover"),
        help="integrator (default nvt_langevin)",
    )
    p.add_argument("--steps", type=int, default=1000, help="steps to run (this invocation)")
    p.add_argument(
        "--until-step", type=int, default=None, help="run until this step (overrides --steps)"
    )
    p.add_argument("--dt", type=float, default=0.5, help="timestep in fs")
    p.add_argument(
        "--temperature", type=float, default=300.0, help="K: target, and initial velocities"
    )
    p.add_argument("--pressure", type=float, default=1.0, help="bar (NPT)")
    p.add_argument("--friction", type=float, default=0.01, help="Langevin, 1/fs")
    p.add_argument(
        "--tau-t", type=float, default=None, help="Nosé–Hoover thermostat time, fs (100 dt)"
    )
    p.add_argument("--tau-p", type=float, default=None, help="NPT barostat time, fs (1000 dt)")
    p.add_argument("--skin", type=float, default=1.0, help="neighbour-list skin, Å")
    p.add_argument(
        "--chunk-edges",
        type=_chunk_edges,
        default="auto",
        help="evaluate the model a block of atoms at a time, about this many neighbour-list "
        "pairs per block: faster for large systems on a CPU, same forces to float rounding "
        "('auto' (default): 2048 on a CPU, for lists of more than 8 blocks' worth; 'none': "
        "the whole list at once)",
    )
    p.add_argument(
        "--log-every",
        type=int,
        default=10,
        help="steps between rows of thermo.csv (default 10)",
    )
    p.add_argument(
        "--logs-per-chunk",
        type=int,
        default=10,
        help="rows per compiled chunk: the run returns to Python, writes its output and "
        "checkpoints at least every log-every × logs-per-chunk steps (default 10)",
    )
    p.add_argument(
        "--traj-every",
        type=int,
        default=None,
        help="steps between trajectory frames, a multiple of --log-every (default: one frame "
        "per chunk, log-every × logs-per-chunk)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="random seed: initial velocities, Langevin noise"
    )
    p.add_argument("--restart", action="store_true", help="continue from OUT/checkpoint.npz")
    p.add_argument(
        "--max-wall-time",
        type=float,
        default=None,
        help="stop (checkpointed) after the chunk that passes this many seconds",
    )
    guard = p.add_argument_group(
        "run-away guard",
        "checked after every chunk; non-finite values always stop the run (exit code 3)",
    )
    guard.add_argument(
        "--max-temperature",
        type=float,
        default=None,
        help="K (default 10 × --temperature, at least 1000 K; inf to switch off)",
    )
    guard.add_argument(
        "--max-energy-change",
        type=float,
        default=1.0,
        help="largest change of the potential energy from the run's first, eV/atom "
        "(default 1.0; inf to switch off)",
    )
    guard.add_argument(
        "--detach-distance",
        type=float,
        default=None,
        help="free space: an atom with no other atom within this many Å is flying off "
        "(default the model's r_max, beyond which it feels no force; 0 to switch off)",
    )
    guard.add_argument(
        "--on-blowup",
        choices=("stop", "warn"),
        default="stop",
        help="stop with exit code 3 (default), or warn once per kind and go on",
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
