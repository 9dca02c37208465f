"""RDF, unwrapping, MSD and diffusion on cases with known answers."""

from __future__ import annotations

import ase.build
import numpy as np
import pytest

from allegro_jax.md.analysis import (
    diffusion_coefficient,
    mean_squared_displacement,
    minimum_image_vectors,
    rdf,
    remove_center_of_mass_drift,
    unwrap,
)


def test_ideal_gas_rdf_is_one():
    rng = np.random.default_rng(0)
    cell = np.diag([10.0, 11.0, 12.0])
    pos = rng.uniform(size=(40, 200, 3)) @ cell
    types = np.arange(200) % 2 == 0
    edges = np.linspace(1.0, 5.0, 9)
    for a, b in ((types, types), (types, ~types), (np.ones(200, bool), np.ones(200, bool))):
        g = rdf(pos, cell, a, b, edges)
        np.testing.assert_allclose(g, 1.0, atol=0.06)


def test_ideal_gas_rdf_triclinic():
    rng = np.random.default_rng(1)
    cell = np.array([[10.0, 0, 0], [3.0, 9.5, 0], [-2.0, 1.5, 10.5]])
    pos = rng.uniform(size=(40, 150, 3)) @ cell
    sel = np.ones(150, bool)
    g = rdf(pos, cell, sel, sel, np.linspace(1.0, 4.0, 7))
    np.testing.assert_allclose(g, 1.0, atol=0.06)


def test_fcc_lattice_peaks():
    # fcc Cu: neighbour shells at a sqrt(n/2), n = 1, 2, 3, ... (12 in the first)
    a = 3.6
    atoms = ase.build.bulk("Cu", "fcc", a=a, cubic=True).repeat(4)
    sel = np.ones(len(atoms), bool)
    edges = np.linspace(0.0, 7.0, 701)
    g = rdf(atoms.positions, np.array(atoms.cell), sel, sel, edges)
    r = 0.5 * (edges[1:] + edges[:-1])
    peaks = r[g > 0]
    expected = a * np.sqrt(np.arange(1, 8) / 2)
    expected = expected[expected < 7.0]
    np.testing.assert_allclose(np.unique(np.round(peaks, 1)), np.round(expected, 1), atol=0.011)
    # coordination number of the first shell: ((N - 1) / V) ∫ g 4π r² dr = 12
    rho = (len(atoms) - 1) / atoms.get_volume()
    shell = 4 / 3 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    first = r < 0.85 * a
    assert rho * np.sum(g[first] * shell[first]) == pytest.approx(12.0)


def test_rdf_rejects_range_beyond_half_cell():
    cell = np.eye(3) * 8.0
    with pytest.raises(ValueError, match="half the smallest cell width"):
        rdf(np.zeros((1, 2, 3)), cell, np.ones(2, bool), np.ones(2, bool), np.linspace(0, 5, 6))


def test_minimum_image_triclinic_matches_brute_force():
    rng = np.random.default_rng(2)
    cell = np.array([[6.0, 0, 0], [4.5, 5.0, 0], [-2.5, 2.0, 6.0]])
    d = rng.uniform(-20, 20, size=(200, 3))
    got = minimum_image_vectors(d, cell)
    n = np.arange(-12, 13)
    shifts = np.stack(np.meshgrid(n, n, n, indexing="ij"), -1).reshape(-1, 3) @ cell
    brute = np.min(np.linalg.norm(d[:, None] + shifts[None], axis=-1), axis=1)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), brute, rtol=1e-12)


def test_unwrap_and_msd_of_linear_drift():
    cell = np.diag([5.0, 6.0, 7.0])
    velocity = np.array([0.7, -0.4, 1.1])  # Å per frame, several box lengths in total
    start = np.random.default_rng(3).uniform(size=(10, 3)) @ cell
    true = start[None] + np.arange(50)[:, None, None] * velocity
    wrapped = true - np.floor(true @ np.linalg.inv(cell)) @ cell
    unwrapped = unwrap(wrapped, cell)
    np.testing.assert_allclose(unwrapped, true, atol=1e-10)
    lags, msd = mean_squared_displacement(unwrapped, max_lag=20)
    np.testing.assert_allclose(msd, (lags * np.linalg.norm(velocity)) ** 2, rtol=1e-10)
    # the same drift for every atom is a centre-of-mass motion: removed, nothing is left
    still = remove_center_of_mass_drift(unwrapped, np.ones(10))
    assert np.max(mean_squared_displacement(still)[1]) < 1e-20


def test_diffusion_coefficient_of_a_random_walk():
    # 3D random walk: steps N(0, s²) per component and frame -> MSD = 3 s² t, D = s²/2
    rng = np.random.default_rng(4)
    s, dt_ps = 0.1, 0.1
    x = np.cumsum(rng.normal(0, s, size=(2000, 200, 3)), axis=0)
    lags, msd = mean_squared_displacement(x, max_lag=100)
    d, slope, _ = diffusion_coefficient(lags * dt_ps, msd, (2.0, 8.0))
    expected = s**2 / 2 / dt_ps * 1e-4  # Å²/ps -> cm²/s
    assert d == pytest.approx(expected, rel=0.05)
    with pytest.raises(ValueError, match="fewer than two"):
        diffusion_coefficient(lags * dt_ps, msd, (50.0, 60.0))
