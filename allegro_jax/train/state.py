"""The train state: everything a run needs to continue bit-for-bit after a restart."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from allegro_jax.train.loss import ErrorSums
from allegro_jax.train.optimizer import PlateauState, plateau_init


@struct.dataclass
class TrainState:
    """A pytree of arrays (orbax saves and restores it whole).

    Attributes:
        step: optimiser steps taken (also the EMA's number of updates).
        epoch: completed (validated) epochs.
        params: model parameters.
        opt_state: optax state (``hyperparams["learning_rate"]`` is the current rate).
        ema_params: exponential moving average of ``params`` (used for validation).
        plateau: ReduceLROnPlateau state; ``plateau.lr`` is the rate of the next step.
        rng: PRNG key, split once per step (for stochastic extensions; the model is
            deterministic).
        train_sums: error sums of the current epoch's training batches so far.
        best_val_loss: best validation loss so far (a float32 copy; the training loop keeps
            the float64 value in the checkpoint's metadata and decides with that).
        best_epoch: epoch of ``best_val_loss`` (0: none yet).
        bad_step: 0, or the step whose loss or gradient was not finite (that update was
            not applied).
        wall_time: training seconds spent over all invocations.
    """

    step: jax.Array
    epoch: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    plateau: PlateauState
    rng: jax.Array
    train_sums: ErrorSums
    best_val_loss: jax.Array
    best_epoch: jax.Array
    bad_step: jax.Array
    wall_time: jax.Array


def create_train_state(
    params: Any, tx: optax.GradientTransformation, learning_rate: float, rng: jax.Array
) -> TrainState:
    """A fresh state at step 0 (EMA initialised to the parameters).

    Args:
        params: initial parameters.
        tx: the optimiser (:func:`allegro_jax.train.optimizer.make_optimizer`).
        learning_rate: initial rate.
        rng: a PRNG key (raw ``uint32[2]``, e.g. ``jax.random.PRNGKey(seed)``).
    """
    dtype = jax.tree.leaves(params)[0].dtype
    return TrainState(
        step=jnp.asarray(0, jnp.int32),
        epoch=jnp.asarray(0, jnp.int32),
        params=params,
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params),
        plateau=plateau_init(learning_rate),
        rng=rng,
        train_sums=ErrorSums.zeros(dtype),
        best_val_loss=jnp.asarray(jnp.inf, jnp.float32),
        best_epoch=jnp.asarray(0, jnp.int32),
        bad_step=jnp.asarray(0, jnp.int32),
        wall_time=jnp.asarray(0.0, jnp.float32),
    )
