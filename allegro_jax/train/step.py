"""Jitted pure steps: ``train_step(state, batch) -> (state, metrics)`` and ``eval_step``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from allegro_jax.train.loss import Batch, ErrorSums, error_sums, weighted_loss
from allegro_jax.train.optimizer import ema_decay_at, ema_update, set_learning_rate
from allegro_jax.train.state import TrainState


def make_train_step(
    apply_fn: Callable,
    tx: optax.GradientTransformation,
    loss_coeffs: Mapping[str, float],
    *,
    use_ema: bool = True,
    ema_decay: float = 0.99,
    ema_use_num_updates: bool = True,
    stress: bool = False,
    grad_fn: Callable | None = None,
    compiler_options: Mapping[str, Any] | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """Build the jitted ``train_step(state, batch) -> (state, metrics)``.

    One step: loss and gradient at ``state.params``; the optimiser update at the rate
    ``state.plateau.lr``; the EMA update with decay ``min(ema_decay, (1+n)/(10+n))``, ``n``
    the new step count; the batch's error sums added to ``state.train_sums``. If the loss or
    the gradient norm is not finite, the state is returned unchanged except ``bad_step``,
    which records the step (the caller stops the run).

    Args:
        apply_fn: the model's ``apply_fn`` (:func:`allegro_jax.nn.model.make_model`).
        tx: the optimiser of :func:`allegro_jax.train.optimizer.make_optimizer`.
        loss_coeffs: ``{"total_energy", "forces", "stress"}`` weights.
        use_ema: update ``ema_params`` (else they track ``params``).
        ema_decay: the EMA decay.
        ema_use_num_updates: use the warm-up.
        stress: compute the stress (only needed when it has a positive weight).
        grad_fn: ``(params, batch) -> ((loss, sums), grads)`` replacing the single-device
            loss and gradient (the data-parallel one of
            :mod:`allegro_jax.train.data_parallel`).
        compiler_options: XLA options of the jitted step
            (:func:`allegro_jax.nn.xla_options.compiler_options`); a step with options
            cannot be called inside another ``jax.jit`` (an ensemble's, for example), so
            the default is none.

    Returns:
        The jitted step; ``metrics`` has ``loss``, ``grad_norm`` and ``lr``.
    """
    coeffs = dict(loss_coeffs)
    forces = coeffs.get("forces", 0.0) > 0

    def single_device_loss(params, batch):
        pred = apply_fn(params, batch.graph, forces=forces, stress=stress)
        return weighted_loss(pred, batch, coeffs)  # (loss, the unweighted sums)

    if grad_fn is None:
        grad_fn = jax.value_and_grad(single_device_loss, has_aux=True)

    def train_step(state: TrainState, batch: Batch):
        (loss, sums), grads = grad_fn(state.params, batch)
        opt_state = set_learning_rate(state.opt_state, state.plateau.lr)
        updates, opt_state = tx.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        step = state.step + 1
        if use_ema:
            decay = ema_decay_at(step, ema_decay, ema_use_num_updates)
            ema_params = ema_update(state.ema_params, params, decay)
        else:
            ema_params = params
        grad_norm = optax.tree.norm(grads)
        rng, _ = jax.random.split(state.rng)
        new = state.replace(
            step=step,
            params=params,
            opt_state=opt_state,
            ema_params=ema_params,
            rng=rng,
            train_sums=ErrorSums(
                *(a + b.astype(a.dtype) for a, b in zip(state.train_sums, sums, strict=True))
            ),
        )
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
        new = new.replace(bad_step=jnp.where(finite, state.bad_step, step).astype(jnp.int32))
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": state.plateau.lr}
        return new, metrics

    return jax.jit(train_step, compiler_options=compiler_options or None)


def make_eval_step(
    apply_fn: Callable,
    *,
    forces: bool = True,
    stress: bool = False,
    compiler_options: Mapping[str, Any] | None = None,
) -> Callable[[Any, Batch], ErrorSums]:
    """Build the jitted ``eval_step(params, batch) -> ErrorSums`` (energy, forces, stress),
    compiled with ``compiler_options`` (as :func:`make_train_step`)."""

    def eval_step(params: Any, batch: Batch) -> ErrorSums:
        pred = apply_fn(params, batch.graph, forces=forces, stress=stress)
        return error_sums(pred, batch)

    return jax.jit(eval_step, compiler_options=compiler_options or None)
