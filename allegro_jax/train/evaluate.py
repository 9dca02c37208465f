"""Evaluate a trained model (or ensemble) on a data file: MAE and RMSE, ensemble spread."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from allegro_jax.data.datasets import read_dataset
from allegro_jax.nn.model import make_model
from allegro_jax.train.export import load_model, read_ensemble_size


def evaluate_model(
    model_path: str | os.PathLike,
    data_path: str | os.PathLike,
    *,
    batch_size: int = 16,
    read_fn: Callable[[Path], list] | None = None,
) -> dict[str, Any]:
    """Errors of a trained model on every structure of a data file.

    Args:
        model_path: a run directory or model directory (:func:`load_model`).
        data_path: any file :func:`allegro_jax.data.datasets.read_dataset` reads.
        batch_size: structures per batch.
        read_fn: reader overriding :func:`read_dataset` (e.g. with label keys).

    Returns:
        ``{"n_structures", "energy_mae_mev", "energy_rmse_mev", "energy_per_atom_*",
        "force_mae_mev_per_a", "force_rmse_mev_per_a", "stress_*" (if labelled), ...}``.
        For an ensemble these are the errors of the mean prediction, plus
        ``ensemble_size``, the spread (``energy_std_mean_mev``, ``force_std_mean_mev_per_a``
        = σ_i averaged over atoms, ``force_std_max_mev_per_a``), the Pearson correlation
        over atoms of σ_i with the mean force's error ``‖F̄_i − F_i‖``
        (``force_std_error_correlation``), and each member's energy and force MAE
        (``member<k>_energy_mae_mev``, ``member<k>_force_mae_mev_per_a``).

    Raises:
        FileNotFoundError: the model or the data file is missing.
    """
    from allegro_jax.train.data import SplitData
    from allegro_jax.train.ensemble import (
        evaluate_ensemble_split,
        make_ensemble_eval_step,
        summarize_uncertainty,
    )
    from allegro_jax.train.loop import evaluate_split
    from allegro_jax.train.loss import summarize
    from allegro_jax.train.step import make_eval_step

    data_path = Path(data_path)
    if not data_path.is_file():
        raise FileNotFoundError(f"data file not found: {str(data_path)!r}")
    config, params, _ = load_model(model_path)
    n_members = read_ensemble_size(model_path)
    structures = (read_fn or read_dataset)(data_path)
    dtype = np.float64 if config.model_dtype == "float64" else np.float32
    split = SplitData(
        structures, config.type_names, config.r_max, batch_size, dtype, source=str(data_path)
    )
    _, apply_fn = make_model(config)
    coeffs = {"total_energy": 1.0, "forces": 1.0}
    extra: dict[str, Any] = {}
    if n_members == 1:
        eval_step = make_eval_step(apply_fn, forces=split.has_forces, stress=split.has_stress)
        metrics = summarize(evaluate_split(eval_step, params, split), coeffs)
    else:
        eval_step = make_ensemble_eval_step(
            apply_fn, forces=split.has_forces, stress=split.has_stress
        )
        member_sums, mean_sums, unc = evaluate_ensemble_split(eval_step, params, split)
        metrics = summarize(mean_sums, coeffs) | summarize_uncertainty(unc)
        extra["ensemble_size"] = n_members
        for k, sums in enumerate(member_sums):
            m = summarize(sums, coeffs)
            for key in ("energy_mae_mev", "force_mae_mev_per_a"):
                if key in m:
                    extra[f"member{k}_{key}"] = m[key]
    metrics.pop("loss")
    return {"data": str(data_path), "n_structures": len(split), **metrics, **extra}
