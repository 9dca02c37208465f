"""Training data: seeded splits, precomputed neighbour lists, fixed-budget batches, prefetch.

Every split gets ONE padding budget (the sum of its ``batch_size`` largest structures), so a
run compiles one training shape and one validation shape. The order of an epoch is a pure
function of ``(seed, epoch)`` (:func:`epoch_permutation`), which is what makes a resumed
run see exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from allegro_jax.data.graph import Structure
from allegro_jax.data.padding import (
    Budget,
    GraphInputs,
    batch_graph_inputs,
    budget_for_dataset,
    precompute_graph_inputs,
)
from allegro_jax.train.loss import Batch, make_labels


class SplitData:
    """One split: its structures, their neighbour lists and its static budget.

    Args:
        structures: the structures (labels included).
        type_names: the model's types.
        r_max: cutoff in Å.
        batch_size: structures per batch.
        dtype: float dtype of the batches.
        inputs: precomputed :class:`GraphInputs` (else computed here, once).
        source: the file the structures were read from (named with the frame in errors).
        weights: each structure's loss weight (default 1; ``Labels.weight``).
        budget: the padding budget (default: the exact bound for these structures); a
            larger one, e.g. a whole file's for a subset of it, runs the program compiled
            for that file.

    Raises:
        DataError: an invalid structure (too close atoms, an unknown element, ...).
    """

    def __init__(
        self,
        structures: Sequence[Structure],
        type_names: Sequence[str],
        r_max: float,
        batch_size: int,
        dtype: Any = np.float32,
        inputs: Sequence[GraphInputs] | None = None,
        source: str | None = None,
        weights: Sequence[float] | None = None,
        budget: Budget | None = None,
    ):
        self.structures = list(structures)
        if not self.structures:
            raise ValueError("a data split is empty")
        self.weights = None if weights is None else [float(w) for w in weights]
        if self.weights is not None and len(self.weights) != len(self.structures):
            raise ValueError(
                f"{len(self.weights)} loss weights for {len(self.structures)} structures"
            )
        self.inputs = (
            list(inputs)
            if inputs is not None
            else precompute_graph_inputs(self.structures, type_names, r_max, source=source)
        )
        self.batch_size = int(batch_size)
        self.dtype = np.dtype(dtype)
        # the exact bound (the sum of the batch_size largest structures, plus one padding
        # node and graph): a fixed budget per split needs no ladder rounding
        self.budget: Budget = (
            budget
            if budget is not None
            else budget_for_dataset(self.inputs, self.batch_size, rounded=False)
        )

    def __len__(self) -> int:
        return len(self.structures)

    def weights_of(self, indices: Sequence[int]) -> list[float] | None:
        """The loss weights of these structures (None: all 1)."""
        return None if self.weights is None else [self.weights[i] for i in indices]

    @property
    def num_batches(self) -> int:
        return -(-len(self) // self.batch_size)

    def batch(self, indices: Sequence[int]) -> Batch:
        """The padded batch of these structures (numpy arrays)."""
        graph = batch_graph_inputs([self.inputs[i] for i in indices], self.budget, dtype=self.dtype)
        labels = make_labels(
            [self.structures[i] for i in indices], self.budget, self.dtype, self.weights_of(indices)
        )
        return Batch(graph, labels)

    def batches(self, order: np.ndarray | None = None, start: int = 0) -> Iterator[Batch]:
        """Batches in ``order`` (default: file order), from batch number ``start`` on."""
        order = np.arange(len(self)) if order is None else order
        for b in range(start, self.num_batches):
            yield self.batch(order[b * self.batch_size : (b + 1) * self.batch_size])

    @property
    def has_stress(self) -> bool:
        return any(s.stress is not None for s in self.structures)

    @property
    def has_forces(self) -> bool:
        return any(s.forces is not None for s in self.structures)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The training order of epoch ``epoch`` (0-based): a function of ``(seed, epoch)`` only."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def prefetch(
    iterator: Iterator[Any],
    size: int = 2,
    transfer: Callable[[Any], Any] | None = jax.device_put,
) -> Iterator[Any]:
    """Run ``iterator`` in a host thread, ``size`` items ahead (transferred to the device).

    Exceptions in the producer are re-raised in the consumer. Closing the generator (or
    leaving the consuming loop) stops the thread.
    """
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in iterator:
                if transfer is not None:
                    item = transfer(item)
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("done", done))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            q.put(("error", err))

    thread = threading.Thread(target=produce, daemon=True, name="allegro-prefetch")
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "done":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
