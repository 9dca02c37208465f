"""The data of a training run: reading the files, the seeded splits, the model statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from ase.data import chemical_symbols

from allegro_jax.config import AllegroConfig
from allegro_jax.data.datasets import (
    DataKeyError,
    describe_frame_keys,
    random_split,
    read_dataset,
    recommended_read_kwargs,
    stratified_split,
)
from allegro_jax.data.statistics import DatasetStatistics, compute_statistics
from allegro_jax.nn.model import subtract_pair_potential
from allegro_jax.train.config import TrainConfig


def read_structures(config: TrainConfig, path: str) -> list:
    """Read a data file: the npz readers, or ASE with the config's label keys.

    Keys left ``None`` take the reader's default for the file; ``"none"`` ignores a label.
    Only the energy is required; frames without forces or stress get masked labels.
    """
    resolved = config.resolve_path(path)
    if resolved.suffix == ".npz":
        return read_dataset(resolved)
    kwargs: dict[str, Any] = {"required": ("energy",)}
    for name in ("energy_key", "forces_key", "stress_key"):
        value = getattr(config, name)
        if value is not None:
            kwargs[name] = None if value.lower() == "none" else value
    return read_dataset(resolved, **kwargs)


def check_loss_labels(config: TrainConfig, path: str, structures: Sequence) -> None:
    """The labels the loss uses must be in the file: at least one frame with forces (stress).

    Frames without forces or stress are fine (their labels are masked), but a file where
    none has them while ``loss_coeffs`` weighs them would train silently without that term
    (the forces under another key than the config's, e.g.).

    Raises:
        DataKeyError: naming the file, the key looked up, the keys the first frame has and
            the two ways out (``forces_key``/``stress_key``, or a zero loss weight).
    """
    for label in ("forces", "stress"):
        weight = config.loss_coeffs[label]
        if weight <= 0 or any(getattr(s, label) is not None for s in structures):
            continue
        resolved = config.resolve_path(path)
        key = getattr(config, f"{label}_key")
        if key is None:
            key = recommended_read_kwargs(resolved).get(f"{label}_key", label)
        if resolved.suffix == ".npz":
            found = "this npz file has none"
        elif key.lower() == "none":
            found = f"{label}_key is none (ignored)"
        else:
            found = f"no frame has {label} under the key {key!r}; {describe_frame_keys(resolved)}"
        raise DataKeyError(
            f"{resolved}: the loss uses {label} (loss_coeffs.{label} = {weight:g}) but {found}. "
            f"Set {label}_key to the key that holds them, or loss_coeffs.{label}: 0 to train "
            f"without {label}."
        )


def load_splits(config: TrainConfig) -> tuple[list, list]:
    """The seeded (train, validation) structures of a config (see :func:`check_loss_labels`;
    ``validation_stratify_by``: :func:`stratified_draw`)."""
    data = read_structures(config, config.dataset_file_name)
    check_loss_labels(config, config.dataset_file_name, data)
    key = config.validation_stratify_by
    if config.validation_dataset_file_name:
        val_data = read_structures(config, config.validation_dataset_file_name)
        check_loss_labels(config, config.validation_dataset_file_name, val_data)
        n_train = config.n_train or len(data)
        (train_idx,) = random_split(len(data), (n_train,), config.dataset_seed)
        if key is None:
            (val_idx,) = random_split(len(val_data), (config.n_val,), config.dataset_seed + 1)
        else:
            source = config.validation_dataset_file_name
            seed = config.dataset_seed + 1
            _, val_idx = stratified_draw(val_data, key, source, config.n_val, seed, keep_one=False)
        return [data[i] for i in train_idx], [val_data[i] for i in val_idx]
    n_train = config.n_train or len(data) - config.n_val
    if n_train < 1:
        raise ValueError(
            f"{config.dataset_file_name} has {len(data)} structures; n_val = "
            f"{config.n_val} leaves none for training"
        )
    if key is None:
        train_idx, val_idx = random_split(len(data), (n_train, config.n_val), config.dataset_seed)
    else:
        rest, val_idx = stratified_draw(
            data, key, config.dataset_file_name, config.n_val, config.dataset_seed, keep_one=True
        )
        if n_train > len(rest):
            raise ValueError(
                f"{config.dataset_file_name} has {len(data)} structures; n_train = {n_train} "
                f"and n_val = {config.n_val} need more"
            )
        train_idx = rest[:n_train]
    return [data[i] for i in train_idx], [data[i] for i in val_idx]


def info_values(structures: Sequence, key: str) -> list:
    """Each structure's ``info[key]`` (``None`` where it has none): the frames' kinds for
    ``config_type_weights`` and ``validation_stratify_by``."""
    return [s.info.get(key) if isinstance(s.info, dict) else None for s in structures]


def stratified_draw(
    structures: Sequence, key: str, source: str, n_val: int, seed: int, *, keep_one: bool
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~allegro_jax.data.datasets.stratified_split` of the structures of the file
    ``source`` by their ``info[key]`` (frames without it are a group of their own).

    Raises:
        ValueError: naming the file: no structure has the key (a misspelt key would
            silently give a plain random draw; the message lists the first frame's keys),
            or ``n_val`` is more than the groups can give.
    """
    groups = info_values(structures, key)
    if all(g is None for g in groups):
        first = structures[0].info if structures and isinstance(structures[0].info, dict) else {}
        have = ", ".join(sorted(map(str, first))) or "none"
        raise ValueError(
            f"{source}: validation_stratify_by = {key!r}, but no frame has that info key "
            f"(the first frame's: {have})"
        )
    groups = [None if g is None else str(g) for g in groups]
    try:
        return stratified_split(groups, n_val, seed, keep_one=keep_one)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def default_type_names(structures: Sequence) -> list[str]:
    """The elements of a data set, sorted by atomic number (the default ``type_names``)."""
    z = sorted({int(n) for s in structures for n in np.unique(s.numbers)})
    return [chemical_symbols[n] for n in z]


def complete_model_config(
    model: dict[str, Any], train: list, *, neighbor_stats: bool = True
) -> tuple[AllegroConfig, DatasetStatistics]:
    """Fill ``type_names`` and the normalisation constants the user did not give.

    ``avg_num_neighbors`` ← mean number of neighbours of the training set;
    ``per_type_energy_shifts`` ← least-squares per-type shifts (the per-atom mean for a type
    without atoms); ``per_type_energy_scales`` ← RMS of the force components (or the
    per-atom energy residual RMS without forces). With a ``pair_potential``, energies and
    forces are those left after subtracting it: what the network learns.
    """
    model = dict(model)
    if "type_names" not in model:
        model["type_names"] = default_type_names(train)
    if model.get("pair_potential"):  # statistics of what the network learns
        probe = AllegroConfig.from_dict({**model, "avg_num_neighbors": 1.0})
        train = subtract_pair_potential(probe, train)
    stats = compute_statistics(train, model["type_names"], model["r_max"])
    model.setdefault("avg_num_neighbors", stats.avg_num_neighbors)
    if "per_type_energy_shifts" not in model and stats.per_type_energy_shifts is not None:
        mean = stats.per_atom_energy_mean
        model["per_type_energy_shifts"] = [
            mean if v is None else v for v in stats.per_type_energy_shifts
        ]
    if "per_type_energy_scales" not in model:
        scale = stats.forces_rms or stats.per_atom_energy_residual_rms or 1.0
        model["per_type_energy_scales"] = scale if scale > 0 else 1.0
    return AllegroConfig.from_dict(model), stats
