"""The rank-local graph (owned atoms + ghost centres) is exact, without LAMMPS.

LAMMPS's ghost atoms are emulated (``lammps_helpers.emulate_ranks``): a periodic structure
is split into slabs (owned atoms); each slab's ghosts are all periodic images (of every
atom, its own included) within ``2 r_max + skin`` of an owned atom. The owned forces, the
summed energies and the summed virials must equal the single-graph model's.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from lammps_helpers import emulate_ranks, reference, tiny_config, triclinic_cell, water

from allegro_jax.data.graph import Structure
from allegro_jax.lammps.graph import build_local_graph, local_graph_budget
from allegro_jax.nn.model import make_model, plan_atom_chunks


@pytest.mark.parametrize("system", ["water", "triclinic"])
def test_owned_forces_energy_virial_are_exact(system):
    structure = water() if system == "water" else triclinic_cell()
    names = ("H", "O") if system == "water" else ("O", "Si")
    config = tiny_config(names, "float64")
    init_fn, apply_fn = make_model(config)
    params = init_fn(jax.random.PRNGKey(1))
    apply = jax.jit(apply_fn, static_argnames=("forces", "stress", "chunks"))
    cases = {n: emulate_ranks(structure, n, 2 * config.r_max + 0.5) for n in (1, 2, 3)}
    pos = cases[1][0]
    wrapped = Structure(numbers=structure.numbers, positions=pos, cell=structure.cell, pbc=True)
    ref = reference(config, params, wrapped)
    ref_atoms = np.asarray(
        apply(params, _graph_of(config, wrapped), stress=True)["atomic_energies"]
    )
    species = np.array([names.index(s) for s in wrapped.to_ase().get_chemical_symbols()])
    # one padded shape for every rank of every case: one compilation
    budget = None
    for _, ranks in cases.values():
        for x, idx, n_owned in ranks:
            budget = build_local_graph(x, species[idx], n_owned, config.r_max, budget=budget)[2]
    # without atom IDs: every ghost image is a node; with them (LAMMPS passes its atom IDs):
    # images of the rank's own atoms are folded into them, other atoms are centres once
    for n_ranks, (_, ranks) in cases.items():
        for with_tags in (False, True):
            energy, virial = 0.0, np.zeros((3, 3))
            forces = np.full((structure.n_atoms, 3), np.nan)
            for x, idx, n_owned in ranks:
                graph, counts, _, nodes = build_local_graph(
                    x,
                    species[idx],
                    n_owned,
                    config.r_max,
                    budget=budget,
                    tags=idx if with_tags else None,
                )
                out = apply(params, graph, stress=True)
                if with_tags and n_ranks == 2:  # block-wise (edges sorted by centre): same
                    blocks = apply(params, graph, stress=True, chunks=plan_atom_chunks(graph, 40))
                    for key in ("energy", "forces", "virial", "atomic_energies"):
                        np.testing.assert_allclose(blocks[key], out[key], rtol=1e-12, atol=1e-13)
                energy += float(out["energy"][0])
                virial += np.asarray(out["virial"][0])
                forces[idx[:n_owned]] = np.asarray(out["forces"][:n_owned])
                assert counts.n_owned == n_owned
                assert np.array_equal(nodes[:n_owned], np.arange(n_owned))
                if with_tags and n_ranks == 1:  # the single-process graph, no ghost nodes
                    assert counts.n_nodes == n_owned and counts.n_ghost_images > 0
                else:
                    assert counts.n_ghost_centres > 0
                # ghost centres: the energies of the same atoms seen from another rank/image
                centres = nodes[: n_owned + counts.n_ghost_centres]
                np.testing.assert_allclose(
                    np.asarray(out["atomic_energies"][: centres.size]),
                    ref_atoms[idx[centres]],
                    rtol=1e-12,
                )
            scale_f, scale_w = np.abs(ref["forces"]).max(), np.abs(ref["virial"]).max()
            case = (n_ranks, with_tags)
            assert abs(energy - ref["energy"]) <= 1e-12 * abs(ref["energy"]), case
            np.testing.assert_allclose(forces, ref["forces"], rtol=0, atol=1e-12 * scale_f)
            np.testing.assert_allclose(virial, ref["virial"], rtol=0, atol=1e-12 * scale_w)


def _graph_of(config, structure):
    from allegro_jax.data.padding import build_graph

    return build_graph([structure], config.type_names, config.r_max, dtype=np.float64)


def test_no_owned_atoms_and_budget_growth():
    x = np.zeros((0, 3))
    graph, counts, _, _ = build_local_graph(x, np.zeros(0, int), 0, 3.0)
    assert counts.n_nodes == 0 and counts.n_edges == 0 and not graph.edge_mask.any()
    small = local_graph_budget(counts)
    big = local_graph_budget(
        type(counts)(
            n_owned=500,
            n_ghost_centres=10,
            n_ghost_neighbours=10,
            n_ghost_available=30,
            n_ghost_images=0,
            n_owned_edges=9000,
            n_ghost_edges=100,
        )
    )
    assert local_graph_budget(counts, big) == big and big.n_nodes > small.n_nodes
