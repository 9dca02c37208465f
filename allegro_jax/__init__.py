"""allegro-jax: the Allegro interatomic potential in JAX."""

from .config import AllegroConfig
from .data.graph import AtomicGraph, Structure
from .md.ase_calculator import AllegroCalculator
from .nn.model import make_model

__version__ = "0.1.0.dev0"
__all__ = ["AllegroCalculator", "AllegroConfig", "AtomicGraph", "Structure", "make_model"]
