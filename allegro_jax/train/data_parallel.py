"""Data-parallel training: the batch sharded over devices, parameters replicated.

A global batch of ``B`` structures is split into ``n_devices`` contiguous groups
(``numpy.array_split``: sizes differ by at most one), each padded to the same per-device
:class:`~allegro_jax.data.padding.Budget` and stacked, so every array of the batch is
``[n_devices, ...]`` and is sharded along its leading axis (``P("data")``). Parameters and
optimiser state are replicated (``P()``).

Exactness. The single-device loss (:mod:`allegro_jax.train.loss`) is a function of error
SUMS over the batch, ``L = w_E Σ_g (ΔE_g/N_g)² / n_E + w_F Σ ΔF² / n_F + w_S Σ ΔS² / n_S``.
Each device computes the sums of its group; ``psum`` gives the sums of the union batch, and
``L`` is evaluated from them, so loss and gradient are those of the union batch on one
device (up to the order of floating-point additions). The gradient is explicit: each
device takes the VJP of its own sums at ``∂L/∂S`` (evaluated at the union's sums) and the
per-device gradients are summed with ``psum`` (an all-reduce), which is exact because ``L``
depends on the parameters only through the sums. The optimiser update then runs on
identical replicated inputs and keeps parameters replicated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from allegro_jax.data.padding import Budget, batch_graph_inputs, budget_for_dataset
from allegro_jax.sharding import (
    AXIS,
    P,
    make_mesh,
    mesh_size,
    replicate,
    shard_leading,
    shard_map,
    squeeze_leading,
)
from allegro_jax.train.loss import (
    Batch,
    ErrorSums,
    Labels,
    error_sums,
    loss_from_sums,
    make_labels,
)
from allegro_jax.train.step import make_train_step


def split_indices(indices: Sequence[int], n_shards: int) -> list[np.ndarray]:
    """Contiguous groups of ``indices`` for ``n_shards`` devices (sizes differ by <= 1)."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    return np.array_split(np.asarray(indices, dtype=np.int64), n_shards)


def _empty_labels(budget: Budget, dtype: Any) -> Labels:
    g, n = budget.n_graphs, budget.n_nodes
    return Labels(
        energy=np.zeros(g, dtype),
        forces=np.zeros((n, 3), dtype),
        stress=np.zeros((g, 3, 3), dtype),
        energy_mask=np.zeros(g, bool),
        forces_mask=np.zeros(n, bool),
        stress_mask=np.zeros(g, bool),
        weight=np.zeros(g, dtype),
    )


class DataParallelSplit:
    """A :class:`~allegro_jax.train.data.SplitData` whose batches are stacked per device.

    ``batches(order, start)`` and ``num_batches`` behave as for the wrapped split (the same
    global batches in the same order), but each batch is a :class:`Batch` of arrays
    ``[n_devices, ...]`` already placed on ``mesh`` (sharded along the leading axis). Other
    attributes (``structures``, ``has_forces``, ...) are those of the wrapped split.

    Args:
        split: the split (its ``batch_size`` is the GLOBAL batch size).
        mesh: the device mesh.
        axis_name: the mesh axis.
    """

    def __init__(self, split: Any, mesh: Mesh, axis_name: str = AXIS):
        self.split = split
        self.mesh = mesh
        self.axis_name = axis_name
        self.n_devices = mesh_size(mesh, axis_name)
        self.per_device = -(-split.batch_size // self.n_devices)
        # one budget for every device and every batch: one compiled shape per split
        self.budget: Budget = budget_for_dataset(split.inputs, self.per_device, rounded=False)

    def __getattr__(self, name: str) -> Any:
        if name == "split":  # not yet set (e.g. during unpickling)
            raise AttributeError(name)
        return getattr(self.split, name)

    def __len__(self) -> int:
        return len(self.split)

    @property
    def num_batches(self) -> int:
        return self.split.num_batches

    def host_batch(self, indices: Sequence[int]) -> Batch:
        """The stacked batch of these structures as numpy arrays ``[n_devices, ...]``."""
        split = self.split
        parts = []
        for group in split_indices(indices, self.n_devices):
            graph = batch_graph_inputs(
                [split.inputs[i] for i in group], self.budget, dtype=split.dtype
            )
            if group.size:
                labels = make_labels(
                    [split.structures[i] for i in group],
                    self.budget,
                    split.dtype,
                    split.weights_of(group),
                )
            else:  # more devices than structures (e.g. the last batch): all padding
                labels = _empty_labels(self.budget, split.dtype)
            parts.append(Batch(graph, labels))
        return jax.tree.map(lambda *xs: np.stack(xs), *parts)

    def batch(self, indices: Sequence[int]) -> Batch:
        """The stacked batch of these structures, sharded over the mesh."""
        return shard_leading(self.host_batch(indices), self.mesh, self.axis_name)

    def batches(self, order: np.ndarray | None = None, start: int = 0) -> Iterator[Batch]:
        """Sharded batches in ``order`` (default: file order), from batch ``start`` on."""
        order = np.arange(len(self)) if order is None else order
        size = self.split.batch_size
        for b in range(start, self.num_batches):
            yield self.batch(order[b * size : (b + 1) * size])


def make_data_parallel_grad_fn(
    apply_fn: Callable,
    loss_coeffs: Mapping[str, float],
    mesh: Mesh,
    *,
    stress: bool = False,
    axis_name: str = AXIS,
) -> Callable[[Any, Batch], tuple[tuple[jax.Array, ErrorSums], Any]]:
    """``grad_fn(params, batch) -> ((loss, sums), grads)`` of the union of a stacked batch.

    ``batch`` has arrays ``[n_devices, ...]`` (see :class:`DataParallelSplit`); ``params``
    are replicated. Per device: the error sums ``S_d`` of its sub-batch and their VJP; then
    ``S = psum(S_d)``, ``L = loss(S)``, ``grads = psum(VJP_d(∂L/∂S))``. All outputs are
    replicated and equal the single-device values of the union batch.
    """
    coeffs = dict(loss_coeffs)
    forces = coeffs.get("forces", 0.0) > 0

    def local(params: Any, batch: Batch):
        batch = squeeze_leading(batch)  # this device's sub-batch

        def sums_of(p: Any) -> tuple[ErrorSums, ErrorSums]:  # (weighted: Labels.weight, plain)
            pred = apply_fn(p, batch.graph, forces=forces, stress=stress)
            return error_sums(pred, batch, weighted=True), error_sums(pred, batch)

        local_wsums, vjp_fn, local_sums = jax.vjp(sums_of, params, has_aux=True)
        wsums = jax.lax.psum(local_wsums, axis_name)  # sums of the union batch
        sums = jax.lax.psum(local_sums, axis_name)
        loss, d_wsums = jax.value_and_grad(loss_from_sums)(wsums, coeffs)
        (local_grads,) = vjp_fn(d_wsums)
        return (loss, sums), jax.lax.psum(local_grads, axis_name)

    # unchecked: the gradient is local (explicit psum), no replication typing needed
    return shard_map(
        local, mesh, in_specs=(P(), P(axis_name)), out_specs=((P(), P()), P()), check=False
    )


def make_data_parallel_train_step(
    apply_fn: Callable,
    tx: optax.GradientTransformation,
    loss_coeffs: Mapping[str, float],
    mesh: Mesh,
    *,
    use_ema: bool = True,
    ema_decay: float = 0.99,
    ema_use_num_updates: bool = True,
    stress: bool = False,
    axis_name: str = AXIS,
) -> Callable:
    """:func:`allegro_jax.train.step.make_train_step` on a stacked, sharded batch.

    The state must be replicated on ``mesh`` (:func:`allegro_jax.sharding.replicate`)
    and the batch sharded (:class:`DataParallelSplit`). One step equals the single-device
    step on the union batch.
    """
    grad_fn = make_data_parallel_grad_fn(
        apply_fn, loss_coeffs, mesh, stress=stress, axis_name=axis_name
    )
    return make_train_step(
        apply_fn,
        tx,
        loss_coeffs,
        use_ema=use_ema,
        ema_decay=ema_decay,
        ema_use_num_updates=ema_use_num_updates,
        stress=stress,
        grad_fn=grad_fn,
    )


def make_data_parallel_eval_step(
    apply_fn: Callable,
    mesh: Mesh,
    *,
    forces: bool = True,
    stress: bool = False,
    axis_name: str = AXIS,
) -> Callable[[Any, Batch], ErrorSums]:
    """Jitted ``eval_step(params, batch) -> ErrorSums`` of the union of a stacked batch."""

    def local(params: Any, batch: Batch) -> ErrorSums:
        batch = squeeze_leading(batch)
        pred = apply_fn(params, batch.graph, forces=forces, stress=stress)
        return jax.lax.psum(error_sums(pred, batch), axis_name)

    return jax.jit(shard_map(local, mesh, in_specs=(P(), P(axis_name)), out_specs=P(), check=False))


def setup_data_parallel(
    config: Any,
    apply_fn: Callable,
    tx: optax.GradientTransformation,
    train: Any,
    val: Any,
    state: Any,
    *,
    stress: bool = False,
) -> tuple[DataParallelSplit, DataParallelSplit, Callable, Callable, Any]:
    """The training loop's pieces for ``data_parallel: true`` (:mod:`allegro_jax.train.loop`).

    Args:
        config: the :class:`~allegro_jax.train.config.TrainConfig` (``num_devices``,
            ``loss_coeffs``, EMA settings).
        apply_fn: the model's ``apply_fn``.
        tx: the optimiser.
        train: the training :class:`~allegro_jax.train.data.SplitData`.
        val: the validation split.
        state: the initial train state (replicated on the mesh here).
        stress: train on the stress.

    Returns:
        ``(train, val, train_step, eval_step, state)`` with the splits wrapped in
        :class:`DataParallelSplit` and the state replicated.

    Raises:
        ValueError: combined with an ensemble, or more devices than available.
    """
    if getattr(config, "ensemble_size", 1) > 1:
        raise ValueError("data_parallel: true cannot be combined with ensemble_size > 1")
    mesh = make_mesh(config.num_devices)
    train_step = make_data_parallel_train_step(
        apply_fn,
        tx,
        config.loss_coeffs,
        mesh,
        use_ema=config.use_ema,
        ema_decay=config.ema_decay,
        ema_use_num_updates=config.ema_use_num_updates,
        stress=stress,
    )
    eval_step = make_data_parallel_eval_step(
        apply_fn, mesh, forces=val.has_forces, stress=val.has_stress
    )
    return (
        DataParallelSplit(train, mesh),
        DataParallelSplit(val, mesh),
        train_step,
        eval_step,
        replicate(state, mesh),
    )
