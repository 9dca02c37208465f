"""Data-parallel training steps and one sharded system, on one or many hosts.

One host, 8 virtual CPU devices (or all GPUs of the machine without the two variables):

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
        python examples/multihost_train.py

Two hosts, one process each (the coordinator is process 0's host and a free port):

    host0$ python examples/multihost_train.py --coordinator host0:12345 \
               --num-processes 2 --process-id 0
    host1$ python examples/multihost_train.py --coordinator host0:12345 \
               --num-processes 2 --process-id 1

SLURM (one task per node, or per GPU): ``srun python examples/multihost_train.py --distributed``
(JAX reads the coordinator, process count and id from the SLURM environment).

Every process runs this same program on the same (seeded) data; each transfers only the
pieces its own devices hold. See docs/multihost.md.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

# NOTE: importing allegro_jax starts JAX's backend (jax-md creates arrays at import), so
# jax.distributed.initialize() must run first: allegro_jax is imported inside main().


def silicon(seed: int, repeat: int = 1):
    """Rattled diamond Si (8 atoms per cubic cell) with made-up labels (a demo)."""
    import ase.build

    from allegro_jax.data.graph import Structure

    atoms = ase.build.bulk("Si", "diamond", a=5.43, cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=seed)
    rng = np.random.default_rng(seed)
    s = Structure.from_ase(atoms)
    s.energy = -4.0 * s.n_atoms + rng.normal(scale=0.1)
    s.forces = rng.normal(scale=0.3, size=(s.n_atoms, 3))
    return s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distributed", action="store_true", help="auto-detect (SLURM, ...)")
    parser.add_argument("--coordinator", help="host:port of process 0")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    if args.coordinator or args.distributed:
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )  # before any other JAX call

    from allegro_jax.config import AllegroConfig
    from allegro_jax.nn.model import make_model
    from allegro_jax.parallel import (
        DataParallelSplit,
        ShardedSystem,
        make_data_parallel_train_step,
        make_mesh,
        replicate,
    )
    from allegro_jax.train.data import SplitData
    from allegro_jax.train.optimizer import make_optimizer
    from allegro_jax.train.state import create_train_state

    config = AllegroConfig(
        type_names=("Si",),
        r_max=4.0,
        l_max=1,
        num_layers=1,
        num_scalar_features=16,
        num_tensor_features=4,
        avg_num_neighbors=16.0,
        per_type_energy_shifts=-4.0,
    )
    mesh = make_mesh()  # every device of every process
    main_process = jax.process_index() == 0
    if main_process:
        print(f"{jax.process_count()} process(es), {len(jax.devices())} devices: {mesh}")

    # ---- data-parallel training: global batch of 16, split over the devices -------------
    init_fn, apply_fn = make_model(config)
    structures = [silicon(seed) for seed in range(32)]  # identical on every process
    split = SplitData(structures, config.type_names, config.r_max, batch_size=16)
    data = DataParallelSplit(split, mesh)
    tx = make_optimizer(1e-2)
    state = create_train_state(init_fn(jax.random.PRNGKey(0)), tx, 1e-2, jax.random.PRNGKey(1))
    state = replicate(state, mesh)
    train_step = make_data_parallel_train_step(
        apply_fn, tx, {"total_energy": 1.0, "forces": 1.0}, mesh
    )
    order = np.random.default_rng(0).permutation(len(split))
    for step in range(args.steps):
        batch = data.batch(order[(step % 2) * 16 : (step % 2 + 1) * 16])
        state, metrics = train_step(state, batch)
        if main_process:
            print(f"step {step + 1}: loss {float(metrics['loss']):.5f}")

    # ---- one system sharded in space: energy, forces, stress ------------------------------
    system = ShardedSystem(config, state.params, silicon(0, repeat=3), mesh, stress=True)
    out = system()
    if main_process:
        print(
            f"sharded crystal: E = {float(out['energy']):.6f} eV, "
            f"max |F| = {np.abs(out['forces']).max():.4f} eV/Å, "
            f"owned per device {system.partition.n_owned.tolist()}"
        )


if __name__ == "__main__":
    main()
