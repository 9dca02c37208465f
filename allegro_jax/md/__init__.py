"""Molecular dynamics: jax-md energy functions, integrators, ASE calculator, gradients,
trajectory analysis.

The names below are imported on first use: importing jax-md takes seconds (it compiles on
import), which ``allegro-jax train``/``evaluate`` (whose CLI registers the ``md`` command
through :mod:`allegro_jax.md.cli`) should not pay.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "AllegroCalculator": "ase_calculator",
    "box_from_cell": "jax_md",
    "diffusion_coefficient": "analysis",
    "make_atomic_energy_fn": "jax_md",
    "make_energy_fn": "jax_md",
    "make_neighbor_fn": "jax_md",
    "make_nve_trajectory_fn": "differentiable",
    "make_rdf_bin_fn": "differentiable",
    "make_simulation": "integrate",
    "make_stress_fn": "jax_md",
    "make_system": "integrate",
    "MDState": "integrate",
    "mean_potential_energy": "differentiable",
    "mean_squared_displacement": "analysis",
    "observable_and_grad": "differentiable",
    "positions_angstrom": "integrate",
    "rdf": "analysis",
    "remove_center_of_mass_drift": "analysis",
    "state_from_arrays": "integrate",
    "state_to_arrays": "integrate",
    "Thermo": "integrate",
    "Trajectory": "differentiable",
    "unwrap": "analysis",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
