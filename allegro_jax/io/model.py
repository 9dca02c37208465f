"""A trained model as a small directory, and the one call that loads it.

Layout (``save_model``)::

    <model_dir>/config.json      {"format": 1, "model": AllegroConfig dict, "metadata": {...}}
                                 (+ "ensemble_size": K for an ensemble)
    <model_dir>/params.msgpack   flax.serialization bytes of the (EMA) parameters; for an
                                 ensemble, every leaf has a leading member axis [K]

A run directory of :func:`allegro_jax.train.loop.train_and_evaluate` holds the best model
in ``<run_dir>/model``; :func:`load_model` accepts either directory.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from allegro_jax._malloc import ready_on_device
from allegro_jax.config import AllegroConfig
from allegro_jax.data.graph import AtomicGraph, Structure
from allegro_jax.data.padding import build_graph
from allegro_jax.nn.ensemble import ensemble_size_of, make_ensemble_apply_fn
from allegro_jax.nn.model import ChunkPlanner, make_model
from allegro_jax.nn.xla_options import jit_apply

FORMAT = 1
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.msgpack"


def save_model(
    model_dir: str | os.PathLike,
    config: AllegroConfig,
    params: Any,
    metadata: dict | None = None,
    *,
    ensemble_size: int = 1,
) -> Path:
    """Write config and parameters; the directory is replaced atomically.

    Args:
        model_dir: destination directory.
        config: the model config (with its statistics filled in).
        params: the parameters (a pytree of arrays).
        metadata: JSON-serialisable extras (e.g. epoch, validation metrics).
        ensemble_size: K > 1: ``params`` are K members stacked on a leading axis
            (:func:`allegro_jax.nn.ensemble.stack_members`).

    Returns:
        The directory.
    """
    model_dir = Path(model_dir)
    tmp = model_dir.with_name(model_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    params = jax.tree.map(np.asarray, params)
    doc = {"format": FORMAT, "model": config.to_dict(), "metadata": metadata or {}}
    if ensemble_size != 1:
        if ensemble_size < 1 or ensemble_size_of(params) != ensemble_size:
            raise ValueError(f"params are not a stacked ensemble of {ensemble_size} members")
        doc["ensemble_size"] = int(ensemble_size)
    (tmp / CONFIG_FILE).write_text(json.dumps(doc, indent=2))
    (tmp / PARAMS_FILE).write_bytes(serialization.to_bytes(params))
    old = model_dir.with_name(model_dir.name + ".old")
    if model_dir.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(model_dir, old)
    os.replace(tmp, model_dir)
    if old.exists():
        shutil.rmtree(old)
    return model_dir


def find_model_dir(path: str | os.PathLike) -> Path:
    """The model directory of ``path``: ``path`` itself or ``path/model`` (a run directory)."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if (candidate / CONFIG_FILE).is_file() and (candidate / PARAMS_FILE).is_file():
            return candidate
    raise FileNotFoundError(
        f"no trained model in {str(path)!r}: expected {CONFIG_FILE} and {PARAMS_FILE} there or "
        f"in {str(path / 'model')!r}"
    )


def _read_doc(path: str | os.PathLike) -> dict:
    model_dir = find_model_dir(path)
    doc = json.loads((model_dir / CONFIG_FILE).read_text())
    if doc.get("format") != FORMAT:
        raise ValueError(f"{model_dir / CONFIG_FILE}: unknown model format {doc.get('format')!r}")
    return doc


def read_model_config(path: str | os.PathLike) -> AllegroConfig:
    """The model config of a run or model directory (without loading the parameters)."""
    return AllegroConfig.from_dict(_read_doc(path)["model"])


def read_ensemble_size(path: str | os.PathLike) -> int:
    """1 for a single model, K for an ensemble of K (without loading the parameters)."""
    return int(_read_doc(path).get("ensemble_size", 1))


def load_model(
    path: str | os.PathLike,
) -> tuple[AllegroConfig, Any, Callable[..., Any]]:
    """Load a trained model into an energy/forces function.

    Args:
        path: a run directory or a model directory (see the module docstring).

    Returns:
        ``(config, params, energy_forces_fn)``. ``energy_forces_fn(x, stress=False)`` takes
        an :class:`AtomicGraph` (returns the model's output dict, jitted), one
        :class:`Structure` or ``ase.Atoms`` (returns ``{"energy": float, "forces":
        [n_atoms, 3], "stress": [3, 3]}`` as numpy, eV, eV/Å, eV/Å^3), or a list of them
        (a list of such dicts, computed in one batch). A float64 model needs
        ``jax.config.update("jax_enable_x64", True)`` first.

        For an ensemble (:func:`read_ensemble_size` > 1) ``params`` are stacked
        (leading member axis) and the function predicts the members' MEAN energy, forces
        (and stress), plus ``energy_std`` (eV), ``forces_std`` (``[n_atoms]``, the per-atom
        σ_i = sqrt(mean_k ‖F_ik − F̄_i‖²) in eV/Å), ``member_energy`` ``[K]`` and
        ``member_forces`` ``[K, n_atoms, 3]``; for an :class:`AtomicGraph` it returns the
        dict of :func:`allegro_jax.nn.ensemble.make_ensemble_apply_fn`.

    Raises:
        FileNotFoundError: no model there.
        ValueError: an unknown format or an unreadable parameter file.
    """
    model_dir = find_model_dir(path)
    config = read_model_config(model_dir)
    n_members = read_ensemble_size(model_dir)
    _, apply_fn = make_model(config)
    try:
        params = serialization.msgpack_restore((model_dir / PARAMS_FILE).read_bytes())
    except ValueError as err:
        raise ValueError(f"{model_dir / PARAMS_FILE} is not a parameter file: {err}") from err
    if n_members > 1:
        if ensemble_size_of(params) != n_members:
            raise ValueError(
                f"{model_dir / PARAMS_FILE} does not hold {n_members} stacked ensemble members"
            )
        apply_fn = make_ensemble_apply_fn(apply_fn)
    apply = jit_apply(apply_fn)
    np_dtype = config.dtype
    # large graphs a block of atoms at a time
    planner = ChunkPlanner(config=config, members=n_members)

    def energy_forces_fn(x: Any, stress: bool = False) -> Any:
        if isinstance(x, AtomicGraph):
            chunks = planner(x)
            return apply(params, ready_on_device(x), forces=True, stress=stress, chunks=chunks)
        single = not isinstance(x, Sequence)
        items = [x] if single else list(x)
        structures = [s if isinstance(s, Structure) else Structure.from_ase(s) for s in items]
        graph = build_graph(structures, config.type_names, config.r_max, dtype=np_dtype)
        chunks = planner(graph)
        graph = ready_on_device(graph)  # run on this thread (allegro_jax._malloc)
        out = apply(params, graph, forces=True, stress=stress, chunks=chunks)
        out = jax.tree.map(np.asarray, out)
        results, start = [], 0
        for g, s in enumerate(structures):
            r = {
                "energy": float(out["energy"][g]),
                "forces": out["forces"][start : start + s.n_atoms],
            }
            if stress:
                r["stress"] = out["stress"][g]
            if n_members > 1:
                r["energy_std"] = float(out["energy_std"][g])
                r["forces_std"] = out["forces_std"][start : start + s.n_atoms]
                r["member_energy"] = out["member_energy"][:, g]
                r["member_forces"] = out["member_forces"][:, start : start + s.n_atoms]
            results.append(r)
            start += s.n_atoms
        return results[0] if single else results

    return config, params, energy_forces_fn
