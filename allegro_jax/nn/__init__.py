"""Neural-network pieces of Allegro: cutoff, bases, MLPs, tensor products, models."""

from .allegro import AllegroCurrent
from .allegro_paper import AllegroPaper
from .cutoff import polynomial_cutoff
from .model import AtomChunks, build_module, edge_vectors, make_model, plan_atom_chunks
from .radial import bessel_basis, paper_bessel_basis

__all__ = [
    "AllegroCurrent",
    "AllegroPaper",
    "AtomChunks",
    "bessel_basis",
    "build_module",
    "edge_vectors",
    "make_model",
    "paper_bessel_basis",
    "plan_atom_chunks",
    "polynomial_cutoff",
]
