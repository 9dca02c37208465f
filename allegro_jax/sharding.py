"""Device meshes, shardings and ``shard_map`` for one-axis meshes.

Data-parallel training (:mod:`allegro_jax.train.data_parallel`) and the spatial
decomposition (:mod:`allegro_jax.parallel`) use a one-dimensional mesh whose single axis
(``"data"`` by default) runs over the devices: a batch of padded sub-batches, or the
sub-domains of one large system, are stacked along a leading ``[n_devices, ...]`` axis that
is sharded over the mesh axis, while parameters, positions and optimiser state are
replicated.

Multi-host: call ``jax.distributed.initialize()`` first; ``jax.devices()`` then lists the
devices of every process and :func:`make_mesh` spans all of them. :func:`replicate` and
:func:`shard_leading` build global arrays with ``jax.make_array_from_callback`` so that each
process only transfers the pieces its own devices hold (every process must hold the same
host data). See ``docs/multihost.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"

P = PartitionSpec


def shard_map(
    f: Callable, mesh: Mesh, in_specs: Any, out_specs: Any, *, check: bool = True
) -> Callable:
    """``jax.shard_map`` with the output-replication check named ``check``.

    Args:
        f: the per-device function.
        mesh: the device mesh.
        in_specs: partition specs of the arguments (a pytree prefix).
        out_specs: partition specs of the results.
        check: check that outputs declared replicated are replicated (``check_vma``).
    """
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=check)


def make_mesh(
    num_devices: int | None = None,
    *,
    axis_name: str = AXIS,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A one-dimensional mesh over the first ``num_devices`` devices.

    Args:
        num_devices: devices to use (``None``: all of ``devices``).
        axis_name: the mesh axis name.
        devices: the candidates (default ``jax.devices()``, i.e. every process's devices).

    Returns:
        The mesh.

    Raises:
        ValueError: ``num_devices`` is not a positive int or exceeds the devices available
            (the message lists them and how to get virtual CPU devices).
    """
    devices = list(jax.devices() if devices is None else devices)
    if num_devices is None:
        num_devices = len(devices)
    if isinstance(num_devices, bool) or not isinstance(num_devices, int | np.integer):
        raise ValueError(f"num_devices must be a positive int or None, got {num_devices!r}")
    if not 1 <= num_devices <= len(devices):
        raise ValueError(
            f"num_devices={num_devices} but {len(devices)} device(s) are available "
            f"({', '.join(str(d) for d in devices[:4])}{', ...' if len(devices) > 4 else ''}); "
            "for virtual CPU devices set XLA_FLAGS=--xla_force_host_platform_device_count=N "
            "before JAX is imported"
        )
    return Mesh(np.asarray(devices[: int(num_devices)]), (axis_name,))


def mesh_size(mesh: Mesh, axis_name: str = AXIS) -> int:
    """Number of devices along ``axis_name``."""
    if axis_name not in mesh.shape:
        raise ValueError(f"mesh has axes {tuple(mesh.shape)}, not {axis_name!r}")
    return int(mesh.shape[axis_name])


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf replicated on every device of ``mesh`` (parameters, optimiser state)."""
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: _put(x, sharding), tree)


def shard_leading(tree: Any, mesh: Mesh, axis_name: str = AXIS) -> Any:
    """Every leaf ``[n_devices, ...]`` split along its leading axis over ``axis_name``.

    Raises:
        ValueError: a leaf's leading size is not the number of devices.
    """
    n = mesh_size(mesh, axis_name)
    sharding = NamedSharding(mesh, P(axis_name))

    def put(x: Any) -> jax.Array:
        shape = np.shape(x)
        if not shape or shape[0] != n:
            raise ValueError(f"a leaf of shape {shape} cannot be split over {n} devices")
        return _put(x, sharding)

    return jax.tree.map(put, tree)


def squeeze_leading(tree: Any) -> Any:
    """Drop the leading (per-device, size 1) axis inside ``shard_map``."""
    return jax.tree.map(lambda x: x[0], tree)
