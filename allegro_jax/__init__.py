"""allegro-jax: the Allegro interatomic potential in JAX.

The names a user needs, in one place:

* model: :class:`AllegroConfig`, :func:`make_model` (``(init_fn, apply_fn)``),
  :func:`plan_atom_chunks` (large systems a block of atoms at a time);
* structures and graphs: :class:`Structure`, :class:`AtomicGraph`, :func:`build_graph`;
* training: :class:`TrainConfig`, :func:`load_config`, :func:`train_and_evaluate`;
* trained models: :func:`load_model`, :func:`save_model`, :class:`AllegroCalculator`
  (ASE);
* MD (jax-md): :func:`make_system`, :func:`make_simulation`, :func:`make_energy_fn`,
  :func:`make_neighbor_fn`.

Importing ``allegro_jax`` imports the model and the graph code only; the training,
model-file, ASE-calculator and jax-md names are imported on first use (jax-md takes
seconds to import, which e.g. every MPI rank of ``allegro-jax lammps`` does not need).

On Linux, importing ``allegro_jax`` first sets glibc ``malloc`` so that XLA:CPU reuses its
temporaries between calls instead of faulting fresh pages in every time (up to 1.5x on
large training batches; ``allegro_jax._malloc``; ``ALLEGRO_JAX_TUNE_MALLOC=0`` to leave
``malloc`` alone). It acts only if JAX's CPU backend has not started yet.
"""

from __future__ import annotations

from ._malloc import ready_on_device as ready_on_device
from ._malloc import tune_malloc as _tune_malloc

_tune_malloc()  # before anything can start JAX's thread pools

import importlib  # noqa: E402
from typing import Any  # noqa: E402

from ._version import __version__ as __version__  # noqa: E402
from .config import AllegroConfig  # noqa: E402
from .data.graph import AtomicGraph, Structure  # noqa: E402
from .data.padding import build_graph  # noqa: E402
from .nn.model import AtomChunks, make_model, plan_atom_chunks  # noqa: E402

_LAZY = {
    "AllegroCalculator": "allegro_jax.md.ase_calculator",
    "TrainConfig": "allegro_jax.train.config",
    "load_config": "allegro_jax.train.config",
    "train_and_evaluate": "allegro_jax.train.loop",
    "load_model": "allegro_jax.io.model",
    "save_model": "allegro_jax.io.model",
    "make_system": "allegro_jax.md.integrate",
    "make_simulation": "allegro_jax.md.integrate",
    "make_energy_fn": "allegro_jax.md.jax_md",
    "make_neighbor_fn": "allegro_jax.md.jax_md",
}

__all__ = [
    "AllegroCalculator",
    "AllegroConfig",
    "AtomChunks",
    "AtomicGraph",
    "Structure",
    "TrainConfig",
    "build_graph",
    "load_config",
    "load_model",
    "make_energy_fn",
    "make_model",
    "make_neighbor_fn",
    "make_simulation",
    "make_system",
    "plan_atom_chunks",
    "ready_on_device",
    "save_model",
    "train_and_evaluate",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'allegro_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
