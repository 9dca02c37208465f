"""Evaluate a trained model (or ensemble) on a data file: MAE and RMSE, ensemble spread.

The file's labels decide what is scored: energies, forces and stress, each where a frame
has it (an energy-only file, e.g. a reaction path or a dihedral scan, gives energy errors
only); the result names the labels no frame had (``skipped``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ase.io
import jax
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from allegro_jax.compiling import watch_compiles
from allegro_jax.data.datasets import DataKeyError, describe_frame_keys, read_dataset
from allegro_jax.data.validate import frame_context, types_from_numbers
from allegro_jax.io.model import load_model, read_ensemble_size
from allegro_jax.nn.model import make_model
from allegro_jax.nn.xla_options import compiler_options
from allegro_jax.train.data import SplitData, prefetch
from allegro_jax.train.ensemble import (
    evaluate_ensemble_split,
    make_ensemble_eval_step,
    summarize_uncertainty,
)
from allegro_jax.train.loss import ErrorSums, summarize
from allegro_jax.train.step import make_eval_step


def evaluate_split(eval_step, params, split: SplitData, prefetch_size: int = 2) -> ErrorSums:
    """Error sums of ``params`` over a split (float64 on the host, in file order)."""
    total = np.zeros(len(ErrorSums._fields))
    for batch in prefetch(split.batches(), prefetch_size):
        total += np.asarray([np.float64(v) for v in jax.device_get(eval_step(params, batch))])
    return ErrorSums(*total)


def evaluate_model(
    model_path: str | os.PathLike,
    data_path: str | os.PathLike,
    *,
    batch_size: int = 16,
    read_fn: Callable[[Path], list] | None = None,
    quiet: bool = False,
    group_by: str | None = None,
    predictions: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Errors of a trained model on every structure of a data file.

    Args:
        model_path: a run directory or model directory (:func:`load_model`).
        data_path: any file :func:`allegro_jax.data.datasets.read_dataset` reads.
        batch_size: structures per batch.
        read_fn: reader overriding :func:`read_dataset` (e.g. with label keys); by default
            no label is required of a frame (energies, forces and stress are scored where
            present).
        quiet: do not print the ``compiling…`` line and the compile time.
        group_by: a per-frame ``info`` key (an extxyz comment key such as ``config_type``):
            the errors are also given for each of its values, under ``groups`` (frames
            without the key form the group ``"(none)"``).
        predictions: an extended-XYZ file to write every structure to, in file order,
            with the model's predictions beside its labels (:func:`write_predictions`);
            written to ``<name>.partial`` and renamed when complete.

    Returns:
        ``{"data", "n_structures", "frames_with_energy", "frames_with_forces",
        "frames_with_stress", "skipped", "energy_mae_mev", "energy_rmse_mev",
        "energy_per_atom_*", "force_mae_mev_per_a", "force_rmse_mev_per_a", "stress_*",
        ...}``: the error keys of the labels the file has; ``skipped`` lists the labels no
        frame has (``"energy"``, ``"forces"``; ``"stress"`` only for a file with periodic
        frames).
        For an ensemble these are the errors of the mean prediction, plus
        ``ensemble_size``, the spread (``energy_std_mean_mev``, ``force_std_mean_mev_per_a``
        = σ_i averaged over atoms, ``force_std_max_mev_per_a``), the Pearson correlation
        over atoms of σ_i with the mean force's error ``‖F̄_i − F_i‖``
        (``force_std_error_correlation``), and each member's energy and force MAE
        (``member<k>_energy_mae_mev``, ``member<k>_force_mae_mev_per_a``).
        With ``group_by``: ``group_by`` and ``groups`` = ``{value: {"n_structures",
        "n_atoms", error keys}}`` in order of first appearance. With ``predictions``:
        ``predictions``, the file written.

    Raises:
        FileNotFoundError: the model or the data file is missing.
        DataError: an unknown element (checked for every frame before anything compiles),
            a file without any label, ``group_by`` on no frame, or other bad data (naming
            the file and frame).
    """
    data_path = Path(data_path)
    if not data_path.is_file():
        raise FileNotFoundError(f"data file not found: {str(data_path)!r}")
    if predictions is not None:  # refused before anything is computed
        if not Path(predictions).parent.is_dir():
            raise FileNotFoundError(
                f"the folder for the predictions file {str(predictions)!r} does not exist"
            )
        if Path(predictions).resolve() == data_path.resolve():
            raise ValueError(
                f"the predictions file {str(predictions)!r} is the data file: it would be replaced"
            )
    config, params, energy_forces_fn = load_model(model_path)
    n_members = read_ensemble_size(model_path)
    if read_fn is not None:
        structures = read_fn(data_path)
    elif data_path.suffix == ".npz":
        structures = read_dataset(data_path)
    else:  # score what the file has: no label is required of a frame
        structures = read_dataset(data_path, required=())
    structures = list(structures)
    if not structures:
        raise DataKeyError(f"{data_path}: no structures to evaluate")
    # every frame's elements first: an unknown one is reported before anything compiles
    for i, structure in enumerate(structures):
        frame = structure.info.get("index") if isinstance(structure.info, dict) else None
        with frame_context(i, source=str(data_path), frame=frame):
            types_from_numbers(structure.numbers, config.type_names)
    counts = {
        label: sum(getattr(s, label) is not None for s in structures)
        for label in ("energy", "forces", "stress")
    }
    if not any(counts.values()):
        keys = "" if data_path.suffix == ".npz" else f"; {describe_frame_keys(data_path)}"
        raise DataKeyError(
            f"{data_path}: no frame has an energy, forces or stress to compare with{keys}"
        )
    groups = _groups(structures, group_by, data_path) if group_by else {}
    periodic = any(np.any(s.pbc) for s in structures)
    skipped = [label for label, n in counts.items() if n == 0 and (label != "stress" or periodic)]
    dtype = config.dtype
    split = SplitData(
        structures, config.type_names, config.r_max, batch_size, dtype, source=str(data_path)
    )
    _, apply_fn = make_model(config)
    what = (
        f"the model for {len(split)} structures of {data_path.name} "
        f"(batches of {split.batch_size}; {split.num_batches} batch(es))"
    )
    coeffs = {"total_energy": 1.0, "forces": 1.0}
    extra: dict[str, Any] = {}
    if n_members == 1:
        eval_step = make_eval_step(
            apply_fn,
            forces=split.has_forces,
            stress=split.has_stress,
            compiler_options=compiler_options(),
        )
        eval_step = watch_compiles(eval_step, what, quiet=quiet)

        def score(split: SplitData) -> dict[str, Any]:
            return summarize(evaluate_split(eval_step, params, split), coeffs)

        metrics = score(split)
    else:
        eval_step = make_ensemble_eval_step(
            apply_fn, forces=split.has_forces, stress=split.has_stress
        )
        eval_step = watch_compiles(eval_step, f"{what}, {n_members} members", quiet=quiet)
        member_sums, mean_sums, unc = evaluate_ensemble_split(eval_step, params, split)
        metrics = summarize(mean_sums, coeffs) | summarize_uncertainty(unc)

        def score(split: SplitData) -> dict[str, Any]:
            _, sums, group_unc = evaluate_ensemble_split(eval_step, params, split)
            return summarize(sums, coeffs) | summarize_uncertainty(group_unc)

        extra["ensemble_size"] = n_members
        for k, sums in enumerate(member_sums):
            m = summarize(sums, coeffs)
            for key in ("energy_mae_mev", "force_mae_mev_per_a"):
                if key in m:
                    extra[f"member{k}_{key}"] = m[key]
    metrics.pop("loss")
    if group_by:
        by_value = {}
        for value, idx in groups.items():
            members = [structures[i] for i in idx]
            part = SplitData(
                members,
                config.type_names,
                config.r_max,
                batch_size,
                dtype,
                inputs=[split.inputs[i] for i in idx],  # the neighbour lists already built
                source=str(data_path),
                # the file's budget bounds any subset's: the program compiled for the file
                budget=split.budget,
            )
            scores = score(part)
            scores.pop("loss")
            n_atoms = sum(len(s.numbers) for s in members)
            by_value[value] = {"n_structures": len(members), "n_atoms": n_atoms, **scores}
        extra |= {"group_by": group_by, "groups": by_value}
    if predictions is not None:
        write_predictions(predictions, split, energy_forces_fn, stress=periodic, quiet=quiet)
        extra["predictions"] = str(predictions)
    return {
        "data": str(data_path),
        "n_structures": len(split),
        **{f"frames_with_{label}": n for label, n in counts.items()},
        "skipped": skipped,
        **metrics,
        **extra,
    }


def write_predictions(
    path: str | os.PathLike,
    split: SplitData,
    energy_forces_fn: Callable,
    *,
    stress: bool = False,
    quiet: bool = False,
) -> int:
    """Write a split's structures with the model's predictions (extended XYZ, file order).

    Each frame keeps its labels (``energy``, ``forces``, ``stress``, as ASE writes a
    calculator's results) and ``info`` (``config_type``, the source ``index``, ...) and
    gains ``allegro_energy`` (eV), the per-atom array ``allegro_forces`` (eV/Å) and, with
    ``stress``, ``allegro_stress`` (eV/Å^3, the 3×3 tensor row by row, ASE's sign
    convention); where the frame has the label, ``allegro_energy_error_mev_per_atom``
    (prediction − label, signed) and ``allegro_force_mae_mev_per_a``. For an ensemble the
    predictions are the members' mean, with ``allegro_energy_std`` (eV) and the per-atom
    ``allegro_forces_std`` (eV/Å, the spread of the force vector).

    Args:
        path: the file; written as ``<path>.partial`` and renamed when every frame is in
            it, so an interrupted run leaves no file that looks complete.
        split: the structures and their neighbour lists (batches in file order).
        energy_forces_fn: the third value of :func:`allegro_jax.io.model.load_model`.
        stress: predict the stress (written for the periodic structures).
        quiet: do not print the ``compiling…`` line.

    Returns:
        The number of frames written.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    predict = watch_compiles(energy_forces_fn, f"the predictions for {path.name}", quiet=quiet)
    written = 0
    with open(partial, "w") as f:
        for b, batch in enumerate(split.batches()):  # file order
            out = jax.tree.map(np.asarray, predict(batch.graph, stress=stress))
            first = b * split.batch_size
            start = 0
            for g, s in enumerate(split.structures[first : first + split.batch_size]):
                end = start + s.n_atoms
                atoms = s.to_ase()
                atoms.info.update(s.info)
                labels = {"energy": s.energy, "forces": s.forces, "stress": s.stress}
                atoms.calc = SinglePointCalculator(
                    atoms, **{k: v for k, v in labels.items() if v is not None}
                )
                energy, forces = float(out["energy"][g]), out["forces"][start:end]
                atoms.info["allegro_energy"] = energy
                atoms.arrays["allegro_forces"] = np.asarray(forces, dtype=np.float64)
                if stress and np.any(s.pbc):
                    atoms.info["allegro_stress"] = np.asarray(out["stress"][g], np.float64).ravel()
                if s.energy is not None:
                    error = 1000.0 * (energy - s.energy) / s.n_atoms
                    atoms.info["allegro_energy_error_mev_per_atom"] = error
                if s.forces is not None:
                    mae = 1000.0 * float(np.mean(np.abs(forces - s.forces)))
                    atoms.info["allegro_force_mae_mev_per_a"] = mae
                if "energy_std" in out:
                    atoms.info["allegro_energy_std"] = float(out["energy_std"][g])
                    atoms.arrays["allegro_forces_std"] = np.asarray(
                        out["forces_std"][start:end], dtype=np.float64
                    )
                ase.io.write(f, atoms, format="extxyz")
                written += 1
                start = end
    os.replace(partial, path)
    return written


def _groups(structures: list, key: str, data_path: Path) -> dict[str, list[int]]:
    """The structures' indices grouped by ``info[key]`` (as text), in order of first
    appearance."""
    groups: dict[str, list[int]] = {}
    found = False
    for i, s in enumerate(structures):
        info = s.info if isinstance(s.info, dict) else {}
        found |= key in info
        groups.setdefault(str(info[key]) if key in info else "(none)", []).append(i)
    if not found:
        keys = sorted({k for s in structures if isinstance(s.info, dict) for k in s.info})
        raise DataKeyError(
            f"{data_path}: no frame has the key {key!r} to group by (the frames' keys: "
            f"{', '.join(keys) or 'none'})"
        )
    return groups
