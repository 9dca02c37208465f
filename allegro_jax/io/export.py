"""A trained model as a ``jax.export`` artefact: serialized StableHLO that jax alone runs.

``allegro-jax export --model RUN --out DIR --atoms N --edges E`` (or
:func:`export_model`) writes

* ``DIR/allegro.jaxexport``: ``jax.export.Exported.serialize()`` bytes of one program
  with the parameters baked in, lowered for the ``cpu`` and ``cuda`` platforms;
* ``DIR/contract.json``: the contract below, the model's ``type_names``, ``r_max``, dtype,
  capacities, platforms and the exporting versions.

A program with jax (and numpy) only runs it::

    import jax, numpy as np
    exported = jax.export.deserialize(bytearray(open("DIR/allegro.jaxexport", "rb").read()))
    energy, atomic_energies, forces, virial = exported.call(
        positions, cell, species, atom_mask, edge_index, edge_shift, edge_mask)

(``jax.config.update("jax_enable_x64", True)`` first for a float64 export.)

Contract (units Å, eV; ``N`` atoms and ``E`` edges are the fixed capacities; ``F`` is
float32 or float64 as exported):

inputs
  ``positions`` ``F[N, 3]``: Cartesian coordinates, Å.
  ``cell`` ``F[3, 3]``: lattice vectors as rows, Å (zeros without periodicity).
  ``species`` ``int32[N]``: index into ``type_names`` (any valid index on padding rows).
  ``atom_mask`` ``bool[N]``: True for the atoms whose energy counts. False for padding
      rows, and for atoms that are only neighbours (e.g. ghost atoms owned elsewhere).
  ``edge_index`` ``int32[2, E]``: row 0 the centre atom ``i``, row 1 the neighbour ``j``;
      every ordered pair with ``|r_ij| < r_max`` must be present, in both directions, for
      every atom whose ``atom_mask`` is True. Padding columns: any index in ``[0, N)``.
  ``edge_shift`` ``F[E, 3]``: integer image shifts ``S``: ``r_ij = x_j - x_i + S @ cell``
      (zeros when neighbours are explicit images, as LAMMPS ghosts are).
  ``edge_mask`` ``bool[E]``: True for real edges, False for padding columns.
outputs (a tuple)
  ``energy`` ``F[]``: ``Σ_i atom_mask_i E_i``, eV.
  ``atomic_energies`` ``F[N]``: ``E_i`` where ``atom_mask``, 0 elsewhere, eV.
  ``forces`` ``F[N, 3]``: ``-∂energy/∂positions`` on EVERY row (atoms with ``atom_mask``
      False get the force their neighbours' energies exert on them, which a domain
      decomposition sends back to their owners), eV/Å.
  ``virial`` ``F[3, 3]``: ``-∂energy/∂ε`` for a symmetric strain of positions and cell
      together, eV (stress = ``-virial / volume``; LAMMPS's pressure is ``virial / V``).

Padding rows and columns contribute nothing; edges longer than ``r_max`` are allowed (the
cutoff envelope gives them zero weight) but cost compute. The capacities are the
artefact's only shapes: a system needs ``n_atoms <= N`` and ``n_edges <= E``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from allegro_jax._version import __version__
from allegro_jax.config import AllegroConfig
from allegro_jax.data.graph import AtomicGraph, Structure
from allegro_jax.data.padding import graph_inputs_from_structure
from allegro_jax.io.model import load_model, read_ensemble_size
from allegro_jax.nn.cpu_kernel import use_cpu_kernel
from allegro_jax.nn.model import make_model

ARTEFACT = "allegro.jaxexport"
CONTRACT = "contract.json"
FORMAT = "allegro-jax-export/1"
INPUTS = ("positions", "cell", "species", "atom_mask", "edge_index", "edge_shift", "edge_mask")
OUTPUTS = ("energy", "atomic_energies", "forces", "virial")


class ExportError(ValueError):
    """The export cannot be made as asked (message says why)."""


def _dtype_of(name: str):
    if name not in ("float32", "float64"):
        raise ExportError(f"dtype must be float32 or float64, got {name!r}")
    return jnp.float64 if name == "float64" else jnp.float32


def make_export_fn(config: AllegroConfig, params: Any, dtype: str):
    """The function that is exported: ``fn(*INPUTS) -> OUTPUTS`` with ``params`` baked in."""
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise ExportError(
            "a float64 export needs 64-bit JAX: jax.config.update('jax_enable_x64', True) "
            "(allegro-jax export does this itself)"
        )
    config = dataclasses.replace(config, model_dtype=dtype)
    _, apply_fn = make_model(config)
    fdtype = _dtype_of(dtype)
    params = jax.tree.map(lambda p: jnp.asarray(p, fdtype), params)

    def fn(positions, cell, species, atom_mask, edge_index, edge_shift, edge_mask):
        n = positions.shape[0]

        def energy(pos, eps):
            deform = jnp.eye(3, dtype=pos.dtype) + 0.5 * (eps + eps.T)
            graph = AtomicGraph(
                positions=pos @ deform,
                species=species.astype(jnp.int32),
                node_graph=jnp.zeros(n, jnp.int32),
                node_mask=atom_mask,
                edge_center=edge_index[0].astype(jnp.int32),
                edge_neighbor=edge_index[1].astype(jnp.int32),
                edge_shift=edge_shift,
                edge_mask=edge_mask,
                cell=(cell @ deform)[None],
                pbc=jnp.zeros((1, 3), bool),
                n_node=jnp.sum(atom_mask, dtype=jnp.int32)[None],
                graph_mask=jnp.ones(1, bool),
            )
            out = apply_fn(params, graph, forces=False)
            return out["energy"][0], out["atomic_energies"]

        zero = jnp.zeros((3, 3), positions.dtype)
        (e, e_atoms), (de_dx, de_deps) = jax.value_and_grad(energy, argnums=(0, 1), has_aux=True)(
            positions, zero
        )
        return e, e_atoms, -de_dx, -0.5 * (de_deps + de_deps.T)

    return fn


def input_specs(n_atoms: int, n_edges: int, dtype: str):
    """``jax.ShapeDtypeStruct`` of each input, in :data:`INPUTS` order."""
    f = _dtype_of(dtype)
    return (
        jax.ShapeDtypeStruct((n_atoms, 3), f),
        jax.ShapeDtypeStruct((3, 3), f),
        jax.ShapeDtypeStruct((n_atoms,), jnp.int32),
        jax.ShapeDtypeStruct((n_atoms,), jnp.bool_),
        jax.ShapeDtypeStruct((2, n_edges), jnp.int32),
        jax.ShapeDtypeStruct((n_edges, 3), f),
        jax.ShapeDtypeStruct((n_edges,), jnp.bool_),
    )


def export_model(
    config: AllegroConfig,
    params: Any,
    *,
    n_atoms: int,
    n_edges: int,
    dtype: str | None = None,
    platforms: Sequence[str] = ("cpu", "cuda"),
):
    """``jax.export.Exported`` of energy, per-atom energies, forces and virial.

    Args:
        config: the model configuration.
        params: its parameters (a single model, not an ensemble).
        n_atoms: atom capacity ``N`` (padding included).
        n_edges: edge capacity ``E``.
        dtype: ``"float32"`` or ``"float64"`` (default: the model's).
        platforms: lowering platforms (``jax.export`` multi-platform lowering; no device of
            those kinds is needed to export).

    Returns:
        The ``Exported`` (``.serialize()`` gives the artefact's bytes).
    """
    dtype = dtype or config.model_dtype
    if n_atoms < 1 or n_edges < 1:
        raise ExportError(f"capacities must be positive, got atoms={n_atoms}, edges={n_edges}")

    fn = make_export_fn(config, params, dtype)
    # no TF32 on GPUs: forces stay exact; XLA operations only (this project's CPU kernels
    # are custom calls that a process with jax alone does not have)
    with jax.default_matmul_precision("highest"), use_cpu_kernel(False):
        return jax.export.export(jax.jit(fn), platforms=tuple(platforms))(
            *input_specs(n_atoms, n_edges, dtype)
        )


def contract(config: AllegroConfig, n_atoms: int, n_edges: int, dtype: str, platforms) -> dict:
    return {
        "format": FORMAT,
        "artefact": ARTEFACT,
        "type_names": list(config.type_names),
        "r_max": config.r_max,
        "units": {"length": "Å", "energy": "eV", "force": "eV/Å", "virial": "eV"},
        "dtype": dtype,
        "n_atoms": n_atoms,
        "n_edges": n_edges,
        "platforms": list(platforms),
        "inputs": {
            "positions": [[n_atoms, 3], dtype],
            "cell": [[3, 3], dtype],
            "species": [[n_atoms], "int32"],
            "atom_mask": [[n_atoms], "bool"],
            "edge_index": [[2, n_edges], "int32"],
            "edge_shift": [[n_edges, 3], dtype],
            "edge_mask": [[n_edges], "bool"],
        },
        "outputs": {
            "energy": [[], dtype],
            "atomic_energies": [[n_atoms], dtype],
            "forces": [[n_atoms, 3], dtype],
            "virial": [[3, 3], dtype],
        },
        "conventions": (
            "r_ij = x_j - x_i + edge_shift @ cell; edge_index[0] = i (centre), "
            "edge_index[1] = j; every ordered pair within r_max of every atom with atom_mask "
            "True, both directions; energy = sum of E_i over atom_mask; forces = "
            "-d energy / d positions on every row; virial = -d energy / d strain"
        ),
        "model": config.to_dict(),
        "versions": {"allegro_jax": __version__, "jax": jax.__version__},
    }


def write_export(
    out_dir: str | os.PathLike,
    config: AllegroConfig,
    params: Any,
    *,
    n_atoms: int,
    n_edges: int,
    dtype: str | None = None,
    platforms: Sequence[str] = ("cpu", "cuda"),
) -> Path:
    """Write ``allegro.jaxexport`` and ``contract.json`` into ``out_dir``; returns it."""
    dtype = dtype or config.model_dtype
    exported = export_model(
        config, params, n_atoms=n_atoms, n_edges=n_edges, dtype=dtype, platforms=platforms
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / ARTEFACT).write_bytes(exported.serialize())
    doc = contract(config, n_atoms, n_edges, dtype, platforms)
    (out / CONTRACT).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return out


def export_inputs(
    structure: Structure, contract: dict, *, backend: str = "vesin"
) -> tuple[np.ndarray, ...]:
    """The padded inputs (numpy, :data:`INPUTS` order) for one structure.

    Raises:
        ExportError: the structure does not fit the capacities.
    """
    dtype = np.dtype(contract["dtype"])
    n, e = contract["n_atoms"], contract["n_edges"]
    g = graph_inputs_from_structure(
        structure, contract["type_names"], contract["r_max"], backend=backend
    )
    if g.n_atoms > n or g.n_edges > e:
        raise ExportError(
            f"the structure has {g.n_atoms} atoms and {g.n_edges} edges; the export holds "
            f"at most {n} atoms and {e} edges"
        )
    positions = np.zeros((n, 3), dtype)
    positions[: g.n_atoms] = g.positions
    species = np.zeros(n, np.int32)
    species[: g.n_atoms] = g.species
    atom_mask = np.zeros(n, bool)
    atom_mask[: g.n_atoms] = True
    edge_index = np.zeros((2, e), np.int32)
    edge_index[0, : g.n_edges] = g.centers
    edge_index[1, : g.n_edges] = g.neighbors
    edge_shift = np.zeros((e, 3), dtype)
    edge_shift[: g.n_edges] = g.shifts
    edge_mask = np.zeros(e, bool)
    edge_mask[: g.n_edges] = True
    return positions, g.cell.astype(dtype), species, atom_mask, edge_index, edge_shift, edge_mask


# -- lammps-jax (pair_style jax/kk) bundles ---------------------------------------------------

LAMMPS_JAX_NOTE = """\
lammps-jax bundle (pair_style jax/kk, Kokkos builds of LAMMPS): written with n_hops=2, the
plugin's ghost scheme: the ghost shell is 2*r_max + skin, every owned AND ghost atom gets a
full neighbour row, the program counts the energies of owned rows only and returns forces
on every row, which LAMMPS (newton on) sends back to their owners; the virial is LAMMPS's
f.r over owned and ghost rows. For a strictly local model this is exact. The plugin's
one-hop modes are not: with newton on it packs a HALF list (each boundary pair on one rank
only), which splits an atom's environment between ranks, and with newton off it drops the
forces on ghost rows; both are right for pair potentials only. Its communicating mode
(one-cutoff shell, full rows for owned atoms, ghost forces sent back) would be exact and
cheaper, but it requires the model to call a feature exchange, which a strictly local
model has no use for. LAMMPS atom type t is model type t-1 (the types of the data file must
follow type_names)."""


def make_lammps_jax_energy_fn(config: AllegroConfig, params: Any, dtype: str):
    """``energy_fn(positions, species, graph) -> [max_atoms]`` per-atom energies in the
    lammps-jax ABI (``graph.senders`` = centre rows, ``graph.receivers`` = neighbours;
    padding index ``max_atoms`` with ``edge_mask`` False; species = LAMMPS type - 1)."""
    config = dataclasses.replace(config, model_dtype=dtype)
    _, apply_fn = make_model(config)
    fdtype = _dtype_of(dtype)
    params = jax.tree.map(lambda p: jnp.asarray(p, fdtype), params)
    n_types = config.num_types

    def energy_fn(positions, species, graph):
        n, e = positions.shape[0], graph.edge_mask.shape[0]
        mask = graph.edge_mask
        g = AtomicGraph(
            positions=positions.astype(fdtype),
            species=jnp.clip(species, 0, n_types - 1).astype(jnp.int32),
            node_graph=jnp.zeros(n, jnp.int32),
            node_mask=jnp.ones(n, bool),
            edge_center=jnp.where(mask, graph.senders, 0).astype(jnp.int32),
            edge_neighbor=jnp.where(mask, graph.receivers, 0).astype(jnp.int32),
            edge_shift=jnp.zeros((e, 3), fdtype),
            edge_mask=mask,
            cell=jnp.zeros((1, 3, 3), fdtype),
            pbc=jnp.zeros((1, 3), bool),
            n_node=jnp.full(1, n, jnp.int32),
            graph_mask=jnp.ones(1, bool),
        )
        return apply_fn(params, g, forces=False)["atomic_energies"]

    return energy_fn


def write_lammps_jax_bundle(
    path: str | os.PathLike,
    config: AllegroConfig,
    params: Any,
    *,
    max_atoms: int,
    max_edges: int,
    dtype: str | None = None,
    platform: str = "cuda",
) -> dict:
    """A lammps-jax JSON bundle (``pair_style jax/kk``) of the model, exact for any number
    of ranks (:data:`LAMMPS_JAX_NOTE`). Needs ``pip install lammps-jax``.

    ``max_atoms`` counts owned + ghost atoms of a rank (ghost shell ``2 r_max + skin``) and
    ``max_edges`` the edges of ALL those rows.
    """
    try:
        from lammps_jax.export import export_model as lammps_jax_export
    except ImportError:
        raise ExportError(
            "the lammps-jax format needs the lammps-jax package: pip install lammps-jax"
        ) from None
    dtype = dtype or config.model_dtype
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise ExportError("a float64 bundle needs jax.config.update('jax_enable_x64', True)")

    energy_fn = make_lammps_jax_energy_fn(config, params, dtype)
    with use_cpu_kernel(False):  # XLA operations only: no custom calls in the bundle
        return lammps_jax_export(
            energy_fn=energy_fn,
            path=path,
            max_atoms=int(max_atoms),
            max_edges=int(max_edges),
            cutoff=float(config.r_max),
            unit_style="metal",
            precision=dtype,
            n_hops=2,
            n_species=config.num_types,
            platform=platform,
        )


# -- command line ------------------------------------------------------------------------------


def add_export_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a jax.export artefact (serialized StableHLO for cpu and cuda) of a trained "
        "model's energy, forces and virial, or a lammps-jax bundle",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--model", required=True, help="trained model or run directory")
    p.add_argument("--out", required=True, help="output directory (jax) or .json file")
    p.add_argument("--atoms", type=int, required=True, help="atom capacity (padding included)")
    p.add_argument("--edges", type=int, required=True, help="edge capacity")
    p.add_argument("--dtype", choices=("float32", "float64"), help="default: the model's")
    p.add_argument("--platforms", default="cpu,cuda", help="comma-separated (jax format)")
    p.add_argument(
        "--format",
        choices=("jax", "lammps-jax"),
        default="jax",
        help="jax: allegro.jaxexport + contract.json; lammps-jax: a pair_style jax/kk bundle",
    )
    p.add_argument(
        "--lammps-jax-platform",
        choices=("cuda", "cpu"),
        default="cuda",
        help="PJRT plugin the lammps-jax bundle runs on",
    )
    p.set_defaults(func=_export_main)


def _export_main(args) -> int:
    jax.config.update("jax_enable_x64", True)

    try:
        if read_ensemble_size(args.model) != 1:
            raise ExportError(f"{args.model} is an ensemble; export one model")
        config, params, _ = load_model(args.model)
        if args.format == "jax":
            platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
            out = write_export(
                args.out,
                config,
                params,
                n_atoms=args.atoms,
                n_edges=args.edges,
                dtype=args.dtype,
                platforms=platforms,
            )
            print(
                f"wrote {out / ARTEFACT} and {out / CONTRACT} ({', '.join(platforms)}, "
                f"{args.dtype or config.model_dtype}, {args.atoms} atoms, {args.edges} edges)"
            )
        else:
            write_lammps_jax_bundle(
                args.out,
                config,
                params,
                max_atoms=args.atoms,
                max_edges=args.edges,
                dtype=args.dtype,
                platform=args.lammps_jax_platform,
            )
            print(
                f"wrote {args.out} (lammps-jax bundle, {args.lammps_jax_platform})\n"
                + LAMMPS_JAX_NOTE
            )
    except (ExportError, FileNotFoundError, ValueError) as err:
        print(f"ERROR (allegro-jax export): {err}", file=sys.stderr)
        return 1
    return 0
