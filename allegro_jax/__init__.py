"""allegro-jax: the Allegro interatomic potential in JAX."""

from ._version import __version__ as __version__
from .config import AllegroConfig
from .data.graph import AtomicGraph, Structure
from .nn.model import make_model

__all__ = ["AllegroCalculator", "AllegroConfig", "AtomicGraph", "Structure", "make_model"]


def __getattr__(name: str):
    # lazy: the ASE calculator pulls in jax-md (seconds of imports), which e.g. every MPI
    # rank of `allegro-jax lammps` does not need
    if name == "AllegroCalculator":
        from .md.ase_calculator import AllegroCalculator

        return AllegroCalculator
    raise AttributeError(f"module 'allegro_jax' has no attribute {name!r}")
