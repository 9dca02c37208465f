"""Neural-network pieces of Allegro: cutoff, bases, MLPs, tensor products, models."""

from .allegro import AllegroCurrent
from .allegro_paper import AllegroPaper
from .cutoff import polynomial_cutoff
from .model import build_module, edge_vectors, make_model
from .radial import bessel_basis, paper_bessel_basis

__all__ = [
    "AllegroCurrent",
    "AllegroPaper",
    "bessel_basis",
    "build_module",
    "edge_vectors",
    "make_model",
    "paper_bessel_basis",
    "polynomial_cutoff",
]
