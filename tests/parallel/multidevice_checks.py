"""Multi-device checks: sharded results equal single-device results (run by
``test_multidevice.py`` in a subprocess; also a script for a real multi-GPU machine).

Run with several devices, e.g. virtual CPU devices (the flag must be set before JAX is
imported, hence an environment variable)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/parallel/multidevice_checks.py

or on a multi-GPU machine as is. Prints one ``ok`` line per check and exits non-zero (with
the failing numbers) on the first mismatch. Checks:

* ``spatial``: energy, per-atom energies, forces and stress of a sheared periodic Si/O
  crystal and of a free cluster, sharded over 2, 3 and 8 devices (float64, and float32 on
  the largest mesh), against :func:`allegro_jax.nn.model.make_model`'s ``apply_fn``;
* ``data_parallel``: one training step (Adam, EMA) on a batch split over 2, 4 and 8
  devices against the single-device step on the whole batch: loss, error sums, gradient
  norm and the new parameters;
* ``md``: 30 NVE steps of the crystal sharded over all devices, with a skin small enough
  to force re-partitioning, against :func:`allegro_jax.md.integrate.make_simulation`;
* ``loop``: one epoch of :func:`allegro_jax.train.loop.train_and_evaluate` with
  ``data_parallel: true`` on the smallest device count (uneven batches).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import jax
import numpy as np

from allegro_jax.config import AllegroConfig
from allegro_jax.data.graph import Structure
from allegro_jax.data.padding import build_graph
from allegro_jax.nn.model import make_model
from allegro_jax.sharding import make_mesh


def _config(dtype: str = "float64", r_max: float = 4.0, num_layers: int = 1) -> AllegroConfig:
    return AllegroConfig(
        type_names=("O", "Si"),
        r_max=r_max,
        l_max=1,
        num_layers=num_layers,
        num_scalar_features=8,
        num_tensor_features=4,
        scalar_embed_mlp_hidden_layers_width=8,
        allegro_mlp_hidden_layers_width=8,
        readout_mlp_hidden_layers_width=8,
        avg_num_neighbors=16.0,
        per_type_energy_shifts=(-1.0, -3.0),
        per_type_energy_scales=0.1,
        model_dtype=dtype,
    )


def crystal(seed: int = 1, rattle: float = 0.05) -> Structure:
    """Sheared 64-atom diamond Si with every 4th atom O, rattled (periodic)."""
    a = 5.43
    base = np.array(
        [[0, 0, 0], [0, 2, 2], [2, 0, 2], [2, 2, 0], [1, 1, 1], [1, 3, 3], [3, 1, 3], [3, 3, 1]]
    ) * (a / 4)
    grid = np.array([[i, j, k] for i in range(2) for j in range(2) for k in range(2)]) * a
    pos = (grid[:, None, :] + base[None]).reshape(-1, 3)
    cell = np.eye(3) * 2 * a
    shear = np.array([[1.0, 0, 0], [0.1, 1.0, 0], [0.05, -0.07, 1.0]])
    pos, cell = pos @ shear, cell @ shear
    numbers = np.full(len(pos), 14)
    numbers[::4] = 8
    pos = pos + np.random.default_rng(seed).normal(scale=rattle, size=pos.shape)
    return Structure(numbers=numbers, positions=pos, cell=cell, pbc=True)


def cluster(n: int = 40, seed: int = 2) -> Structure:
    """A random free cluster of Si and O (no two atoms closer than 1.6 Å)."""
    rng = np.random.default_rng(seed)
    pos: list[np.ndarray] = []
    while len(pos) < n:
        p = rng.uniform(0, 9.0, size=3)
        if all(np.linalg.norm(p - q) > 1.6 for q in pos):
            pos.append(p)
    return Structure(numbers=rng.choice([8, 14], size=n), positions=np.array(pos))


_T0 = [time.perf_counter(), time.process_time()]


def _ok(message: str) -> None:
    """Print an ``ok`` line with the wall and CPU seconds since the previous one."""
    wall, cpu = time.perf_counter(), time.process_time()
    print(f"ok {message} [{wall - _T0[0]:.1f} s, cpu {cpu - _T0[1]:.1f} s]", flush=True)
    _T0[:] = [wall, cpu]


def _close(name: str, got, want, rtol: float, atol: float) -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"{name}: shape {got.shape} != {want.shape}")
    err = np.abs(got - want)
    bound = atol + rtol * np.abs(want).max(initial=0.0)
    if not np.all(err <= bound):
        raise AssertionError(f"{name}: max |difference| {err.max():.3e} > {bound:.3e}")


def reference(config: AllegroConfig, params, structure: Structure) -> dict[str, np.ndarray]:
    """Single-device energy, atomic energies, forces and stress of one structure."""
    _, apply_fn = make_model(config)
    dtype = config.dtype
    graph = build_graph([structure], config.type_names, config.r_max, dtype=dtype)
    out = jax.jit(apply_fn, static_argnames=("forces", "stress"))(params, graph, stress=True)
    n = structure.n_atoms
    return {
        "energy": np.asarray(out["energy"][0]),
        "atomic_energies": np.asarray(out["atomic_energies"][:n]),
        "forces": np.asarray(out["forces"][:n]),
        "stress": np.asarray(out["stress"][0]),
        "virial": np.asarray(out["virial"][0]),
    }


def check_spatial(device_counts: list[int]) -> None:
    """float64: the crystal on the largest device count, the cluster on the middle one;
    float32: the crystal on the smallest (each mesh and shape compiles once)."""
    from allegro_jax.parallel.spatial import ShardedSystem

    first, last = device_counts[0], device_counts[-1]
    middle = device_counts[len(device_counts) // 2]
    cases = [
        ("float64", "crystal", [last]),
        ("float64", "cluster", [middle]),
        ("float32", "crystal", [first]),
    ]
    for dtype, name, counts in cases:
        config = _config(dtype)
        params = make_model(config)[0](jax.random.PRNGKey(0))
        tol = (1e-10, 1e-12) if dtype == "float64" else (1e-5, 1e-6)
        structure = crystal() if name == "crystal" else cluster()
        want = reference(config, params, structure)
        for n in counts:
            system = ShardedSystem(config, params, structure, make_mesh(n), stress=True)
            got = system()
            owned = system.partition.n_owned
            if owned.sum() != structure.n_atoms or (n > 1 and system.partition.n_halo.min() < 1):
                raise AssertionError(f"{name}: owned {owned}, halo {system.partition.n_halo}")
            for key in ("energy", "atomic_energies", "forces", "stress", "virial"):
                _close(f"{name} {dtype} {n} devices {key}", got[key], want[key], *tol)
            _ok(f"spatial {name} {dtype} {n} devices (owned {owned.tolist()})")


def _labelled_structures(n: int, seed: int) -> list[Structure]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        s = cluster(int(rng.integers(5, 12)), seed=seed * 100 + k)
        s.energy = float(rng.normal(-3.0 * s.n_atoms, 1.0))
        s.forces = rng.normal(scale=0.5, size=(s.n_atoms, 3))
        if k % 3 == 0:
            s.forces = None  # unlabelled forces are masked
        out.append(s)
    return out


def check_data_parallel(device_counts: list[int]) -> None:
    from allegro_jax.sharding import replicate
    from allegro_jax.train.data import SplitData
    from allegro_jax.train.data_parallel import DataParallelSplit, make_data_parallel_train_step
    from allegro_jax.train.optimizer import make_optimizer
    from allegro_jax.train.state import create_train_state
    from allegro_jax.train.step import make_train_step

    config = _config("float64")
    init_fn, apply_fn = make_model(config)
    structures = _labelled_structures(7, seed=3)  # 7: uneven groups on 2, 4 and 8 devices
    # uneven loss weights (config_type_weights): the same weighted loss on every device count
    weights = [0.5, 1.0, 2.0, 3.0, 1.0, 0.0, 4.0]
    split = SplitData(
        structures, config.type_names, config.r_max, len(structures), np.float64, weights=weights
    )
    tx = make_optimizer(1e-2)
    coeffs = {"total_energy": 1.0, "forces": 2.0, "stress": 0.0}
    state0 = create_train_state(init_fn(jax.random.PRNGKey(1)), tx, 1e-2, jax.random.PRNGKey(2))
    step = make_train_step(apply_fn, tx, coeffs)
    want, want_m = step(state0, split.batch(np.arange(len(structures))))
    for n in device_counts:
        mesh = make_mesh(n)
        dp = DataParallelSplit(split, mesh)
        dp_step = make_data_parallel_train_step(apply_fn, tx, coeffs, mesh)
        got, got_m = dp_step(replicate(state0, mesh), dp.batch(np.arange(len(structures))))
        _close(f"data parallel {n}: loss", got_m["loss"], want_m["loss"], 1e-12, 0)
        _close(f"data parallel {n}: grad norm", got_m["grad_norm"], want_m["grad_norm"], 1e-10, 0)
        fields = want.train_sums._fields
        for field, a, b in zip(fields, got.train_sums, want.train_sums, strict=True):
            _close(f"data parallel {n}: sums.{field}", a, b, 1e-12, 1e-14)
        for (path, a), b in zip(
            jax.tree_util.tree_leaves_with_path(got.params),
            jax.tree.leaves(want.params),
            strict=True,
        ):
            _close(f"data parallel {n}: params{jax.tree_util.keystr(path)}", a, b, 1e-9, 1e-12)
        ema = zip(jax.tree.leaves(got.ema_params), jax.tree.leaves(want.ema_params), strict=True)
        for a, b in ema:
            _close(f"data parallel {n}: ema params", a, b, 1e-9, 1e-12)
        sharding = jax.tree.leaves(got.params)[0].sharding
        if not sharding.is_fully_replicated:
            raise AssertionError(f"data parallel {n}: new params are not replicated: {sharding}")
        _ok(f"data_parallel {n} devices (loss {float(got_m['loss']):.6g})")


def check_md(n_devices: int) -> None:
    from allegro_jax.md import units
    from allegro_jax.md.integrate import make_simulation, positions_angstrom
    from allegro_jax.parallel.md import make_sharded_nve

    config = _config("float64")
    params = make_model(config)[0](jax.random.PRNGKey(0))
    structure = crystal()
    rng = np.random.default_rng(5)
    velocities = rng.normal(scale=0.01, size=(structure.n_atoms, 3))  # Å/fs (~2500 K)
    velocities -= velocities.mean(axis=0)
    # jax-md rounds the timestep to float32: take one that float32 represents exactly
    n_steps, dt = 30, float(np.float32(units.fs_to_internal(1.0))) * units.TIME_UNIT_FS
    init_fn, apply_fn = make_sharded_nve(
        config, params, make_mesh(n_devices), timestep_fs=dt, skin=0.3, chunk_steps=8
    )
    state = init_fn(structure, velocities)
    state, log = apply_fn(state, n_steps)
    species = np.where(structure.numbers == 14, 1, 0)  # O, Si
    sim = make_simulation(
        config,
        params,
        species,
        cell=structure.cell,
        ensemble="nve",
        timestep_fs=dt,
        skin=0.3,
        log_every=1,
        logs_per_chunk=n_steps,
        log_pressure=False,
    )
    with warnings.catch_warnings():  # jax-md 0.2.29's neighbour list: int64 -> int32 scatter
        warnings.filterwarnings("ignore", category=FutureWarning, module="jax")
        ref_state = sim.init_fn(jax.random.PRNGKey(0), structure.positions, velocities)
        ref_state, thermo = sim.apply_fn(ref_state, n_steps)
    _close("md potential energy", log["potential_energy"], thermo.potential_energy, 1e-11, 1e-11)
    _close("md kinetic energy", log["kinetic_energy"], thermo.kinetic_energy, 1e-10, 1e-11)
    # jax-md wraps positions into the box (and rotates into its frame): compare modulo cell
    from allegro_jax.md.jax_md import box_from_cell

    _, rotation = box_from_cell(structure.cell)
    got = np.asarray(state.positions) @ rotation
    want = np.asarray(positions_angstrom(ref_state))
    box = structure.cell @ rotation
    frac = (got - want) @ np.linalg.inv(box)
    diff = (frac - np.round(frac)) @ box
    _close("md positions (mod cell)", diff, np.zeros_like(diff), 0, 1e-10)
    if state.n_builds < 2:
        raise AssertionError(f"md: expected re-partitioning with skin 0.3, got {state.n_builds}")
    drift = np.ptp(log["total_energy"])
    _ok(
        f"md {n_devices} devices ({n_steps} steps, {state.n_builds} partitions, "
        f"E_tot spread {drift:.2e} eV)"
    )


def check_loop(n_devices: int) -> None:
    """``train_and_evaluate`` with ``data_parallel: true``: one epoch, checkpoint, model."""
    import tempfile
    from pathlib import Path

    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    from allegro_jax.train.config import TrainConfig
    from allegro_jax.train.loop import train_and_evaluate

    frames = []
    for s in _labelled_structures(12, seed=7):
        atoms = s.to_ase()
        forces = s.forces if s.forces is not None else np.zeros((s.n_atoms, 3))
        atoms.calc = SinglePointCalculator(atoms, energy=s.energy, forces=forces)
        frames.append(atoms)
    skip = ("per_type_energy_shifts", "per_type_energy_scales", "avg_num_neighbors")
    model = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in _config("float32").to_dict().items()
        if v is not None and k not in skip
    }
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.extxyz"
        ase.io.write(data, frames)
        base = dict(
            dataset_file_name=str(data),
            n_val=4,
            batch_size=5,  # 8 training frames: batches of 5 and 3, uneven over the devices
            max_epochs=1,
            progress_bar=False,
            tensorboard=False,
            data_parallel=True,
            num_devices=n_devices,
            model=model,
        )
        run = Path(tmp) / "run"
        summary = train_and_evaluate(TrainConfig(**base), run)
        rows = [line for line in (run / "metrics.jsonl").read_text().splitlines() if line]
        if (summary["epochs"], summary["steps"], len(rows)) != (1, 2, 1):
            raise AssertionError(f"loop: summary {summary}, metric rows {rows}")
        if not np.isfinite(summary["best_validation_loss"]):
            raise AssertionError(f"loop: validation loss {summary['best_validation_loss']}")
        if not any((run / "checkpoints").iterdir()) or not (run / "model").is_dir():
            raise AssertionError("loop: no checkpoint or model written")
    _ok(f"loop data_parallel {n_devices} devices (1 epoch, checkpoint and model written)")


CHECKS = ("spatial", "data_parallel", "md", "loop")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", nargs="+", default=list(CHECKS), choices=CHECKS)
    parser.add_argument("--devices", nargs="+", type=int, default=None)
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    available = len(jax.devices())
    counts = sorted(args.devices or [n for n in (2, 4, 8) if n <= available])
    if available < 2 or max(counts) > available:
        print(
            f"FAIL: {available} device(s) available, need {max(max(counts), 2)}; for CPU set "
            "XLA_FLAGS=--xla_force_host_platform_device_count=8 before starting Python",
            file=sys.stderr,
        )
        return 2
    print(f"devices: {available} x {jax.devices()[0].platform}, jax {jax.__version__}")
    t0 = time.perf_counter()
    try:
        if "spatial" in args.checks:
            check_spatial(counts)
        if "data_parallel" in args.checks:
            check_data_parallel(counts)
        if "md" in args.checks:
            check_md(max(counts))
        if "loop" in args.checks:
            check_loop(counts[0])
    except AssertionError as err:
        print(f"FAIL: {err}", file=sys.stderr)
        return 1
    print(f"all checks passed in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
