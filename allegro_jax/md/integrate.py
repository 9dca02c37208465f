"""Molecular dynamics with Allegro on jax-md: NVE, NVT (Langevin, Nosé–Hoover chain), NPT.

``make_simulation(config, params, species, ...) -> (init_fn, apply_fn)``:

* ``init_fn(key, positions, velocities=None) -> MDState`` (Å, Å/fs; velocities drawn from
  Maxwell–Boltzmann at ``temperature_K`` when not given);
* ``apply_fn(state, n_steps) -> (state, Thermo)`` runs ``n_steps`` steps (a multiple of
  ``log_every``) in jitted chunks and returns one :class:`Thermo` row per ``log_every``
  steps.

Units: the user gives K, fs, amu, eV, Å and bar; jax-md runs in eV, Å, amu whose time unit
is ``t₀ = sqrt(amu Å²/eV) ≈ 10.1805 fs`` (:mod:`allegro_jax.md.units`).

Integrators are jax-md's: ``simulate.nve`` (velocity Verlet), ``simulate.nvt_langevin``
(BAOAB), ``simulate.nvt_nose_hoover`` and ``simulate.npt_nose_hoover`` (isotropic,
Martyna–Tobias–Klein with Nosé–Hoover chains), with the Allegro energy of
:mod:`allegro_jax.md.jax_md` (whose ``perturbation`` keyword gives the NPT barostat our
virial).

Neighbour lists (jax-md ``Sparse``, cutoff ``r_max + skin``). After every step the list is
rebuilt (inside the jitted loop) when the Verlet-skin guarantee could break at the next
step: with ``m`` the largest displacement since the last build (real space, current box),
``d`` the largest displacement of the last step and ``a = ‖h h_ref⁻¹ − I‖_F`` the box strain
since the last build (NPT), a pair outside ``r_max + skin`` at the build is still outside
``r_max`` as long as ``2 m + a (r_max + skin) < skin``; we rebuild when
``2 (m + 2 d) + a (r_max + skin) ≥ skin``. A rebuild keeps the static capacity; if it does
not fit (``neighbor.did_buffer_overflow``, or a jax-md cell list whose cells became too
small after the box shrank), the chunk is discarded, the list is reallocated (with enough
capacity for both the chunk's start and its failed end) from the chunk's STARTING state
and the chunk is run again: results never come from a truncated list.

Positions: free space and NPT use Cartesian coordinates, NVE/NVT in a periodic box use
``space.periodic_general`` with fractional coordinates (``MDState.sim.position``; jax-md's
NPT integrator is only consistent with real coordinates, see :func:`make_system`); use
:func:`positions_angstrom` for Cartesian positions (in the box frame, see
:func:`allegro_jax.md.jax_md.box_from_cell`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import atomic_masses, atomic_numbers
from flax import struct
from jax_md import partition, quantity, simulate, space

from ..config import AllegroConfig
from ..nn.model import AtomChunks
from ..nn.xla_options import compiler_options
from . import units
from .jax_md import (
    box_from_cell,
    check_box,
    grown_blocks,
    make_energy_fn,
    make_neighbor_fn,
    make_stress_fn,
    neighbor_block_edges_needed,
    plan_neighbor_blocks,
    volume,
    with_hashable_metadata,
)

Array = jax.Array
Params = Any
ENSEMBLES = ("nve", "nvt_langevin", "nvt_nose_hoover", "npt_nose_hoover")


@struct.dataclass
class MDState:
    """State of a simulation (a frozen pytree).

    Attributes:
        sim: the jax-md integrator state (``position`` fractional for periodic systems,
            ``momentum`` in amu·Å/t₀, ``mass`` in amu).
        neighbor: the jax-md neighbour list.
        reference_position: positions at the last neighbour-list build.
        reference_box: box at the last build (``[3, 3]``, identity for free space).
        step: number of steps done.
        n_reallocations: neighbour-list reallocations after an overflow (host-side count).
        chunks: the block layout the energy is evaluated with (``None``: the whole
            neighbour list at once), see :func:`make_simulation`'s ``chunk_edges``.
        n_replans: block layouts made again after a neighbour list outgrew one (host-side).
    """

    sim: Any
    neighbor: partition.NeighborList
    reference_position: Array
    reference_box: Array
    step: Array
    n_reallocations: int = struct.field(pytree_node=False, default=0)
    chunks: AtomChunks | None = struct.field(pytree_node=False, default=None)
    n_replans: int = struct.field(pytree_node=False, default=0)


@struct.dataclass
class Thermo:
    """Thermodynamic log, one row per logged step (arrays ``[n_rows]``).

    Attributes:
        step: step index.
        time_fs: simulation time in fs.
        temperature_K: instantaneous temperature ``2 KE / (3 N k_B)`` (jax-md's and ASE's
            convention: 3N degrees of freedom).
        potential_energy: eV.
        kinetic_energy: eV.
        total_energy: ``potential_energy + kinetic_energy``, eV.
        conserved: the integrator's conserved quantity (E_tot for NVE, the extended
            Hamiltonian for Nosé–Hoover, NaN for Langevin), eV.
        pressure_bar: instantaneous pressure incl. the kinetic term (NaN for free space).
        volume: Å³ (NaN for free space).
        n_rebuilds: neighbour-list rebuilds since the previous row.
        force_std_max: ensembles (``force_std_fn`` given): max over atoms of the
            members' force standard deviation ``σ_i``, eV/Å; NaN otherwise.
        force_std_mean: the mean over atoms of ``σ_i``, eV/Å; NaN otherwise.
    """

    step: Array
    time_fs: Array
    temperature_K: Array
    potential_energy: Array
    kinetic_energy: Array
    total_energy: Array
    conserved: Array
    pressure_bar: Array
    volume: Array
    n_rebuilds: Array
    force_std_max: Array
    force_std_mean: Array


class Simulation(NamedTuple):
    """``(init_fn, apply_fn)`` of :func:`make_simulation`."""

    init_fn: Callable[..., MDState]
    apply_fn: Callable[[MDState, int], tuple[MDState, Thermo]]


@dataclasses.dataclass(frozen=True)
class MDSystem:
    """The pieces :func:`make_simulation` builds (exposed for advanced use and tests).

    Attributes:
        energy_fn: ``energy_fn(R, neighbor, **kwargs)``.
        displacement_fn: jax-md displacement.
        shift_fn: jax-md shift.
        neighbor_fn: jax-md ``NeighborListFns``.
        box: ``[3, 3]`` box (columns) or ``None`` for free space.
        rotation: ``[3, 3]`` rotation from the user's frame to the box frame.
        masses: ``[n_atoms]`` amu.
        real_coordinates: periodic positions are Cartesian (NPT) rather than fractional;
            the neighbour list then still works on fractional positions (converted).
        blockwise_energy_fn: ``chunks -> energy_fn`` evaluating a block of atoms at a time
            (:func:`allegro_jax.md.jax_md.make_energy_fn`), or ``None`` (only the whole
            list: e.g. an ensemble's system). It must compute the same energy as
            ``energy_fn``: a system with another ``energy_fn`` sets it to ``None``.
    """

    energy_fn: Callable[..., Array]
    displacement_fn: Callable[..., Array]
    shift_fn: Callable[..., Array]
    neighbor_fn: partition.NeighborListFns
    box: np.ndarray | None
    rotation: np.ndarray
    masses: np.ndarray
    real_coordinates: bool = False
    blockwise_energy_fn: Callable[[AtomChunks], Callable[..., Array]] | None = None


def default_masses(config: AllegroConfig, species: np.ndarray) -> np.ndarray:
    """Standard atomic masses (amu) of the atoms' chemical species."""
    table = np.array([atomic_masses[atomic_numbers[t]] for t in config.type_names])
    return table[np.asarray(species)]


def make_system(
    config: AllegroConfig,
    params: Params,
    species: np.ndarray,
    *,
    cell: np.ndarray | None = None,
    masses_amu: np.ndarray | None = None,
    skin: float = 1.0,
    capacity_multiplier: float = 1.25,
    free_extent: float | None = None,
    real_coordinates: bool = False,
) -> MDSystem:
    """Space, energy function and neighbour list for a system.

    Args:
        config: model configuration.
        params: model parameters.
        species: ``[n_atoms]`` type indices.
        cell: ASE cell (rows, Å) of a fully periodic system, or ``None`` for free space.
        masses_amu: ``[n_atoms]`` masses; default the standard atomic masses.
        skin: Verlet skin in Å.
        capacity_multiplier: neighbour-list head room.
        free_extent: free space only: the size in Å of the region jax-md's cell list
            covers (default: the neighbour-list is all-pairs, fine below ~1000 atoms).
        real_coordinates: periodic only: Cartesian instead of fractional positions. NPT needs
            them: jax-md's ``npt_nose_hoover`` scales positions as ``r → r e^x`` through
            ``shift_fn``, which is right for real coordinates but adds a spurious
            displacement ``u (e^x − 1)`` (u fractional, read as Å) for fractional ones.

    Returns:
        The :class:`MDSystem`.
    """
    species = np.asarray(species, dtype=np.int32)
    masses = default_masses(config, species) if masses_amu is None else np.asarray(masses_amu)
    if cell is None:
        displacement_fn, shift_fn = space.free()
        extent = 1e3 if free_extent is None else free_extent
        neighbor_fn = with_hashable_metadata(
            partition.neighbor_list(
                displacement_fn,
                extent,
                config.r_max + skin,
                dr_threshold=0.0,
                capacity_multiplier=capacity_multiplier,
                format=partition.Sparse,
                disable_cell_list=free_extent is None,
            )
        )
        box, rotation = None, np.eye(3)
    else:
        box, rotation = box_from_cell(cell)
        box = box.astype(config.dtype)
        frac_displacement_fn, frac_shift_fn = space.periodic_general(box)
        displacement_fn, shift_fn = frac_displacement_fn, frac_shift_fn
        if real_coordinates:
            displacement_fn, shift_fn = space.periodic_general(box, fractional_coordinates=False)
        # the neighbour list always works on fractional positions (jax-md's cell list needs
        # them to follow a changing box)
        neighbor_fn = make_neighbor_fn(
            config, frac_displacement_fn, box, skin=skin, capacity_multiplier=capacity_multiplier
        )
    energy_fn = make_energy_fn(config, params, displacement_fn, species=species)

    def blockwise_energy_fn(chunks: AtomChunks) -> Callable[..., Array]:
        return make_energy_fn(config, params, displacement_fn, species=species, chunks=chunks)

    return MDSystem(
        energy_fn,
        displacement_fn,
        shift_fn,
        neighbor_fn,
        box,
        rotation,
        masses,
        real_coordinates=bool(real_coordinates and cell is not None),
        blockwise_energy_fn=blockwise_energy_fn,
    )


def positions_angstrom(state: MDState) -> Array:
    """Cartesian positions in Å (box frame) of a state."""
    pos = state.sim.position
    if isinstance(state.sim, simulate.NPTNoseHooverState):
        return pos  # NPT runs in real coordinates
    return pos @ state.reference_box.T  # identity for free space


# static neighbour-list sizes that depend on the allocation (saved as arrays, -1 for None)
_NEIGHBOR_STATIC = ("max_occupancy", "cell_list_capacity")


def state_to_arrays(state: MDState) -> dict[str, np.ndarray]:
    """Every array of a state as ``{path: array}``, for a restart checkpoint.

    Includes the integrator (positions, momenta, forces, masses), the Nosé–Hoover chain
    variables, the Langevin PRNG key, the NPT box and barostat, the neighbour list (indices,
    reference positions and its allocated capacities) and the step. Paths are
    :func:`jax.tree_util.keystr` of the leaves (``".sim.chain.momentum"``, ``".sim.rng"``,
    ``".neighbor.idx"``, ...) and ``".neighbor#max_occupancy"``-style entries for the list's
    static sizes. Python scalars (chain constants such as ``tau``) are left out: they come
    from the simulation's settings.
    """
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        if isinstance(leaf, jax.Array | np.ndarray):
            out[jax.tree_util.keystr(path)] = np.asarray(leaf)
    for name in _NEIGHBOR_STATIC:
        value = getattr(state.neighbor, name)
        out[f".neighbor#{name}"] = np.asarray(-1 if value is None else int(value))
    return out


def state_from_arrays(template: MDState, arrays: dict[str, np.ndarray]) -> MDState:
    """Restore a state saved by :func:`state_to_arrays` into a template of the same kind.

    The template is any state of the same simulation (same ``make_simulation`` settings and
    atoms), e.g. ``init_fn(key, positions)``. Every saved array replaces the template's leaf
    of the same path and the neighbour list gets the saved capacities, so the integrator,
    thermostat chain, barostat, Langevin key, neighbour list and step continue exactly: the
    continued run is bit for bit the uninterrupted one.

    Args:
        template: a state of the same simulation.
        arrays: ``{path: array}`` from :func:`state_to_arrays`.

    Returns:
        The restored state.

    Raises:
        ValueError: an array is missing or has another shape (another ensemble or system).
    """
    nbr_static = {}
    for name in _NEIGHBOR_STATIC:
        key = f".neighbor#{name}"
        if key not in arrays:
            raise ValueError(f"the saved state has no {key!r}; not a state_to_arrays dict")
        value = int(arrays[key])
        nbr_static[name] = None if value < 0 else value
    neighbor = dataclasses.replace(template.neighbor, **nbr_static)
    if neighbor.max_occupancy != template.neighbor.max_occupancy:
        # placeholder of the saved capacity; the saved indices replace it below
        neighbor = neighbor.set(idx=jnp.zeros((2, neighbor.max_occupancy), neighbor.idx.dtype))
    template = template.replace(neighbor=neighbor)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    new = []
    for path, leaf in leaves:
        if not isinstance(leaf, jax.Array | np.ndarray):
            new.append(leaf)
            continue
        key = jax.tree_util.keystr(path)
        if key not in arrays:
            raise ValueError(
                f"the saved state has no {key!r} (it has {sorted(arrays)}); it is from another "
                "ensemble or simulation"
            )
        value = np.asarray(arrays[key])
        if value.shape != leaf.shape:
            raise ValueError(
                f"saved {key!r} has shape {value.shape}, this simulation needs {leaf.shape}"
            )
        new.append(jnp.asarray(value, dtype=leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, new)


def make_simulation(
    config: AllegroConfig,
    params: Params,
    species: np.ndarray,
    *,
    cell: np.ndarray | None = None,
    ensemble: str = "nve",
    timestep_fs: float = 0.5,
    temperature_K: float = 300.0,
    pressure_bar: float = 1.0,
    friction_per_fs: float = 0.01,
    tau_t_fs: float | None = None,
    tau_p_fs: float | None = None,
    masses_amu: np.ndarray | None = None,
    skin: float = 1.0,
    capacity_multiplier: float = 1.25,
    log_every: int = 10,
    logs_per_chunk: int = 10,
    max_retries: int = 5,
    log_pressure: bool = True,
    system: MDSystem | None = None,
    force_std_fn: Callable[..., Array] | None = None,
    chunk_edges: int | str | None = "auto",
) -> Simulation:
    """Build an MD simulation of one system.

    Args:
        config: model configuration.
        params: model parameters.
        species: ``[n_atoms]`` type indices into ``config.type_names``.
        cell: ASE cell (rows, Å) for a periodic box, ``None`` for free space.
        ensemble: one of ``"nve"``, ``"nvt_langevin"``, ``"nvt_nose_hoover"``,
            ``"npt_nose_hoover"``.
        timestep_fs: timestep in fs.
        temperature_K: target (NVT/NPT) or initial (Maxwell–Boltzmann) temperature in K.
        pressure_bar: NPT target pressure in bar.
        friction_per_fs: Langevin friction γ in 1/fs.
        tau_t_fs: thermostat time constant in fs (default 100 timesteps).
        tau_p_fs: barostat time constant in fs (default 1000 timesteps).
        masses_amu: ``[n_atoms]`` masses; default standard atomic masses.
        skin: Verlet skin in Å.
        capacity_multiplier: neighbour-list head room.
        log_every: steps between :class:`Thermo` rows (also the smallest run length).
        logs_per_chunk: rows per jitted chunk (``log_every * logs_per_chunk`` steps).
        max_retries: reallocations allowed for one chunk before giving up.
        log_pressure: compute the pressure for the log (a virial per logged step; NaN if
            off or for free space).
        system: reuse an :class:`MDSystem` from :func:`make_system`.
        force_std_fn: an ensemble's per-atom force standard deviation
            ``(R, neighbor, **box_kwargs) -> [n_atoms]`` (from
            :func:`allegro_jax.md.ensemble.make_ensemble_system`, which also gives the
            ``system`` driven by the ensemble mean): logged as ``force_std_max``/``_mean``.
        chunk_edges: evaluate the energy a block of atoms at a time, blocks of about this
            many neighbour-list pairs (``"auto"``: 2048 on a CPU, for lists of more than
            8 blocks' worth; ``None``: always the whole list; systems without
            ``blockwise_energy_fn``, such as ensembles, always use the whole list). Same
            forces to float rounding, faster for large systems on a CPU
            (``benchmarks/NOTES.md``). The layout is planned from the first neighbour list
            with 10 % spare capacity; a chunk whose lists outgrow it is discarded and run
            again with a larger layout, as for a neighbour-list overflow.

    Returns:
        ``Simulation(init_fn, apply_fn)``, see the module docstring.
    """
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    if ensemble == "npt_nose_hoover" and cell is None:
        raise ValueError("NPT needs a periodic cell")
    if timestep_fs <= 0 or temperature_K < 0 or log_every < 1 or logs_per_chunk < 1:
        raise ValueError(
            "timestep_fs > 0, temperature_K >= 0, log_every >= 1 and "
            "logs_per_chunk >= 1 are required"
        )
    sys_ = system or make_system(
        config,
        params,
        species,
        cell=cell,
        masses_amu=masses_amu,
        skin=skin,
        capacity_multiplier=capacity_multiplier,
        real_coordinates=ensemble == "npt_nose_hoover",
    )
    if ensemble == "npt_nose_hoover" and not sys_.real_coordinates:
        raise ValueError("NPT needs an MDSystem built with real_coordinates=True")
    real = sys_.real_coordinates
    shift_fn, neighbor_fn = sys_.shift_fn, sys_.neighbor_fn
    displacement_fn = sys_.displacement_fn
    periodic = sys_.box is not None
    npt = ensemble == "npt_nose_hoover"
    n_atoms = int(np.asarray(species).shape[0])
    dt = units.fs_to_internal(timestep_fs)
    kT = units.kelvin_to_kt(temperature_K)
    p_target = units.bar_to_internal(pressure_bar)
    tau_t = units.fs_to_internal(tau_t_fs) if tau_t_fs else 100 * dt
    tau_p = units.fs_to_internal(tau_p_fs) if tau_p_fs else 1000 * dt
    cutoff = config.r_max + skin
    blockwise = sys_.blockwise_energy_fn if chunk_edges is not None else None

    def current_box(sim: Any, fallback: Array) -> Array:
        return simulate.npt_box(sim) if npt else fallback

    def box_kwargs(box: Array) -> dict[str, Array]:
        return {"box": box} if npt else {}

    def nbr_position(position: Array, box: Array) -> Array:
        if not real:
            return position
        return jnp.mod(position @ jnp.linalg.inv(box).T, 1.0)

    def allocate(position: Array, box: Array, extra_capacity: int = 0) -> partition.NeighborList:
        return neighbor_fn.allocate(
            nbr_position(position, box), extra_capacity=extra_capacity, **box_kwargs(box)
        )

    def rebuild_needed(sim: Any, prev_position: Array, state: MDState) -> Array:
        box = current_box(sim, state.reference_box)
        kw = box_kwargs(box)
        disp = jax.vmap(lambda a, b: displacement_fn(a, b, **kw))
        m = jnp.max(jnp.linalg.norm(disp(sim.position, state.reference_position), axis=-1))
        d = jnp.max(jnp.linalg.norm(disp(sim.position, prev_position), axis=-1))
        strain = 0.0
        if npt:
            a = box @ jnp.linalg.inv(state.reference_box) - jnp.eye(3, dtype=box.dtype)
            strain = jnp.sqrt(jnp.sum(a**2)) * cutoff
        return 2.0 * (m + 2.0 * d) + strain >= skin

    def plan(nbr: partition.NeighborList) -> AtomChunks | None:
        if blockwise is None:
            return None
        return plan_neighbor_blocks(nbr, n_atoms, chunk_edges, slack=1.1)

    built: dict[AtomChunks | None, tuple[Callable, Callable]] = {}

    def build(chunks: AtomChunks | None) -> tuple[Callable, Callable]:
        """``(sim_init, chunk_fn)`` of the integrator driven by the energy with ``chunks``."""
        if chunks in built:
            return built[chunks]
        energy_fn = sys_.energy_fn if chunks is None else blockwise(chunks)
        stress_fn = make_stress_fn(energy_fn, forward_box=periodic)
        if ensemble == "nve":
            sim_init, sim_apply = simulate.nve(energy_fn, shift_fn, dt)
        elif ensemble == "nvt_langevin":
            sim_init, sim_apply = simulate.nvt_langevin(
                energy_fn, shift_fn, dt, kT, gamma=friction_per_fs * units.TIME_UNIT_FS
            )
        elif ensemble == "nvt_nose_hoover":
            sim_init, sim_apply = simulate.nvt_nose_hoover(energy_fn, shift_fn, dt, kT, tau=tau_t)
        else:
            sim_init, sim_apply = simulate.npt_nose_hoover(
                energy_fn,
                shift_fn,
                dt,
                p_target,
                kT,
                barostat_kwargs={"tau": tau_p},
                thermostat_kwargs={"tau": tau_t},
            )

        def needed(nbr: partition.NeighborList) -> Array:
            if chunks is None:
                return jnp.zeros((), jnp.int32)
            return neighbor_block_edges_needed(nbr, n_atoms, chunks).astype(jnp.int32)

        def one_step(state: MDState) -> tuple[MDState, Array]:
            sim = sim_apply(state.sim, neighbor=state.neighbor)
            box = current_box(sim, state.reference_box)
            need = rebuild_needed(sim, state.sim.position, state)

            def rebuild(_: None) -> tuple[partition.NeighborList, Array, Array]:
                nbr = state.neighbor.update(nbr_position(sim.position, box), **box_kwargs(box))
                return nbr, sim.position, box

            def keep(_: None) -> tuple[partition.NeighborList, Array, Array]:
                return state.neighbor, state.reference_position, state.reference_box

            nbr, ref_pos, ref_box = jax.lax.cond(need, rebuild, keep, None)
            new = state.replace(
                sim=sim,
                neighbor=nbr,
                reference_position=ref_pos,
                reference_box=ref_box,
                step=state.step + 1,
            )
            return new, need

        def thermo(state: MDState, n_rebuilds: Array) -> Thermo:
            sim, nbr = state.sim, state.neighbor
            box = current_box(sim, state.reference_box)
            kw = box_kwargs(box)
            e_pot = energy_fn(sim.position, nbr, **kw)
            ke = quantity.kinetic_energy(momentum=sim.momentum, mass=sim.mass)
            temp = 2.0 * ke / (3 * n_atoms * units.KB_EV_PER_K)
            if ensemble == "nvt_nose_hoover":
                conserved = simulate.nvt_nose_hoover_invariant(energy_fn, sim, kT, neighbor=nbr)
            elif npt:
                conserved = simulate.npt_nose_hoover_invariant(
                    energy_fn, sim, p_target, kT, neighbor=nbr
                )
            elif ensemble == "nve":
                conserved = e_pot + ke
            else:
                conserved = jnp.full_like(e_pot, jnp.nan)
            if periodic and (log_pressure or npt):
                sigma = stress_fn(sim.position, nbr, box)
                vol = volume(box)
                p = (2.0 * ke / (3.0 * vol) - jnp.trace(sigma) / 3.0) * units.BAR_PER_EV_PER_A3
            else:
                vol = volume(box) if periodic else jnp.full_like(e_pot, jnp.nan)
                p = jnp.full_like(e_pot, jnp.nan)
            if force_std_fn is not None:
                sigma_i = force_std_fn(sim.position, nbr, **kw)
                std_max, std_mean = jnp.max(sigma_i), jnp.mean(sigma_i)
            else:
                std_max = std_mean = jnp.full_like(e_pot, jnp.nan)
            return Thermo(
                step=state.step,
                time_fs=state.step * timestep_fs,
                temperature_K=temp,
                potential_energy=e_pot,
                kinetic_energy=ke,
                total_energy=e_pot + ke,
                conserved=conserved,
                pressure_bar=p,
                volume=vol,
                n_rebuilds=n_rebuilds,
                force_std_max=std_max,
                force_std_mean=std_mean,
            )

        # `need`: the largest block capacity the chunk's neighbour lists needed, up to the
        # first list `chunks` does not fit (the energies are NaN from there on, so later
        # lists are meaningless)
        def track(need: Array, nbr: partition.NeighborList) -> Array:
            fitted = need <= (chunks.edges if chunks is not None else 0)
            return jnp.where(fitted, jnp.maximum(need, needed(nbr)), need)

        def log_block(carry: tuple[MDState, Array], _: None):
            def body(_: int, carry: tuple[MDState, Array, Array]):
                st, count, need = carry
                st, rebuilt = one_step(st)
                return st, count + rebuilt.astype(jnp.int32), track(need, st.neighbor)

            state, need = carry
            state, count, need = jax.lax.fori_loop(
                0, log_every, body, (state, jnp.zeros((), jnp.int32), need)
            )
            return (state, need), thermo(state, count)

        def chunk(state: MDState, n_logs: int) -> tuple[MDState, Thermo, Array]:
            (state, need), log = jax.lax.scan(
                log_block, (state, needed(state.neighbor)), None, length=n_logs
            )
            return state, log, need

        built[chunks] = (
            sim_init,
            jax.jit(chunk, static_argnums=1, compiler_options=compiler_options()),
        )
        return built[chunks]

    def init_fn(key: Array, positions: np.ndarray, velocities: np.ndarray | None = None) -> MDState:
        """Initial state from Cartesian positions (Å) and optional velocities (Å/fs)."""
        pos = np.asarray(positions, dtype=np.float64) @ sys_.rotation
        if periodic:
            pos = pos @ np.linalg.inv(sys_.box).T
            pos = pos - np.floor(pos)
            if real:
                pos = pos @ sys_.box.T
            box = jnp.asarray(sys_.box)
        else:
            box = jnp.eye(3)
        dtype = config.dtype
        R = jnp.asarray(pos, dtype=dtype)
        box = box.astype(dtype)
        mass = jnp.asarray(sys_.masses, dtype=dtype)
        momenta = None
        if velocities is not None:
            v = np.asarray(velocities) @ sys_.rotation * units.TIME_UNIT_FS  # Å/t₀
            momenta = jnp.asarray(v * sys_.masses[:, None], dtype=dtype)
        nbr = allocate(R, box)
        if bool(nbr.did_buffer_overflow):
            raise RuntimeError("neighbour list overflowed at allocation")
        chunks = plan(nbr)
        sim_init, _ = build(chunks)
        if npt:
            sim = sim_init(key, R, box, mass=mass, momenta=momenta, neighbor=nbr)
        elif ensemble == "nve":
            sim = sim_init(key, R, kT, mass=mass, momenta=momenta, neighbor=nbr)
        else:
            sim = sim_init(key, R, mass=mass, momenta=momenta, neighbor=nbr)
        return MDState(sim, nbr, R, box, jnp.zeros((), jnp.int32), chunks=chunks)

    def reallocated(start: MDState, failed: MDState) -> MDState:
        box0 = current_box(start.sim, start.reference_box)
        nbr = allocate(start.sim.position, box0)
        box1 = current_box(failed.sim, failed.reference_box)
        pos1 = failed.sim.position
        if bool(jnp.all(jnp.isfinite(pos1))):
            probe = allocate(pos1, box1)
            if probe.max_occupancy > nbr.max_occupancy:
                extra = math.ceil((probe.max_occupancy - nbr.max_occupancy) / n_atoms)
                nbr = allocate(start.sim.position, box0, extra_capacity=extra)
        return start.replace(
            neighbor=nbr,
            reference_position=start.sim.position,
            reference_box=box0,
            n_reallocations=start.n_reallocations + 1,
        )

    def apply_fn(state: MDState, n_steps: int) -> tuple[MDState, Thermo]:
        """Run ``n_steps`` (a multiple of ``log_every``); returns the state and the log."""
        if n_steps % log_every:
            raise ValueError(f"n_steps={n_steps} must be a multiple of log_every={log_every}")
        logs = []
        remaining = n_steps // log_every
        while remaining:
            n_logs = min(logs_per_chunk, remaining)
            start = state
            reallocations = replans = 0
            while True:
                new_state, log, need = build(start.chunks)[1](start, n_logs)
                # a block layout outgrown: the energies went NaN from that list on (and the
                # neighbour list may have overflowed because of it), so replan first
                if start.chunks is not None and int(need) > start.chunks.edges:
                    if int(need) > start.neighbor.idx.shape[-1] or replans == max_retries:
                        raise RuntimeError(
                            f"no block layout fits the neighbour list at step "
                            f"{int(start.step)} (needs {int(need)} edges per block)"
                        )
                    replans += 1
                    start = start.replace(
                        chunks=grown_blocks(start.chunks, int(need), slack=1.1),
                        n_replans=start.n_replans + 1,
                    )
                    continue
                # (jax-md 0.2.29 sets MALFORMED_BOX for VALID boxes; our boxes are upper
                # triangular by construction and NPT scales them isotropically)
                if bool(
                    new_state.neighbor.did_buffer_overflow or new_state.neighbor.cell_size_too_small
                ):
                    if reallocations == max_retries:
                        raise RuntimeError(
                            f"neighbour list still overflows after {max_retries} reallocations"
                        )
                    reallocations += 1
                    start = reallocated(start, new_state)
                    continue
                break
            state = new_state
            if npt:
                try:
                    check_box(np.asarray(simulate.npt_box(state.sim)), config.r_max)
                except ValueError as err:
                    raise RuntimeError(
                        f"NPT box collapsed at step {int(state.step)}: {err}"
                    ) from err
            logs.append(log)
            remaining -= n_logs
        log = jax.tree.map(lambda *xs: jnp.concatenate(xs), *logs)
        return state, log

    return Simulation(init_fn, apply_fn)
