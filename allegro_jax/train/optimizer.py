"""Optimiser factory, a ReduceLROnPlateau scheduler, a cosine schedule and the EMA decay.

``optax.contrib.reduce_on_plateau`` watches a value passed to every ``update`` call
(averaged over ``accumulation_size`` steps); the paper's protocol reduces the rate on the
*validation* loss measured once per epoch, outside the optimiser. So the plateau logic is
a small pure function (:func:`plateau_update`) whose state (:class:`PlateauState`) lives in
the train state and is checkpointed with it; the current rate is injected into the optax
state with :func:`set_learning_rate` (``optax.inject_hyperparams``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


def make_optimizer(
    learning_rate: float,
    *,
    amsgrad: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    max_gradient_norm: float | None = None,
) -> optax.GradientTransformation:
    """Adam or AMSGrad with optional global-norm clipping and an injectable learning rate.

    Args:
        learning_rate: initial rate (change it later with :func:`set_learning_rate`).
        amsgrad: use AMSGrad instead of Adam.
        betas: ``(b1, b2)``.
        eps: epsilon in the denominator.
        max_gradient_norm: clip gradients to this global norm first (``None``: no clipping).

    Returns:
        An optax transformation whose state has ``hyperparams["learning_rate"]``.
    """

    def chain(learning_rate):
        parts = []
        if max_gradient_norm is not None:
            parts.append(optax.clip_by_global_norm(max_gradient_norm))
        make = optax.amsgrad if amsgrad else optax.adam
        parts.append(make(learning_rate, b1=betas[0], b2=betas[1], eps=eps))
        return optax.chain(*parts)

    return optax.inject_hyperparams(chain)(learning_rate=learning_rate)


def set_learning_rate(opt_state: Any, learning_rate: jax.Array) -> Any:
    """The optimiser state of :func:`make_optimizer` with a new learning rate."""
    hyper = dict(opt_state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(learning_rate, hyper["learning_rate"].dtype)
    return opt_state._replace(hyperparams=hyper)


@struct.dataclass
class PlateauState:
    """State of :func:`plateau_update` (all scalars, checkpointed with the train state).

    Attributes:
        lr: current learning rate.
        best: best value seen so far (``inf`` before the first).
        num_bad_epochs: epochs since the last improvement.
    """

    lr: jax.Array
    best: jax.Array
    num_bad_epochs: jax.Array


def plateau_init(learning_rate: float) -> PlateauState:
    return PlateauState(
        lr=jnp.asarray(learning_rate, jnp.float32),
        best=jnp.asarray(jnp.inf, jnp.float32),
        num_bad_epochs=jnp.asarray(0, jnp.int32),
    )


def plateau_update(
    state: PlateauState,
    value: jax.Array | float,
    *,
    patience: int,
    factor: float,
    threshold: float = 1e-4,
    min_lr: float = 0.0,
) -> PlateauState:
    """One epoch of ReduceLROnPlateau (torch semantics, ``mode="min"``, relative threshold).

    ``value`` improves on ``best`` if ``value < best · (1 - threshold)``. After more than
    ``patience`` epochs without improvement the rate becomes ``max(lr · factor, min_lr)``
    and the counter restarts.

    Args:
        state: the scheduler state.
        value: this epoch's validation loss.
        patience: epochs without improvement tolerated.
        factor: rate multiplier on a plateau.
        threshold: relative improvement that counts.
        min_lr: lower bound of the rate.

    Returns:
        The new state.
    """
    value = jnp.asarray(value, jnp.float32)
    better = value < state.best * (1.0 - threshold)
    best = jnp.where(better, value, state.best)
    bad = jnp.where(better, 0, state.num_bad_epochs + 1)
    reduce = bad > patience
    lr = jnp.where(reduce, jnp.maximum(state.lr * factor, min_lr), state.lr)
    bad = jnp.where(reduce, 0, bad)
    return PlateauState(lr=lr.astype(jnp.float32), best=best, num_bad_epochs=bad.astype(jnp.int32))


def cosine_lr(learning_rate: float, epoch: int, epochs: int) -> float:
    """Rate of epoch ``epoch`` (0-based) of a half cosine from ``learning_rate`` to 0.

    ``learning_rate · (1 + cos(π · epoch / epochs)) / 2``; ``epoch ≥ epochs`` gives 0
    (``optax.cosine_decay_schedule`` with the epoch as its count).
    """
    return float(optax.cosine_decay_schedule(learning_rate, epochs)(epoch))


def ema_decay_at(step: jax.Array, decay: float, use_num_updates: bool = True) -> jax.Array:
    """EMA decay at update ``step`` (1 for the first update): ``min(decay, (1+n)/(10+n))``.

    This is nequip's (torch_ema's) warm-up: early averages forget the random init quickly.
    """
    if not use_num_updates:
        return jnp.asarray(decay, jnp.float32)
    n = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def ema_update(ema_params: Any, params: Any, decay: jax.Array) -> Any:
    """``ema ← decay · ema + (1 − decay) · params``, leaf by leaf, in each leaf's dtype."""
    return jax.tree.map(
        lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), ema_params, params
    )
