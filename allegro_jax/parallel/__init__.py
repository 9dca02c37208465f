"""Multi-device Allegro: data-parallel training and one large system sharded in space.

* :mod:`.mesh`: one-axis device meshes, replicated / leading-axis shardings, a
  version-proof ``shard_map``.
* :mod:`.data_parallel`: the batch split over devices, parameters replicated; one step
  equals the single-device step on the union batch.
* :mod:`.spatial`: one system split into spatial domains with halo atoms; energy, forces and
  stress equal the unsharded ones (Allegro is strictly local).
* :mod:`.md`: velocity-Verlet NVE on a sharded system, re-partitioned on the host when
  atoms move more than half the skin.

Multi-host use: ``docs/multihost.md``.
"""

from .data_parallel import (
    DataParallelSplit,
    make_data_parallel_eval_step,
    make_data_parallel_grad_fn,
    make_data_parallel_train_step,
    split_indices,
)
from .md import ShardedMDState, make_sharded_nve
from .mesh import AXIS, make_mesh, replicate, shard_leading, shard_map
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
