"""Molecular dynamics: jax-md energy functions, integrators, ASE calculator, gradients,
trajectory analysis."""

from .analysis import (
    diffusion_coefficient,
    mean_squared_displacement,
    rdf,
    remove_center_of_mass_drift,
    unwrap,
)
from .ase_calculator import AllegroCalculator
from .differentiable import (
    Trajectory,
    make_nve_trajectory_fn,
    make_rdf_bin_fn,
    mean_potential_energy,
    observable_and_grad,
)
from .integrate import (
    MDState,
    Thermo,
    make_simulation,
    make_system,
    positions_angstrom,
    state_from_arrays,
    state_to_arrays,
)
from .jax_md import (
    box_from_cell,
    make_atomic_energy_fn,
    make_energy_fn,
    make_neighbor_fn,
    make_stress_fn,
)

__all__ = [
    "AllegroCalculator",
    "MDState",
    "Thermo",
    "Trajectory",
    "box_from_cell",
    "diffusion_coefficient",
    "make_atomic_energy_fn",
    "make_energy_fn",
    "make_neighbor_fn",
    "make_nve_trajectory_fn",
    "make_rdf_bin_fn",
    "make_simulation",
    "make_stress_fn",
    "make_system",
    "mean_potential_energy",
    "mean_squared_displacement",
    "observable_and_grad",
    "positions_angstrom",
    "rdf",
    "remove_center_of_mass_drift",
    "state_from_arrays",
    "state_to_arrays",
    "unwrap",
]
