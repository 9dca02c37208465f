"""Velocity-Verlet NVE on one system sharded over devices (:mod:`.spatial`).

``make_sharded_nve(config, params, mesh, ...) -> (init_fn, apply_fn)``:

* ``init_fn(structure, velocities=None) -> ShardedMDState`` (Å, Å/fs); it also fixes the
  system (atomic numbers, cell, pbc) that ``apply_fn`` integrates;
* ``apply_fn(state, n_steps) -> (state, log)`` with ``log`` a dict of ``[n_steps]`` arrays
  (``step``, ``potential_energy``, ``kinetic_energy``, ``total_energy``, ``temperature_K``).

Units as in :mod:`allegro_jax.md.integrate`: eV, Å, amu, internal time ``t₀ ≈ 10.18 fs``.
The step is the same velocity Verlet as jax-md's ``simulate.nve``:
``p ← p + ½ dt F; x ← x + dt p / m; F ← F(x); p ← p + ½ dt F``. Positions are Cartesian and
never wrapped (periodic images are carried by the partition's integer shifts). It is written
out rather than taken from ``simulate.nve`` because each step needs the energy and the forces
of ONE sharded evaluation (one ``psum``; jax-md's step asks for forces only, so the logged
energy would cost a second evaluation) and must be undone when the new positions leave the
partition's skin (checked between the drift and the force call); the multi-device check
compares its trajectory with :func:`allegro_jax.md.integrate.make_simulation`'s (jax-md).

Partition lifetime (Verlet skin): a partition built with cutoff ``r_max + skin`` at
positions ``x₀`` contains every pair closer than ``r_max`` while ``2 max_i |x_i - x₀_i| <
skin``. The jitted chunk checks this after every position update; the first step that
violates it and all later steps of the chunk are not applied (the state is frozen), and
the host re-partitions at the last valid state and continues, so no result ever comes from
an incomplete neighbour list. The host also re-partitions ahead of time when the next chunk
would probably cross the limit. Local budgets only grow, so a new partition recompiles the
chunk only when a shard outgrows them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from allegro_jax.config import AllegroConfig
from allegro_jax.data.graph import Structure
from allegro_jax.md import units
from allegro_jax.md.integrate import default_masses
from allegro_jax.nn.xla_options import compiler_options
from allegro_jax.sharding import AXIS, mesh_size, replicate

from .spatial import (
    ShardArrays,
    SpatialPartition,
    make_sharded_energy_fn,
    partition_structure,
    place_partition,
)

Params = Any


@dataclasses.dataclass
class ShardedMDState:
    """State of a sharded NVE run (host object holding device arrays).

    Attributes:
        positions: ``[n_atoms, 3]`` Cartesian positions in Å (replicated).
        momenta: ``[n_atoms, 3]`` in amu·Å/t₀ (replicated).
        forces: ``[n_atoms, 3]`` eV/Å at ``positions``.
        potential_energy: eV at ``positions``.
        step: steps done.
        partition: the current :class:`SpatialPartition` (host).
        arrays: its device arrays.
        n_builds: partitions built so far (1 after ``init_fn``).
    """

    positions: jax.Array
    momenta: jax.Array
    forces: jax.Array
    potential_energy: jax.Array
    step: int
    partition: SpatialPartition
    arrays: ShardArrays
    n_builds: int = 1


def make_sharded_nve(
    config: AllegroConfig,
    params: Params,
    mesh: Mesh,
    *,
    timestep_fs: float = 0.5,
    masses_amu: np.ndarray | None = None,
    skin: float = 1.0,
    chunk_steps: int = 10,
    axis_name: str = AXIS,
) -> tuple[Callable[..., ShardedMDState], Callable[..., tuple[ShardedMDState, dict]]]:
    """NVE (velocity Verlet) on a system sharded over ``mesh``; see the module docstring.

    Args:
        config: the model configuration.
        params: the model parameters.
        mesh: the device mesh.
        timestep_fs: timestep in fs.
        masses_amu: ``[n_atoms]`` masses (default: standard atomic masses of the types).
        skin: Verlet skin in Å (> 0).
        chunk_steps: steps per jitted chunk (one compilation).
        axis_name: the mesh axis.

    Returns:
        ``(init_fn, apply_fn)``.
    """
    if not timestep_fs > 0:
        raise ValueError(f"timestep_fs must be > 0, got {timestep_fs}")
    if not skin > 0:
        raise ValueError(f"skin must be > 0 for MD (the partition must outlive a step), got {skin}")
    if isinstance(chunk_steps, bool) or not isinstance(chunk_steps, int) or chunk_steps < 1:
        raise ValueError(f"chunk_steps must be a positive int, got {chunk_steps!r}")
    n_shards = mesh_size(mesh, axis_name)
    dtype = config.dtype
    energy_fn = make_sharded_energy_fn(config, mesh, axis_name=axis_name)
    params = replicate(jax.tree.map(jnp.asarray, params), mesh)
    dt = units.fs_to_internal(timestep_fs)
    skin = float(skin)
    template: dict[str, Any] = {}

    def build(positions: np.ndarray, previous: SpatialPartition | None) -> SpatialPartition:
        s = template["structure"]
        moved = Structure(numbers=s.numbers, positions=positions, cell=s.cell, pbc=s.pbc)
        return partition_structure(
            moved,
            config.type_names,
            config.r_max,
            n_shards,
            skin=skin,
            min_budget=None if previous is None else previous.local_budget,
            dtype=dtype,
        )

    def chunk(x, p, f, e, ref, cell, mass, arrays, limit):
        inv_m = 1.0 / mass[:, None]  # [n_atoms, 1]

        def step(carry, i):
            x, p, f, e, ok, d_max = carry
            p_half = p + 0.5 * dt * f
            x_new = x + dt * p_half * inv_m
            valid = ok & (i < limit)
            valid &= 2.0 * jnp.sqrt(jnp.max(jnp.sum((x_new - ref) ** 2, -1))) < skin
            out = energy_fn(params, x_new, cell, arrays)
            p_new = p_half + 0.5 * dt * out["forces"]
            d = jnp.sqrt(jnp.max(jnp.sum((x_new - x) ** 2, -1)))
            keep = lambda new, old: jnp.where(valid, new, old)  # noqa: E731
            carry = (
                keep(x_new, x),
                keep(p_new, p),
                keep(out["forces"], f),
                keep(out["energy"], e),
                valid,
                keep(jnp.maximum(d_max, d), d_max),
            )
            ke = 0.5 * jnp.sum(carry[1] ** 2 * inv_m)
            return carry, (valid, carry[3], ke)

        init = (x, p, f, e, jnp.asarray(True), jnp.zeros((), x.dtype))
        (x, p, f, e, _, d_max), (valid, e_pot, ke) = jax.lax.scan(
            step, init, jnp.arange(chunk_steps)
        )
        m_end = jnp.sqrt(jnp.max(jnp.sum((x - ref) ** 2, -1)))
        return (x, p, f, e), (valid, e_pot, ke), (m_end, d_max)

    chunk_fn = jax.jit(chunk, compiler_options=compiler_options())

    def init_fn(structure: Structure, velocities: np.ndarray | None = None) -> ShardedMDState:
        """Initial state from a structure and optional velocities in Å/fs."""
        template["structure"] = structure
        partition = build(structure.positions, None)
        masses = (
            default_masses(config, partition.species)
            if masses_amu is None
            else np.asarray(masses_amu, dtype=np.float64)
        )
        if masses.shape != (partition.n_atoms,) or not np.all(masses > 0):
            raise ValueError(f"masses_amu must be [{partition.n_atoms}] positive numbers")
        template["mass"] = replicate(masses.astype(dtype), mesh)
        template["cell"] = replicate(partition.cell.astype(dtype), mesh)
        template["n_atoms"] = partition.n_atoms
        v = np.zeros((partition.n_atoms, 3)) if velocities is None else np.asarray(velocities)
        if v.shape != (partition.n_atoms, 3):
            raise ValueError(f"velocities must be [{partition.n_atoms}, 3], got {v.shape}")
        momenta = v * units.TIME_UNIT_FS * masses[:, None]
        arrays = place_partition(partition, mesh, axis_name)
        x = replicate(partition.positions.astype(dtype), mesh)
        out = energy_fn(params, x, template["cell"], arrays)
        return ShardedMDState(
            positions=x,
            momenta=replicate(momenta.astype(dtype), mesh),
            forces=out["forces"],
            potential_energy=out["energy"],
            step=0,
            partition=partition,
            arrays=arrays,
        )

    def rebuilt(state: ShardedMDState) -> ShardedMDState:
        partition = build(np.asarray(state.positions, dtype=np.float64), state.partition)
        return dataclasses.replace(
            state,
            partition=partition,
            arrays=place_partition(partition, mesh, axis_name),
            n_builds=state.n_builds + 1,
        )

    def apply_fn(state: ShardedMDState, n_steps: int) -> tuple[ShardedMDState, dict]:
        """Run ``n_steps`` steps; returns the new state and a per-step log."""
        if "structure" not in template:
            raise RuntimeError("call init_fn before apply_fn")
        logs: list[tuple[np.ndarray, np.ndarray]] = []
        remaining = int(n_steps)
        fresh = False  # the partition was built at the current positions
        while remaining > 0:
            limit = min(chunk_steps, remaining)
            ref = replicate(state.partition.positions.astype(dtype), mesh)
            (x, p, f, e), (valid, e_pot, ke), (m_end, d_max) = chunk_fn(
                state.positions,
                state.momenta,
                state.forces,
                state.potential_energy,
                ref,
                template["cell"],
                template["mass"],
                state.arrays,
                jnp.asarray(limit),
            )
            k = int(np.sum(np.asarray(valid)))
            if k == 0:
                if fresh:
                    raise RuntimeError(
                        f"an atom moved more than skin/2 = {skin / 2} Å in one step at step "
                        f"{state.step}: increase skin or decrease timestep_fs"
                    )
                state, fresh = rebuilt(state), True
                continue
            state = dataclasses.replace(
                state, positions=x, momenta=p, forces=f, potential_energy=e, step=state.step + k
            )
            logs.append((np.asarray(e_pot)[:k], np.asarray(ke)[:k]))
            remaining -= k
            fresh = False
            m, d = float(m_end), float(d_max)
            if remaining > 0 and (k < limit or 2.0 * (m + chunk_steps * d) >= skin):
                state, fresh = rebuilt(state), True
        e_pot = np.concatenate([lg[0] for lg in logs]) if logs else np.zeros(0)
        ke = np.concatenate([lg[1] for lg in logs]) if logs else np.zeros(0)
        n_atoms = template["n_atoms"]
        log = {
            "step": np.arange(state.step - e_pot.size + 1, state.step + 1),
            "potential_energy": e_pot,
            "kinetic_energy": ke,
            "total_energy": e_pot + ke,
            "temperature_K": 2.0 * ke / (3 * n_atoms * units.KB_EV_PER_K),
        }
        return state, log

    return init_fn, apply_fn
