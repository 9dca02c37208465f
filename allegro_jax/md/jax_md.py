"""Allegro as a jax-md energy function.

:func:`make_energy_fn` turns a model ``(config, params)`` into ``energy_fn(R, neighbor,
**kwargs) -> E`` in the form jax-md's simulators expect. Inside, the edge vectors are

    r_ij = displacement_fn(R[j], R[i], **kwargs)        (vmapped over the edge list)

so every derivative goes through jax-md's space: forces ``-∂E/∂R`` are real-space forces
also for fractional coordinates (``space.periodic_general`` defines its transform's JVP that
way), ``∂E/∂box`` is the derivative at fixed fractional coordinates, and the keyword
``perturbation`` (used by ``quantity.stress``/``pressure`` and ``simulate.npt_nose_hoover``)
strains every edge vector, ``r → (I + ε) r``.

Neighbour lists: :func:`make_neighbor_fn` builds a jax-md ``partition.neighbor_list`` in the
``Sparse`` format (``idx[0]`` the receivers j, ``idx[1]`` the senders i, both directions of
every pair, padded with the index ``N``) with cutoff ``r_max + skin``. ``Dense`` lists work
too; ``OrderedSparse`` (each pair once) does not, because Allegro's pair energies are not
symmetric. Edges to padding slots and edges longer than ``r_max`` are masked out in the
energy function, so a list with a skin gives the same energy as an exact one.

Minimum image: jax-md's periodic spaces use the minimum-image convention, so each
perpendicular width of the box must exceed ``2 (r_max + skin)``; :func:`check_box` raises
otherwise (replicate the cell first, or use the ASE calculator, which handles small cells).

Boxes: jax-md's box holds the lattice vectors as COLUMNS and must be upper triangular for
neighbour lists; ASE's cell holds them as ROWS. :func:`box_from_cell` converts, rotating
the frame if needed.

Stress (ASE/nequip sign convention, ``σ = (1/V) ∂E/∂ε``) and pressure come from
:func:`make_stress_fn` via the ``perturbation`` keyword, or equivalently from the box
derivative at fixed fractional coordinates, ``σ = (1/V) (∂E/∂h) hᵀ`` (tested to agree).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import partition

from ..config import AllegroConfig
from ..nn.model import (
    AtomChunks,
    block_edges_needed,
    blockwise_atomic_energies,
    build_module,
    default_block_edges,
    plan_blocks,
)

Array = jax.Array
Params = Any
EnergyFn = Callable[..., Array]


def box_from_cell(cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A jax-md box (upper-triangular, lattice vectors as columns) from an ASE cell.

    With ``cellᵀ = Q R`` (QR decomposition, ``diag(R) > 0``), the box is ``R`` and Cartesian
    row vectors map as ``x_box = x_cell @ Q``. For a cell already in ASE's standard form
    (first vector along x, second in the xy plane) ``Q`` is the identity.

    Args:
        cell: ``[3, 3]`` lattice vectors as rows, in Å.

    Returns:
        ``(box, rotation)``: ``[3, 3]`` upper-triangular box and the ``[3, 3]`` orthogonal
        matrix ``Q`` (positions in the box frame are ``positions @ Q``).
    """
    cell = np.asarray(cell, dtype=np.float64)
    if cell.shape != (3, 3) or abs(np.linalg.det(cell)) < 1e-12:
        raise ValueError(f"cell must be a non-singular 3x3 matrix, got {cell.tolist()}")
    q, r = np.linalg.qr(cell.T)
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    q, r = q * signs[None, :], r * signs[:, None]
    if np.linalg.det(q) < 0:
        raise ValueError("cell must be right-handed (det > 0) to map onto a jax-md box")
    r = np.triu(r)
    if np.allclose(q, np.eye(3), atol=1e-12):
        q = np.eye(3)
    return r, q


def check_box(box: np.ndarray, cutoff: float) -> None:
    """Raise unless every perpendicular width of ``box`` exceeds ``2 · cutoff``.

    Args:
        box: ``[3, 3]`` box with lattice vectors as columns (or a scalar / ``[3]`` sides).
        cutoff: the neighbour-list cutoff ``r_max + skin`` in Å.
    """
    box = np.asarray(box, dtype=np.float64)
    if box.ndim == 0:
        box = np.eye(3) * box
    elif box.ndim == 1:
        box = np.diag(box)
    volume = abs(np.linalg.det(box))
    a, b, c = box.T
    widths = volume / np.array(
        [
            np.linalg.norm(np.cross(b, c)),
            np.linalg.norm(np.cross(c, a)),
            np.linalg.norm(np.cross(a, b)),
        ]
    )
    if np.any(widths <= 2 * cutoff):
        raise ValueError(
            f"box widths {np.round(widths, 3).tolist()} Å must exceed 2 x cutoff = "
            f"{2 * cutoff:.3f} Å (jax-md uses the minimum-image convention); replicate the "
            "cell or use AllegroCalculator for small cells"
        )


def _pairs(neighbor: Any, n_atoms: int) -> tuple[Array, Array]:
    """``(senders i, receivers j)`` from a jax-md neighbour list (or its ``idx``)."""
    fmt = getattr(neighbor, "format", None)
    idx = getattr(neighbor, "idx", neighbor)
    if fmt is partition.OrderedSparse:
        raise ValueError(
            "OrderedSparse neighbour lists hold each pair once; Allegro needs both directions: "
            "use format=partition.Sparse"
        )
    if fmt is partition.Dense:
        receivers = idx.reshape(-1)  # [n_atoms * capacity]
        senders = jnp.repeat(jnp.arange(n_atoms, dtype=idx.dtype), idx.shape[1])
        return senders, receivers
    return idx[1], idx[0]  # jax-md Sparse: idx = (receivers, senders)


def _edge_fn(config: AllegroConfig, displacement_fn: Callable[..., Array], n_atoms: int):
    """``edges(R, neighbor, kwargs) -> (vec, i, j, mask, present)``: the model's edge
    vectors ``r_ij = R_j - R_i`` (masked ones set to ``r_max``), centres ``i``, neighbours
    ``j``, the model's edge mask (in use and within ``r_max``) and the slots in use."""
    r_max = config.r_max
    dtype = config.dtype

    def edges(R: Array, neighbor: Any, kwargs: dict[str, Any]):
        R = jnp.asarray(R)
        if R.shape[0] != n_atoms:
            raise ValueError(f"R has {R.shape[0]} atoms, species has {n_atoms}")
        senders, receivers = _pairs(neighbor, n_atoms)  # [n_edges] each
        valid = (senders < n_atoms) & (receivers < n_atoms)
        i = jnp.where(valid, senders, 0)
        j = jnp.where(valid, receivers, 0)
        disp = functools.partial(displacement_fn, **kwargs)
        vec = jax.vmap(disp)(R[j], R[i])  # [n_edges, 3], r_ij = R_j - R_i
        mask = valid & (jnp.sum(vec**2, axis=-1) < r_max**2) & (i != j)
        # periodic self-images (i == j) cannot appear under the minimum-image convention
        vec = jnp.where(mask[:, None], vec, jnp.full_like(vec, r_max)).astype(dtype)
        return vec, i, j, mask, valid

    return edges


def make_atomic_energy_fn(
    config: AllegroConfig,
    params: Params,
    displacement_fn: Callable[..., Array],
    *,
    species: Array | np.ndarray,
) -> EnergyFn:
    """Per-atom energies: ``atomic_energy_fn(R, neighbor, **kwargs) -> [n_atoms]``.

    Args:
        config: the model configuration.
        params: the model parameters (trained or from ``init_fn``).
        displacement_fn: jax-md displacement ``d(Ra, Rb, **kwargs) = Ra - Rb`` (with the
            space's boundary conditions).
        species: ``[n_atoms]`` int type indices into ``config.type_names``.

    Returns:
        The function; ``neighbor`` is a jax-md ``NeighborList`` (Sparse or Dense) or its
        ``idx`` array in the Sparse layout (``[2, capacity]``); ``kwargs`` (``box``,
        ``perturbation``, ...) are passed to ``displacement_fn``.
    """
    module = build_module(config)
    params = jax.tree.map(jnp.asarray, params)  # (loaded checkpoints may hold numpy arrays)
    species = jnp.asarray(species, dtype=jnp.int32)  # [n_atoms]
    n_atoms = int(species.shape[0])
    node_mask = jnp.ones(n_atoms, dtype=bool)
    edges = _edge_fn(config, displacement_fn, n_atoms)

    def atomic_energy_fn(R: Array, neighbor: Any, **kwargs: Any) -> Array:
        vec, i, j, mask, _ = edges(R, neighbor, kwargs)
        return module.apply({"params": params}, vec, species, i, j, mask, node_mask)

    return atomic_energy_fn


def make_energy_fn(
    config: AllegroConfig,
    params: Params,
    displacement_fn: Callable[..., Array],
    *,
    species: Array | np.ndarray,
    chunks: AtomChunks | None = None,
) -> EnergyFn:
    """Total energy in eV: ``energy_fn(R, neighbor, **kwargs) -> E``.

    Usable with ``space.free``, ``space.periodic`` and ``space.periodic_general``
    (fractional or real coordinates; pass ``box=`` as jax-md does when the box changes) and
    with every jax-md simulator. See :func:`make_atomic_energy_fn` for the arguments.

    With ``chunks`` (from :func:`plan_neighbor_blocks`) the model runs a block of atoms at
    a time, each block's energy and its gradient in one pass (faster for large systems on a
    CPU, and memory bounded by a block: ``benchmarks/NOTES.md``); reverse-mode derivatives
    (forces, stress, ``∂E/∂box``) go through the edge vectors as usual, but not into
    ``params`` and not in forward mode (``jax.jvp``). A neighbour list the layout does not
    fit (:func:`neighbor_block_edges_needed`) gives NaN: plan again.

    Example::

        displacement_fn, shift_fn = space.periodic_general(box)
        neighbor_fn = make_neighbor_fn(config, displacement_fn, box)
        energy_fn = make_energy_fn(config, params, displacement_fn, species=species)
        nbrs = neighbor_fn.allocate(R)
        E = energy_fn(R, nbrs)
        F = -jax.grad(energy_fn)(R, nbrs)
    """
    if chunks is not None:
        return _blockwise_energy_fn(config, params, displacement_fn, species, chunks)
    atomic = make_atomic_energy_fn(config, params, displacement_fn, species=species)

    def energy_fn(R: Array, neighbor: Any = None, **kwargs: Any) -> Array:
        if neighbor is None:
            raise TypeError("energy_fn needs a neighbour list: energy_fn(R, neighbor, ...)")
        return jnp.sum(atomic(R, neighbor, **kwargs))

    return energy_fn


def _blockwise_energy_fn(
    config: AllegroConfig,
    params: Params,
    displacement_fn: Callable[..., Array],
    species: Array | np.ndarray,
    chunks: AtomChunks,
) -> EnergyFn:
    module = build_module(config)
    params = jax.tree.map(jnp.asarray, params)
    species = jnp.asarray(species, dtype=jnp.int32)
    n_atoms = int(species.shape[0])
    node_mask = jnp.ones(n_atoms, dtype=bool)
    edges = _edge_fn(config, displacement_fn, n_atoms)

    def blocks(vec, i, j, mask, present, with_grad):
        e, g, fits = blockwise_atomic_energies(
            module, params, vec, species, i, j, mask, node_mask, chunks, with_grad, present
        )
        return jnp.where(fits, jnp.sum(e), jnp.nan), g, fits

    # the energy of the edge vectors; its VJP is the blocks' own gradient, computed in the
    # same pass as the energy (the other arguments are indices and masks)
    @jax.custom_vjp
    def total(vec, i, j, mask, present):
        return blocks(vec, i, j, mask, present, False)[0]

    def total_fwd(vec, i, j, mask, present):
        e, g, fits = blocks(vec, i, j, mask, present, True)
        return e, jnp.where(fits, g, jnp.nan)

    def total_bwd(g, ct):
        return (ct * g, None, None, None, None)

    total.defvjp(total_fwd, total_bwd)

    def energy_fn(R: Array, neighbor: Any = None, **kwargs: Any) -> Array:
        if neighbor is None:
            raise TypeError("energy_fn needs a neighbour list: energy_fn(R, neighbor, ...)")
        return total(*edges(R, neighbor, kwargs))

    return energy_fn


def _centres(neighbor: Any, n_atoms: int, xp: Any = jnp) -> tuple[Any, Any]:
    """``(centre of each slot, slot in use)`` of a jax-md neighbour list."""
    senders, receivers = _pairs(neighbor, n_atoms)
    if xp is np:
        senders, receivers = np.asarray(senders), np.asarray(receivers)
    present = (senders < n_atoms) & (receivers < n_atoms)
    return xp.where(present, senders, 0), present


def neighbor_block_edges_needed(neighbor: Any, n_atoms: int, chunks: AtomChunks) -> Array:
    """The block capacity a jax-md neighbour list needs with ``chunks``' block size
    (traceable): ``chunks`` fits it when this is at most ``chunks.edges``
    (:func:`allegro_jax.nn.model.block_edges_needed`)."""
    center, present = _centres(neighbor, n_atoms)
    return block_edges_needed(center, present, n_atoms, chunks)


def plan_neighbor_blocks(
    neighbor: Any, n_atoms: int, target_edges: int | str = "auto", slack: float = 1.1
) -> AtomChunks | None:
    """A block layout (host-side) for the energy function of :func:`make_energy_fn`.

    ``None`` (the whole list at once) when the list holds at most ``8 target_edges`` pairs
    (``"auto"``: :func:`allegro_jax.nn.model.default_block_edges`, 2048 on a CPU) or is
    not sorted by centre. Blocks hold about ``target_edges`` neighbour-list slots in use
    (pairs in the skin included: the model masks them, but they keep their place), with
    ``slack`` spare capacity for the counts to change as atoms move.
    """
    if target_edges == "auto":
        target_edges = default_block_edges()
    center, present = _centres(neighbor, n_atoms, np)
    if int(np.sum(present)) <= 8 * target_edges:
        return None
    try:
        return plan_blocks(center, present, n_atoms, n_atoms, target_edges, slack)
    except ValueError:  # not sorted by centre
        return None


def grown_blocks(chunks: AtomChunks, needed: int, slack: float = 1.1) -> AtomChunks:
    """``chunks`` with room for ``needed`` edges per block (and ``slack`` more)."""
    edges = max(64, -(-int(np.ceil(needed * slack)) // 64) * 64)
    return AtomChunks(chunks.atoms, max(edges, chunks.edges))


def make_neighbor_fn(
    config: AllegroConfig,
    displacement_fn: Callable[..., Array],
    box: Any,
    *,
    skin: float = 0.0,
    capacity_multiplier: float = 1.25,
    fractional_coordinates: bool = True,
    format: partition.NeighborListFormat = partition.Sparse,
    check_minimum_image: bool = True,
) -> partition.NeighborListFns:
    """A jax-md neighbour list with cutoff ``r_max + skin`` that always rebuilds on update.

    The rebuild decision (Verlet skin) is left to the caller (see
    :mod:`allegro_jax.md.integrate`), which also accounts for box changes in NPT.

    Args:
        config: the model configuration (for ``r_max``).
        displacement_fn: the space's displacement function.
        box: the box (``[3, 3]`` columns, ``[3]`` or scalar); ignored for free space but
            jax-md still needs one to size its cell list (give the extent of the system).
        skin: Verlet skin in Å.
        capacity_multiplier: head room of the static edge capacity.
        fractional_coordinates: positions are fractional (``periodic_general`` default).
        format: ``partition.Sparse`` (default) or ``partition.Dense``.
        check_minimum_image: raise if the box is too small for the minimum-image convention.

    Returns:
        jax-md's ``NeighborListFns`` (``allocate``, ``update``).
    """
    cutoff = config.r_max + skin
    if check_minimum_image:
        check_box(np.asarray(box), cutoff)
    fns = partition.neighbor_list(
        displacement_fn,
        box,
        cutoff,
        dr_threshold=0.0,
        capacity_multiplier=capacity_multiplier,
        fractional_coordinates=fractional_coordinates,
        format=format,
    )
    return with_hashable_metadata(fns)


def with_hashable_metadata(fns: partition.NeighborListFns) -> partition.NeighborListFns:
    """Neighbour-list functions whose allocated lists can be passed through ``jax.jit``.

    jax-md stores the fractional cell size of a list as a JAX array in a static (metadata)
    field; JAX then fails when it compares two lists' tree definitions. The wrapped
    ``allocate`` turns that field into a Python float.
    """

    def allocate(position: Array, extra_capacity: int = 0, **kwargs: Any) -> Any:
        with _index_cast_quiet():
            nbr = fns.allocate(position, extra_capacity=extra_capacity, **kwargs)
        if nbr.cell_size is not None and not isinstance(nbr.cell_size, float):
            size = np.asarray(nbr.cell_size)
            if size.size == 1:
                nbr = dataclasses.replace(nbr, cell_size=float(size))
        return nbr

    return partition.NeighborListFns(allocate, fns.update)


@contextlib.contextmanager
def _index_cast_quiet() -> Iterator[None]:
    """Silences one FutureWarning from inside jax-md 0.2.29's sparse list pruning: with x64
    on it scatters ``arange(N)`` (int64) into an int32 index array. The values are atom
    indices below N, so the cast loses nothing; the warning would only alarm users."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="scatter inputs have incompatible types", category=FutureWarning
        )
        yield


def volume(box: Array) -> Array:
    """Volume of a jax-md box (scalar side, ``[3]`` sides or ``[3, 3]`` columns)."""
    box = jnp.asarray(box)
    if box.ndim == 0:
        return box**3
    if box.ndim == 1:
        return jnp.prod(box)
    return jnp.abs(jnp.linalg.det(box))


def make_stress_fn(energy_fn: EnergyFn, *, forward_box: bool = False) -> Callable[..., Array]:
    """Potential stress ``σ = (1/V) ∂E/∂ε`` in eV/Å³ (ASE sign: negative under compression).

    ``stress_fn(R, neighbor, box, **kwargs) -> [3, 3]``: ε is a symmetric strain applied to
    every edge vector through jax-md's ``perturbation`` keyword; ``box`` gives the volume.
    Pressure is ``P = 2 KE / (3 V) - tr(σ) / 3`` (jax-md's ``quantity.pressure``).

    Args:
        energy_fn: from :func:`make_energy_fn`.
        forward_box: also pass ``box=box`` to ``energy_fn`` (``space.periodic_general`` with a
            box that changes, e.g. NPT); leave False for ``space.periodic``.
    """

    def stress_fn(R: Array, neighbor: Any, box: Array, **kwargs: Any) -> Array:
        eye = jnp.eye(3, dtype=R.dtype)
        if forward_box:
            kwargs = {**kwargs, "box": box}

        def energy(eps: Array) -> Array:
            sym = 0.5 * (eps + eps.T)
            return energy_fn(R, neighbor, perturbation=eye + sym, **kwargs)

        de = jax.grad(energy)(jnp.zeros((3, 3), R.dtype))
        return de / volume(box)

    return stress_fn
