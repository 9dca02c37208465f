"""Multi-device Allegro: data-parallel training and one large system sharded in space.

* :mod:`allegro_jax.sharding`: one-axis device meshes, replicated / leading-axis shardings,
  ``shard_map``.
* :mod:`allegro_jax.train.data_parallel`: the batch split over devices, parameters
  replicated; one step equals the single-device step on the union batch.
* :mod:`.spatial`: one system split into spatial domains with halo atoms; energy, forces and
  stress equal the unsharded ones (Allegro is strictly local).
* :mod:`.md`: velocity-Verlet NVE on a sharded system, re-partitioned on the host when
  atoms move more than half the skin.

Multi-host use: ``docs/multihost.md``.

Limits of the spatial path (why large systems belong in LAMMPS, :mod:`allegro_jax.lammps`):

* **replicated positions**: every device holds the coordinates of ALL atoms (``[n_atoms,
  3]``) and scatters its forces into an all-atom array, so per-device memory grows with the
  whole system, not with its domain;
* **a global all-reduce per force call**: forces (and energies per atom) are summed over
  devices with a ``psum`` of ``3 n_atoms`` numbers, so the traffic of every step grows with
  the whole system as well;
* **host re-partitioning**: ownership, halos and neighbour lists are rebuilt on one host
  for the whole system (:func:`partition_structure`) whenever an atom moves more than half
  the skin; that serial work, and the transfer of the new shards, grows with the system.

They cost little while the model's per-edge work dominates (one host, a few devices,
moderate systems). LAMMPS keeps each rank's memory and traffic proportional to its domain
(ghost exchange with neighbouring ranks only, atom migration in place): ``allegro-jax
lammps`` runs the model there.
"""

from allegro_jax.sharding import AXIS, make_mesh, replicate, shard_leading, shard_map
from allegro_jax.train.data_parallel import (
    DataParallelSplit,
    make_data_parallel_eval_step,
    make_data_parallel_grad_fn,
    make_data_parallel_train_step,
    split_indices,
)

from .md import ShardedMDState, make_sharded_nve
from .spatial import (
    ShardArrays,
    ShardedSystem,
    SpatialPartition,
    bisection_owners,
    make_sharded_energy_fn,
    partition_structure,
    place_partition,
)

__all__ = [
    "AXIS",
    "DataParallelSplit",
    "ShardArrays",
    "ShardedMDState",
    "ShardedSystem",
    "SpatialPartition",
    "bisection_owners",
    "make_data_parallel_eval_step",
    "make_data_parallel_grad_fn",
    "make_data_parallel_train_step",
    "make_mesh",
    "make_sharded_energy_fn",
    "make_sharded_nve",
    "partition_structure",
    "place_partition",
    "replicate",
    "shard_leading",
    "shard_map",
    "split_indices",
]
