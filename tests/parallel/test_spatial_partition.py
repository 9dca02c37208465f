"""Host-side pieces of allegro_jax.parallel on one device: partitions, splits, config, errors.

The multi-device equalities run in a subprocess (test_multidevice.py)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from multidevice_checks import _config, cluster, crystal

from allegro_jax.data.graph import Structure
from allegro_jax.data.neighborlist import neighbor_list
from allegro_jax.data.padding import build_graph
from allegro_jax.nn.model import make_model
from allegro_jax.parallel import (
    ShardedSystem,
    bisection_owners,
    make_mesh,
    partition_structure,
    split_indices,
)

TYPES = ("O", "Si")


@pytest.mark.parametrize("n_shards", [1, 2, 3, 5, 8])
def test_bisection_is_balanced_and_compact(n_shards):
    s = crystal()
    owner = bisection_owners(s.positions, s.cell, s.pbc, n_shards)
    counts = np.bincount(owner, minlength=n_shards)
    assert counts.sum() == s.n_atoms and counts.max() - counts.min() <= 1 + (n_shards % 2)
    if n_shards == 2:  # two slabs: each shard's fractional coordinate range is half the cell
        frac = s.positions @ np.linalg.inv(s.cell)
        frac -= np.floor(frac)
        spans = [np.ptp(frac[owner == d], axis=0).min() for d in range(2)]
        assert max(spans) < 0.6


def test_bisection_more_shards_than_atoms_and_errors():
    s = cluster(3)
    owner = bisection_owners(s.positions, s.cell, s.pbc, 8)
    assert sorted(np.unique(owner).tolist()) == sorted(set(owner.tolist()))
    assert len(owner) == 3 and owner.max() < 8
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n_shards"):
            bisection_owners(s.positions, s.cell, s.pbc, bad)


@pytest.mark.parametrize("system", ["crystal", "cluster"])
@pytest.mark.parametrize("skin", [0.0, 0.7])
def test_partition_keeps_every_edge_once_with_its_halo(system, skin):
    s = crystal() if system == "crystal" else cluster()
    r_max, n_shards = 4.0, 3
    part = partition_structure(s, TYPES, r_max, n_shards, skin=skin)
    a = part.arrays
    centers, neighbors, shifts = neighbor_list(s.positions, s.cell, s.pbc, r_max + skin)
    triples = zip(centers.tolist(), neighbors.tolist(), map(tuple, shifts.tolist()), strict=True)
    want = sorted(triples)
    got = []
    for d in range(n_shards):
        m = a.edge_mask[d]
        ci, nj = a.edge_center_global[d][m], a.edge_neighbor_global[d][m]
        # local indices point at the same global atoms; every centre is owned by shard d
        np.testing.assert_array_equal(a.node_global[d][a.edge_center[d][m]], ci)
        np.testing.assert_array_equal(a.node_global[d][a.edge_neighbor[d][m]], nj)
        assert np.all(part.owner[ci] == d) and np.all(a.node_mask[d][a.edge_center[d][m]])
        # halo = the neighbours owned elsewhere, masked out of the energy
        n_own, n_halo = part.n_owned[d], part.n_halo[d]
        halo = a.node_global[d][n_own : n_own + n_halo]
        assert set(halo.tolist()) == set(nj.tolist()) - set(np.flatnonzero(part.owner == d))
        assert not a.node_mask[d][n_own:].any() and a.node_mask[d][:n_own].all()
        # padding edges are masked self-loops of the last (padding) node
        assert np.all(a.edge_center[d][~m] == a.species.shape[1] - 1)
        shift = map(tuple, a.edge_shift[d][m].astype(int).tolist())
        got += zip(ci.tolist(), nj.tolist(), shift, strict=True)
    assert sorted(got) == want
    assert part.n_owned.sum() == s.n_atoms and part.n_edges.sum() == len(want)
    assert part.summary()["n_shards"] == n_shards


def test_partition_budget_only_grows_and_errors():
    s = crystal()
    big = partition_structure(s, TYPES, 4.0, 2, min_budget=(500, 5000))
    assert big.local_budget[0] >= 500 and big.local_budget[1] >= 5000
    with pytest.raises(ValueError, match="skin"):
        partition_structure(s, TYPES, 4.0, 2, skin=-1.0)
    with pytest.raises(ValueError, match="type"):
        partition_structure(s, ("H",), 4.0, 2)


def test_split_indices_uneven_and_empty_groups():
    groups = split_indices(np.arange(7), 8)
    assert [len(g) for g in groups] == [1] * 7 + [0]
    assert np.concatenate(groups).tolist() == list(range(7))
    with pytest.raises(ValueError):
        split_indices([1, 2], 0)


def test_make_mesh_errors_name_the_fix():
    n = len(jax.devices())
    assert make_mesh().shape["data"] == n
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        make_mesh(n + 1)
    with pytest.raises(ValueError, match="num_devices"):
        make_mesh(0)


def test_sharded_system_on_one_device_rebuilds_and_matches():
    """One device: the halo machinery is trivial, but the skin check and rebuild are not."""
    config = _config("float64")
    params = make_model(config)[0](jax.random.PRNGKey(0))
    s = cluster(12)
    system = ShardedSystem(config, params, s, make_mesh(1), skin=0.5, stress=False)
    _, apply_fn = make_model(config)
    apply = jax.jit(apply_fn)
    for step, shift in enumerate([0.0, 0.2, 0.3]):  # the last move exceeds skin / 2
        pos = s.positions + shift * np.eye(3)[0] * (np.arange(s.n_atoms) % 2)[:, None]
        got = system(pos)
        moved = Structure(numbers=s.numbers, positions=pos)
        want = apply(params, build_graph([moved], TYPES, config.r_max, dtype=np.float64))
        np.testing.assert_allclose(got["energy"], want["energy"][0], rtol=1e-12)
        np.testing.assert_allclose(got["forces"], want["forces"][: s.n_atoms], atol=1e-12)
        assert system.n_builds == (1 if step < 2 else 2)
    with pytest.raises(ValueError, match="shape"):
        system(s.positions[:3])


def test_train_config_data_parallel_keys():
    from allegro_jax.train.config import TrainConfig

    base = dict(dataset_file_name="x.npz", n_val=1, model={"r_max": 4.0})
    cfg = TrainConfig(**base, data_parallel=True, num_devices=2)
    assert cfg.data_parallel and cfg.num_devices == 2
    assert not TrainConfig(**base).data_parallel
    with pytest.raises(ValueError, match="data_parallel"):
        TrainConfig(**base, data_parallel="yes")
    with pytest.raises(ValueError, match="num_devices"):
        TrainConfig(**base, num_devices=0)
