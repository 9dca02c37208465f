"""Ensemble evaluation: per-member errors, errors of the mean prediction, force spread.

``ensemble_eval_step(stacked_params, batch) -> (member_sums, mean_sums, uncertainty)``:
``member_sums`` is an :class:`~allegro_jax.train.loss.ErrorSums` whose fields have a
leading member axis ``[K]``, ``mean_sums`` the error sums of the mean prediction
(:mod:`allegro_jax.nn.ensemble`), and ``uncertainty`` the :class:`UncertaintySums` of the
per-atom force standard deviation ``σ_i`` against the per-atom error of the mean force
``ε_i = ‖F̄_i − F_i^ref‖`` (eV/Å), over the labelled real atoms.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from allegro_jax.nn.ensemble import force_std
from allegro_jax.nn.xla_options import compiler_options
from allegro_jax.train.data import SplitData, prefetch
from allegro_jax.train.loss import Batch, ErrorSums, error_sums


class UncertaintySums(NamedTuple):
    """Sums over atoms (forces) and structures (energies); ``f_std_max`` is a maximum.

    ``n_f`` counts labelled real atoms, ``f_std``/``f_std_sq`` sum σ_i and σ_i²,
    ``f_err``/``f_err_sq`` sum ε_i and ε_i², ``f_std_err`` sums σ_i ε_i; ``n_e`` counts
    real structures, ``e_std`` sums the energy standard deviations.
    """

    n_f: jax.Array
    f_std: jax.Array
    f_std_sq: jax.Array
    f_std_max: jax.Array
    f_err: jax.Array
    f_err_sq: jax.Array
    f_std_err: jax.Array
    n_e: jax.Array
    e_std: jax.Array


def uncertainty_sums(preds: dict, batch: Batch) -> UncertaintySums:
    """:class:`UncertaintySums` of member predictions ``preds`` (leading axis ``[K]``)."""
    graph, labels = batch
    e = preds["energy"]  # [K, n_graphs]
    dtype = e.dtype
    g_mask = graph.graph_mask
    e_std = jnp.where(g_mask, jnp.std(e, axis=0), 0.0)  # [n_graphs]
    zero = jnp.zeros((), dtype)
    if "forces" not in preds:
        n_e = g_mask.sum(dtype=dtype)
        return UncertaintySums(zero, zero, zero, zero, zero, zero, zero, n_e, e_std.sum())
    f = preds["forces"]  # [K, n_nodes, 3]
    mask = graph.node_mask & labels.forces_mask  # [n_nodes]
    sigma = jnp.where(mask, force_std(f), 0.0)  # [n_nodes]
    err = jnp.linalg.norm(jnp.mean(f, axis=0) - labels.forces, axis=-1)
    err = jnp.where(mask, err, 0.0)  # [n_nodes]
    return UncertaintySums(
        n_f=mask.sum(dtype=dtype),
        f_std=sigma.sum(),
        f_std_sq=(sigma**2).sum(),
        f_std_max=sigma.max(),
        f_err=err.sum(),
        f_err_sq=(err**2).sum(),
        f_std_err=(sigma * err).sum(),
        n_e=g_mask.sum(dtype=dtype),
        e_std=e_std.sum(),
    )


def make_ensemble_train_step(train_step: Callable, strategy: str = "auto") -> Callable:
    """One jitted program stepping K stacked train states on the same batch.

    Args:
        train_step: the single-model ``train_step(state, batch) -> (state, metrics)``.
        strategy: ``"vmap"`` (vectorised over the member axis), ``"map"``
            (``jax.lax.map``: the members one after the other inside the program) or
            ``"auto"``: ``map`` on a CPU backend (3× faster there than ``vmap``,
            ``benchmarks/results/ensemble.json``), ``vmap`` on others.

    Returns:
        ``ensemble_step(stacked_state, batch) -> (stacked_state, stacked_metrics)``.
    """
    if strategy == "auto":
        strategy = "map" if jax.default_backend() == "cpu" else "vmap"
    options = compiler_options()
    if strategy == "vmap":
        return jax.jit(jax.vmap(train_step, in_axes=(0, None)), compiler_options=options)
    if strategy == "map":
        return jax.jit(
            lambda states, batch: jax.lax.map(lambda s: train_step(s, batch), states),
            compiler_options=options,
        )
    raise ValueError(f"strategy must be 'auto', 'vmap' or 'map', got {strategy!r}")


def make_ensemble_eval_step(
    apply_fn: Callable, *, forces: bool = True, stress: bool = False
) -> Callable[[Any, Batch], tuple[ErrorSums, ErrorSums, UncertaintySums]]:
    """Build the jitted ``ensemble_eval_step(stacked_params, batch)`` (module docstring)."""

    @functools.partial(jax.jit, compiler_options=compiler_options())
    def ensemble_eval_step(params: Any, batch: Batch):
        preds = jax.vmap(lambda p: apply_fn(p, batch.graph, forces=forces, stress=stress))(params)
        member_sums = jax.vmap(lambda pr: error_sums(pr, batch))(preds)
        mean_pred = {k: jnp.mean(v, axis=0) for k, v in preds.items()}
        return member_sums, error_sums(mean_pred, batch), uncertainty_sums(preds, batch)

    return ensemble_eval_step


def evaluate_ensemble_split(
    eval_step: Callable, params: Any, split: SplitData, prefetch_size: int = 2
) -> tuple[list[ErrorSums], ErrorSums, UncertaintySums]:
    """Aggregate ``eval_step`` over a split (float64 on the host, in file order).

    Returns:
        ``(member_sums, mean_sums, uncertainty)``: one :class:`ErrorSums` per member, the
        sums of the mean prediction, and the aggregated :class:`UncertaintySums`.
    """
    members = None
    mean = np.zeros(len(ErrorSums._fields))
    unc = np.zeros(len(UncertaintySums._fields))
    i_max = UncertaintySums._fields.index("f_std_max")
    for batch in prefetch(split.batches(), prefetch_size):
        m, s, u = jax.device_get(eval_step(params, batch))
        m = np.stack([np.asarray(v, np.float64) for v in m], axis=-1)  # [K, n_fields]
        members = m if members is None else members + m
        mean += np.asarray([np.float64(v) for v in s])
        u = np.asarray([np.float64(v) for v in u])
        unc_max = max(unc[i_max], u[i_max])
        unc += u
        unc[i_max] = unc_max
    return (
        [ErrorSums(*row) for row in members],
        ErrorSums(*mean),
        UncertaintySums(*unc),
    )


def summarize_uncertainty(u: UncertaintySums) -> dict[str, float]:
    """Human units: mean and max σ_i (meV/Å), mean σ_E (meV), and the Pearson correlation
    of σ_i with the mean force's error ε_i over atoms (NaN if undefined)."""
    u = UncertaintySums(*(float(v) for v in u))
    out: dict[str, float] = {}
    if u.n_e:
        out["energy_std_mean_mev"] = 1e3 * u.e_std / u.n_e
    if u.n_f:
        n = u.n_f
        out["force_std_mean_mev_per_a"] = 1e3 * u.f_std / n
        out["force_std_max_mev_per_a"] = 1e3 * u.f_std_max
        cov = u.f_std_err / n - (u.f_std / n) * (u.f_err / n)
        var_s = u.f_std_sq / n - (u.f_std / n) ** 2
        var_e = u.f_err_sq / n - (u.f_err / n) ** 2
        denom = np.sqrt(max(var_s, 0.0) * max(var_e, 0.0))
        out["force_std_error_correlation"] = float(cov / denom) if denom > 0 else float("nan")
    return out
