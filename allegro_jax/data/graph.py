"""Atomic graphs: the host-side structure and the padded device-side pytree.

Conventions (shared with nequip):
  * an edge ``e`` runs from its centre atom ``i = edge_center[e]`` to its neighbour
    ``j = edge_neighbor[e]``;
  * its vector is ``r_ij = pos[j] - pos[i] + edge_shift[e] @ cell[graph_of(i)]``, with the
    cell's rows being the lattice vectors (ASE convention) and ``edge_shift`` the integer
    image offset stored as floats;
  * every ordered pair within ``r_max`` appears (both directions).

Padding follows jraph: a batch has a static budget of nodes, edges and graphs. Padding
nodes belong to the last graph (a padding graph, ``graph_mask`` False); padding edges join
the last padding node to itself with a zero shift and carry ``edge_mask`` False.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import ase
import jax
import numpy as np

from allegro_jax.data.validate import as_atomic_numbers


@dataclasses.dataclass
class Structure:
    """One atomic configuration on the host, in Å, eV and eV/Å.

    Attributes:
        numbers: atomic numbers, ``[n_atoms]`` int.
        positions: Cartesian positions, ``[n_atoms, 3]``.
        cell: lattice vectors as rows, ``[3, 3]`` (zeros for a molecule in vacuum).
        pbc: periodicity along each lattice vector, ``[3]`` bool.
        energy: total energy (optional label).
        forces: ``[n_atoms, 3]`` (optional label).
        stress: ``[3, 3]`` in eV/Å^3, ``(1/V) dE/dε`` sign convention (optional label).
        info: free-form metadata (e.g. the source frame index).
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((3, 3)))
    pbc: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3, dtype=bool))
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    info: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.numbers = as_atomic_numbers(self.numbers)  # refuses fractional numbers
        self.positions = np.asarray(self.positions, dtype=np.float64)
        self.cell = np.asarray(self.cell, dtype=np.float64)
        self.pbc = np.broadcast_to(np.asarray(self.pbc, dtype=bool), (3,)).copy()
        if self.forces is not None:
            self.forces = np.asarray(self.forces, dtype=np.float64)
        if self.stress is not None:
            self.stress = np.asarray(self.stress, dtype=np.float64)

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @classmethod
    def from_ase(cls, atoms, energy=None, forces=None, stress=None) -> Structure:
        """Build from an ``ase.Atoms`` (labels are taken from the arguments only)."""
        return cls(
            numbers=atoms.get_atomic_numbers(),
            positions=atoms.get_positions(),
            cell=np.asarray(atoms.get_cell()),
            pbc=atoms.get_pbc(),
            energy=energy,
            forces=forces,
            stress=stress,
        )

    def to_ase(self):
        return ase.Atoms(
            numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc
        )


class AtomicGraph(NamedTuple):
    """A padded batch of atomic graphs (a JAX pytree).

    Shapes use ``n_nodes``, ``n_edges``, ``n_graphs`` for the static budgets.
    """

    positions: jax.Array  # [n_nodes, 3]
    species: jax.Array  # [n_nodes] int32, model type index (0 for padding)
    node_graph: jax.Array  # [n_nodes] int32, graph index of each node
    node_mask: jax.Array  # [n_nodes] bool
    edge_center: jax.Array  # [n_edges] int32, i
    edge_neighbor: jax.Array  # [n_edges] int32, j
    edge_shift: jax.Array  # [n_edges, 3] float, integer image offsets
    edge_mask: jax.Array  # [n_edges] bool
    cell: jax.Array  # [n_graphs, 3, 3]
    pbc: jax.Array  # [n_graphs, 3] bool
    n_node: jax.Array  # [n_graphs] int32, real nodes per graph
    graph_mask: jax.Array  # [n_graphs] bool

    @property
    def n_nodes(self) -> int:
        return self.positions.shape[0]

    @property
    def n_edges(self) -> int:
        return self.edge_center.shape[0]

    @property
    def n_graphs(self) -> int:
        return self.cell.shape[0]
