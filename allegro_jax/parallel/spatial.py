"""One large system sharded across devices: spatial domains with halo atoms.

Allegro is strictly local: the energy is a sum of per-atom energies, ``E = Σ_i E_i``, and
``E_i`` depends only on the edges ``i → j`` with ``|r_ij| < r_max`` of its centre atom (there
is no message passing between atoms; Musaelian et al. 2023, Eqs. 1-2). So each device can
compute the ``E_i`` of the atoms it OWNS from their edges alone:

* **Ownership** (host): recursive coordinate bisection: the atoms are split at the median
  (or the ``k/n`` quantile for an odd number of devices) of the coordinate with the
  largest extent, recursively, giving ``n_devices`` compact boxes (slabs for two devices)
  with equal atom counts. Periodic directions use wrapped fractional coordinates,
  non-periodic ones Cartesian coordinates.
* **Halo** (host): a device's local nodes are its owned atoms followed by the halo: every
  neighbour within ``r_max`` (plus the MD skin) of an owned atom that another device owns.
  Halo atoms contribute only their species and positions; their own energies are masked
  (``node_mask`` False). Each edge is kept by exactly one device (its centre's owner) and
  keeps its global atom indices and integer image shift, so periodic images need no copies.
* **Device side**: positions ``[n_atoms, 3]`` and the cell are replicated; every device
  forms its edge vectors ``r_ij = x_j - x_i + S_ij · cell``, runs the model on its
  sub-graph and differentiates its partial energy with respect to its edge vectors,
  ``g_e = ∂E_d/∂r_e``. Forces and virial follow from the edge derivatives:

      F_k = -Σ_d Σ_e g_e (δ_{k j(e)} - δ_{k i(e)}),        W = -Σ_d Σ_e sym(r_e ⊗ g_e),

  scattered on the global atom index space and summed over devices with ``psum``. So the
  derivatives with respect to halo copies go back to their owners, and energy, forces and
  virial equal the unsharded ones up to the order of floating-point additions.

Positions replicated means one all-reduce of ``3 n_atoms`` numbers per force call, which is
small next to the model's per-edge work at moderate sizes; the per-device model work is that
of its sub-graph. Its limits (see :mod:`allegro_jax.parallel`): every device stores all
positions and an all-atom force array, the all-reduce and the host-side partitioning grow
with the whole system rather than with a domain, so this path does not reach the system
sizes of a LAMMPS domain decomposition (:mod:`allegro_jax.lammps`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from allegro_jax.config import AllegroConfig
from allegro_jax.data.graph import Structure
from allegro_jax.data.neighborlist import Backend, _search_frame
from allegro_jax.data.padding import DEFAULT_STEPS_PER_OCTAVE, bucket, graph_inputs_from_structure
from allegro_jax.nn.model import build_module
from allegro_jax.sharding import (
    AXIS,
    P,
    mesh_size,
    replicate,
    shard_leading,
    shard_map,
    squeeze_leading,
)

Params = Any


class ShardArrays(NamedTuple):
    """Per-device sub-graphs, stacked: every leaf is ``[n_shards, ...]`` (a pytree).

    Local node ``k`` of shard ``d`` is global atom ``node_global[d, k]``; owned atoms come
    first, then halo atoms, then padding nodes.
    """

    species: np.ndarray  # [n_shards, n_local] int32 type index (0 for padding)
    node_mask: np.ndarray  # [n_shards, n_local] bool, True for OWNED atoms only
    node_global: np.ndarray  # [n_shards, n_local] int32 global index (0 for padding)
    edge_center: np.ndarray  # [n_shards, n_edges] int32 local i
    edge_neighbor: np.ndarray  # [n_shards, n_edges] int32 local j
    edge_center_global: np.ndarray  # [n_shards, n_edges] int32 global i (0 for padding)
    edge_neighbor_global: np.ndarray  # [n_shards, n_edges] int32 global j (0 for padding)
    edge_shift: np.ndarray  # [n_shards, n_edges, 3] float integer image shifts
    edge_mask: np.ndarray  # [n_shards, n_edges] bool


@dataclasses.dataclass(frozen=True, eq=False)
class SpatialPartition:
    """A system split into ``n_shards`` spatial domains with halos (host, numpy).

    Attributes:
        arrays: the stacked per-device sub-graphs.
        owner: ``[n_atoms]`` the shard owning each atom.
        n_owned: ``[n_shards]`` owned atoms per shard.
        n_halo: ``[n_shards]`` halo atoms per shard.
        n_edges: ``[n_shards]`` real edges per shard.
        cutoff: the neighbour-list cutoff (``r_max + skin``).
        skin: the Verlet skin; the partition stays exact while every atom is within
            ``skin / 2`` of ``positions``.
        positions: ``[n_atoms, 3]`` float64 positions the partition was built at.
        cell: ``[3, 3]`` lattice vectors (rows).
        pbc: ``[3]`` periodicity.
        species: ``[n_atoms]`` type indices.
    """

    arrays: ShardArrays
    owner: np.ndarray
    n_owned: np.ndarray
    n_halo: np.ndarray
    n_edges: np.ndarray
    cutoff: float
    skin: float
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    species: np.ndarray

    @property
    def n_shards(self) -> int:
        return int(self.n_owned.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.owner.shape[0])

    @property
    def local_budget(self) -> tuple[int, int]:
        """Static ``(n_local_nodes, n_local_edges)`` of every shard (padding included)."""
        return int(self.arrays.species.shape[1]), int(self.arrays.edge_center.shape[1])

    def summary(self) -> dict[str, Any]:
        """Load balance: owned and halo atoms and edges per shard, padding overhead."""
        n_nodes, n_edges = self.local_budget
        return {
            "n_shards": self.n_shards,
            "n_atoms": self.n_atoms,
            "owned": self.n_owned.tolist(),
            "halo": self.n_halo.tolist(),
            "edges": self.n_edges.tolist(),
            "local_node_budget": n_nodes,
            "local_edge_budget": n_edges,
            "edge_imbalance": float(self.n_edges.max() / max(self.n_edges.mean(), 1e-300)),
        }


def bisection_owners(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, n_shards: int
) -> np.ndarray:
    """Owner of each atom by recursive coordinate bisection (equal atom counts).

    Args:
        positions: ``[n_atoms, 3]`` Cartesian positions.
        cell: ``[3, 3]`` lattice vectors (rows; anything along non-periodic directions).
        pbc: ``[3]`` periodicity.
        n_shards: number of domains (>= 1).

    Returns:
        ``[n_atoms]`` int64 shard indices; shard sizes differ by at most one when
        ``n_shards`` is a power of two (at most ``log2`` rounding steps otherwise).
    """
    if isinstance(n_shards, bool) or not isinstance(n_shards, int | np.integer) or n_shards < 1:
        raise ValueError(f"n_shards must be a positive int, got {n_shards!r}")
    positions = np.asarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    n_atoms = positions.shape[0]
    owner = np.zeros(n_atoms, dtype=np.int64)
    if n_atoms == 0 or n_shards == 1:
        return owner
    pos, box = _search_frame(positions, np.asarray(cell, dtype=np.float64), pbc, 1.0)
    frac = pos @ np.linalg.inv(box)  # [n_atoms, 3]
    frac[:, pbc] -= np.floor(frac[:, pbc])
    volume = abs(np.linalg.det(box))
    widths = volume / np.linalg.norm(np.cross(box[[1, 2, 0]], box[[2, 0, 1]]), axis=1)  # [3]

    def split(index: np.ndarray, first: int, parts: int) -> None:
        if parts == 1 or index.size == 0:
            owner[index] = first
            return
        left = parts // 2
        coords = frac[index]  # [n, 3]
        extent = (coords.max(axis=0) - coords.min(axis=0)) * widths
        axis = int(np.argmax(extent))
        order = index[np.argsort(coords[:, axis], kind="stable")]
        n_left = int(round(index.size * left / parts))
        split(order[:n_left], first, left)
        split(order[n_left:], first + left, parts - left)

    split(np.arange(n_atoms), 0, int(n_shards))
    return owner


def partition_structure(
    structure: Structure,
    type_names: Sequence[str],
    r_max: float,
    n_shards: int,
    *,
    skin: float = 0.0,
    min_budget: tuple[int, int] | None = None,
    steps_per_octave: int = DEFAULT_STEPS_PER_OCTAVE,
    dtype: Any = np.float64,
    backend: Backend = "vesin",
    min_distance: float | None = 1e-6,
) -> SpatialPartition:
    """Split a structure into ``n_shards`` spatial domains with halo atoms (host side).

    Args:
        structure: the system (periodic, mixed or free).
        type_names: the model's type names.
        r_max: the model's cutoff in Å.
        n_shards: number of devices.
        skin: extra neighbour-list distance (Å) so that the partition stays exact while
            atoms move less than ``skin / 2`` (edges beyond ``r_max`` are masked on device).
        min_budget: smallest ``(n_local_nodes, n_local_edges)`` (to keep a shape compiled
            for an earlier partition).
        steps_per_octave: rounding ladder of the local budgets (see
            :func:`allegro_jax.data.padding.bucket`); 0 keeps exact sizes.
        dtype: float dtype of the image shifts.
        backend: neighbour-list backend.
        min_distance: coincident-atom threshold in Å.

    Returns:
        The :class:`SpatialPartition`.

    Raises:
        ValueError: on an invalid structure (see :mod:`allegro_jax.data.validate`) or
            arguments.
    """
    if not skin >= 0:
        raise ValueError(f"skin must be >= 0, got {skin}")
    cutoff = float(r_max) + float(skin)
    inputs = graph_inputs_from_structure(
        structure, type_names, cutoff, backend=backend, min_distance=min_distance
    )
    owner = bisection_owners(inputs.positions, inputs.cell, inputs.pbc, n_shards)
    centers, neighbors = inputs.centers, inputs.neighbors
    n_atoms = inputs.n_atoms

    per_shard = []
    edge_owner = owner[centers]  # [n_edges]
    order = np.argsort(edge_owner, kind="stable")
    bounds = np.searchsorted(edge_owner[order], np.arange(n_shards + 1))
    local_of = np.full(n_atoms, -1, dtype=np.int64)
    for d in range(n_shards):
        owned = np.flatnonzero(owner == d)  # [n_owned]
        edges = order[bounds[d] : bounds[d + 1]]  # [n_edges_d], still sorted by centre
        halo = np.setdiff1d(np.unique(neighbors[edges]), owned, assume_unique=True)
        nodes = np.concatenate([owned, halo])
        local_of[nodes] = np.arange(nodes.size)
        per_shard.append(
            (owned.size, nodes, edges, local_of[centers[edges]], local_of[neighbors[edges]])
        )
        local_of[nodes] = -1

    def size(value: int, minimum: int) -> int:
        value = max(value, minimum)
        return bucket(value, steps_per_octave=steps_per_octave) if steps_per_octave else value

    min_nodes, min_edges = min_budget or (1, 1)
    n_local = size(max(len(s[1]) for s in per_shard) + 1, min_nodes)  # + 1 padding node
    n_local_edges = size(max(max(len(s[2]) for s in per_shard), 1), min_edges)

    arrays = ShardArrays(
        species=np.zeros((n_shards, n_local), np.int32),
        node_mask=np.zeros((n_shards, n_local), bool),
        node_global=np.zeros((n_shards, n_local), np.int32),
        edge_center=np.full((n_shards, n_local_edges), n_local - 1, np.int32),
        edge_neighbor=np.full((n_shards, n_local_edges), n_local - 1, np.int32),
        edge_center_global=np.zeros((n_shards, n_local_edges), np.int32),
        edge_neighbor_global=np.zeros((n_shards, n_local_edges), np.int32),
        edge_shift=np.zeros((n_shards, n_local_edges, 3), np.dtype(dtype)),
        edge_mask=np.zeros((n_shards, n_local_edges), bool),
    )
    for d, (n_own, nodes, edges, lc, ln) in enumerate(per_shard):
        k, e = nodes.size, edges.size
        arrays.species[d, :k] = inputs.species[nodes]
        arrays.node_mask[d, :n_own] = True
        arrays.node_global[d, :k] = nodes
        arrays.edge_center[d, :e] = lc
        arrays.edge_neighbor[d, :e] = ln
        arrays.edge_center_global[d, :e] = centers[edges]
        arrays.edge_neighbor_global[d, :e] = neighbors[edges]
        arrays.edge_shift[d, :e] = inputs.shifts[edges]
        arrays.edge_mask[d, :e] = True
    return SpatialPartition(
        arrays=arrays,
        owner=owner,
        n_owned=np.array([s[0] for s in per_shard]),
        n_halo=np.array([len(s[1]) - s[0] for s in per_shard]),
        n_edges=np.array([len(s[2]) for s in per_shard]),
        cutoff=cutoff,
        skin=float(skin),
        positions=inputs.positions.copy(),
        cell=inputs.cell.copy(),
        pbc=inputs.pbc.copy(),
        species=inputs.species.copy(),
    )


def make_sharded_energy_fn(
    config: AllegroConfig,
    mesh: Mesh,
    *,
    stress: bool = False,
    axis_name: str = AXIS,
) -> Callable[..., dict[str, jax.Array]]:
    """Energy, forces (and virial, stress) of one system split over the devices of ``mesh``.

    Returns the jitted ``fn(params, positions, cell, arrays) -> dict`` with

    * ``params`` replicated, ``positions`` ``[n_atoms, 3]`` (Å) and ``cell`` ``[3, 3]``
      replicated, ``arrays`` the :class:`ShardArrays` of a :class:`SpatialPartition` with
      ``n_shards`` equal to the mesh size, sharded along the leading axis
      (:func:`place_partition`);
    * outputs (replicated): ``energy`` (scalar), ``atomic_energies`` ``[n_atoms]``,
      ``forces`` ``[n_atoms, 3]`` and, with ``stress``, ``virial`` and ``stress``
      ``[3, 3]`` (``stress = -virial / V``, zero without a volume), the conventions of
      :func:`allegro_jax.nn.model.make_model`.

    Edges longer than ``r_max`` (from a skin) are masked, so the result is exact as long as
    every atom is within ``skin / 2`` of the positions the partition was built at.
    """
    module = build_module(config)
    r_max = config.r_max
    n_dev = mesh_size(mesh, axis_name)

    def local(params: Params, positions: jax.Array, cell: jax.Array, arrays: ShardArrays):
        a = squeeze_leading(arrays)
        n_atoms = positions.shape[0]
        dtype = positions.dtype
        shift = a.edge_shift.astype(dtype) @ cell.astype(dtype)  # [n_edges, 3]
        vec = positions[a.edge_neighbor_global] - positions[a.edge_center_global] + shift

        def partial_energy(vec: jax.Array) -> tuple[jax.Array, jax.Array]:
            mask = a.edge_mask & (jnp.sum(vec * vec, axis=-1) < r_max**2)  # [n_edges]
            e_atom = module.apply(
                {"params": params},
                vec,
                a.species,
                a.edge_center,
                a.edge_neighbor,
                mask,
                a.node_mask,
            )  # [n_local], zero for halo and padding nodes
            return jnp.sum(e_atom), e_atom

        (energy, e_atom), g = jax.value_and_grad(partial_energy, has_aux=True)(vec)
        g = g.astype(dtype)  # [n_edges, 3] = dE_d / dr_e
        de_dx = jax.ops.segment_sum(g, a.edge_neighbor_global, n_atoms) - jax.ops.segment_sum(
            g, a.edge_center_global, n_atoms
        )  # [n_atoms, 3]
        e_atoms = jax.ops.segment_sum(e_atom.astype(dtype), a.node_global, n_atoms)
        out = {
            "energy": jax.lax.psum(energy, axis_name),
            "atomic_energies": jax.lax.psum(e_atoms, axis_name),
            "forces": -jax.lax.psum(de_dx, axis_name),
        }
        if stress:
            de = jnp.einsum("ei,ej->ij", vec, g)  # dE/dε for r → r (I + ε)
            de = jax.lax.psum(0.5 * (de + de.T), axis_name)
            volume = jnp.abs(jnp.linalg.det(cell.astype(dtype)))
            out["virial"] = -de
            out["stress"] = jnp.where(volume > 0, de / jnp.where(volume > 0, volume, 1.0), 0.0)
        return out

    # unchecked: derivatives are taken per device and summed explicitly with psum
    sharded = shard_map(
        local, mesh, in_specs=(P(), P(), P(), P(axis_name)), out_specs=P(), check=False
    )

    @jax.jit
    def energy_fn(params: Params, positions: jax.Array, cell: jax.Array, arrays: ShardArrays):
        if arrays.species.shape[0] != n_dev:
            raise ValueError(
                f"the partition has {arrays.species.shape[0]} shards, the mesh {n_dev} devices"
            )
        return sharded(params, positions, cell, arrays)

    return energy_fn


def place_partition(partition: SpatialPartition, mesh: Mesh, axis_name: str = AXIS) -> ShardArrays:
    """The partition's arrays on the mesh, each device holding its own shard."""
    n_dev = mesh_size(mesh, axis_name)
    if partition.n_shards != n_dev:
        raise ValueError(
            f"the partition has {partition.n_shards} shards but the mesh has {n_dev} devices"
        )
    return shard_leading(partition.arrays, mesh, axis_name)


class ShardedSystem:
    """One system on a device mesh: ``system(positions=None) -> dict`` of numpy results.

    Builds a :class:`SpatialPartition` of ``structure`` over the mesh's devices and
    evaluates :func:`make_sharded_energy_fn`. New positions that move some atom more than
    ``skin / 2`` from the last build trigger a new partition (the local budgets only grow,
    so similar configurations reuse the compiled shape).

    Args:
        config: the model configuration.
        params: the model parameters.
        structure: the system (its numbers, cell and pbc are kept).
        mesh: the device mesh (:func:`allegro_jax.sharding.make_mesh`).
        stress: also compute virial and stress.
        skin: neighbour-list skin in Å.
        axis_name: the mesh axis.
    """

    def __init__(
        self,
        config: AllegroConfig,
        params: Params,
        structure: Structure,
        mesh: Mesh,
        *,
        stress: bool = True,
        skin: float = 0.0,
        axis_name: str = AXIS,
    ):
        self.config = config
        self.mesh = mesh
        self.axis_name = axis_name
        self.n_shards = mesh_size(mesh, axis_name)
        self.structure = structure
        self.skin = float(skin)
        self.dtype = config.dtype
        self.params = replicate(jax.tree.map(jnp.asarray, params), mesh)
        self.energy_fn = make_sharded_energy_fn(config, mesh, stress=stress, axis_name=axis_name)
        self.n_builds = 0
        self.partition: SpatialPartition | None = None
        self._arrays: ShardArrays | None = None
        self._rebuild(structure.positions)

    def _rebuild(self, positions: np.ndarray) -> None:
        s = self.structure
        moved = Structure(numbers=s.numbers, positions=positions, cell=s.cell, pbc=s.pbc)
        self.partition = partition_structure(
            moved,
            self.config.type_names,
            self.config.r_max,
            self.n_shards,
            skin=self.skin,
            min_budget=None if self.partition is None else self.partition.local_budget,
            dtype=self.dtype,
        )
        self._arrays = place_partition(self.partition, self.mesh, self.axis_name)
        self._cell = replicate(np.asarray(self.partition.cell, self.dtype), self.mesh)
        self.n_builds += 1

    def __call__(self, positions: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Energy (eV), atomic energies, forces (eV/Å) and stress/virial at ``positions``."""
        assert self.partition is not None
        pos = self.partition.positions if positions is None else np.asarray(positions, float)
        if pos.shape != self.partition.positions.shape:
            raise ValueError(
                f"positions must have shape {self.partition.positions.shape}, got {pos.shape}"
            )
        moved = np.sqrt(np.max(np.sum((pos - self.partition.positions) ** 2, axis=-1)))
        if 2.0 * moved >= self.skin and positions is not None and moved > 0:
            self._rebuild(pos)
        out = self.energy_fn(
            self.params, replicate(pos.astype(self.dtype), self.mesh), self._cell, self._arrays
        )
        return {k: np.asarray(v) for k, v in out.items()}
