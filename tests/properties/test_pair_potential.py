"""Fixed pair terms (``pair_potential``: Morse, barrier): values, forces, config, statistics."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from systems import random_molecule, random_periodic

from allegro_jax import AllegroConfig, make_model
from allegro_jax.data.graph import Structure
from allegro_jax.data.padding import build_graph
from allegro_jax.io.model import load_model, save_model
from allegro_jax.nn.model import subtract_pair_potential
from allegro_jax.train.run_data import complete_model_config

OH = dict(kind="morse", types=["O", "H"], D=4.4834, a=2.287, r0=0.981, r_cut=3.0)
BARRIER = dict(kind="barrier", types=["H", "O"], height=1.0, r_lo=1.1, r_hi=1.36)
R_MAX = 3.5


def config(generation="current", **kw) -> AllegroConfig:
    base = dict(
        type_names=("H", "O"),
        r_max=R_MAX,
        generation=generation,
        l_max=1,
        num_layers=1,
        num_scalar_features=8,
        num_tensor_features=4,
        avg_num_neighbors=3.0,
        two_body_latent_mlp_latent_dimensions=(8,),
        latent_mlp_latent_dimensions=(8,),
        edge_eng_mlp_latent_dimensions=(8,),
        model_dtype="float64",
        pair_potential=[OH, BARRIER],
    )
    return AllegroConfig(**(base | kw))


def morse_times_envelope(r, D, a, r0, r_cut, **_):
    """The formula written out (polynomial envelope, p = 6)."""
    x = r / r_cut
    u = 1 - 28 * x**6 + 48 * x**7 - 21 * x**8 if x < 1 else 0.0
    return D * ((1 - np.exp(-a * (r - r0))) ** 2 - 1) * u


def barrier(r, height, r_lo, r_hi, **_):
    t = (2 * r - r_lo - r_hi) / (r_hi - r_lo)
    return height * (1 - t * t) ** 3 if abs(t) < 1 else 0.0


def energy(cfg, params, structures, forces=False):
    _, apply_fn = make_model(cfg)
    g = build_graph(structures, cfg.type_names, cfg.r_max, dtype=np.float64)
    out = apply_fn(params, g, forces=forces)
    n = sum(len(s.numbers) for s in structures)
    return np.asarray(out["energy"])[: len(structures)], (
        np.asarray(out["forces"])[:n] if forces else None
    )


@pytest.mark.parametrize("generation", ["current", "paper"])
def test_dimer_energy_is_the_formula(generation):
    with_pair = config(generation)
    without = with_pair.replace(pair_potential=())
    params = make_model(with_pair)[0](jax.random.PRNGKey(0))
    for numbers, expect_pair in (([8, 1], True), ([1, 1], False), ([8, 8], False)):
        for r in (0.8, 0.981, 1.1, 1.15, 1.23, 1.3, 1.4, 2.2, 2.99, 3.2):
            s = Structure(numbers=np.array(numbers), positions=np.array([[0, 0, 0], [r, 0, 0.0]]))
            (e1,), _ = energy(with_pair, params, [s])
            (e0,), _ = energy(without, params, [s])
            want = morse_times_envelope(r, **OH) + barrier(r, **BARRIER) if expect_pair else 0.0
            np.testing.assert_allclose(e1 - e0, want, rtol=1e-10, atol=1e-12)
    # the well: -D at r0 up to the envelope's (small) factor; the barrier's top at mid-range
    assert morse_times_envelope(0.981, **OH) == pytest.approx(-4.4834, rel=0.02)
    assert barrier(1.23, **BARRIER) == pytest.approx(1.0)


def test_forces_are_minus_gradient_with_pair_term():
    cfg = config()
    params = make_model(cfg)[0](jax.random.PRNGKey(1))
    rng = np.random.default_rng(0)
    s = random_periodic(rng, n=6, numbers=(8, 1), min_dist=0.9)
    _, f = energy(cfg, params, [s], forces=True)
    h = 1e-5
    for atom, axis in ((0, 0), (1, 2), (4, 1)):
        plus, minus = (s.positions.copy() for _ in range(2))
        plus[atom, axis] += h
        minus[atom, axis] -= h
        (ep,), _ = energy(cfg, params, [Structure(s.numbers, plus, s.cell, s.pbc)])
        (em,), _ = energy(cfg, params, [Structure(s.numbers, minus, s.cell, s.pbc)])
        assert f[atom, axis] == pytest.approx(-(ep - em) / (2 * h), rel=1e-6, abs=1e-8)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(types=["O", "N"]), r"types \['N'\] are not in type_names"),
        (dict(types=["O"]), "two chemical symbols"),
        (dict(r_cut=4.0), "r_cut <= r_max"),
        (dict(r_cut=0.9), "need r0 < r_cut"),
        (dict(D=-1.0), "D must be > 0"),
        (dict(a=float("nan")), "a must be a finite number"),
        (dict(kind="lj"), "unknown kind 'lj'"),
        (dict(kind="barrier"), r"\(barrier\): missing keys \['height', 'r_lo', 'r_hi'\]"),
        (dict(depth=1.0), r"unknown keys \['depth'\]"),
    ],
)
def test_bad_pair_potential_is_named(change, match):
    with pytest.raises((ValueError, TypeError), match=match):
        config(pair_potential=[OH | change])
    bad = {k: v for k, v in OH.items() if k != "r0"}
    with pytest.raises(ValueError, match=r"pair_potential\[0\] \(morse\): missing keys \['r0'\]"):
        config(pair_potential=[bad])
    with pytest.raises(ValueError, match=r"pair_potential\[1\]: a second morse term"):
        config(pair_potential=[OH, OH | dict(types=["H", "O"])])
    with pytest.raises(ValueError, match=r"need r_lo < r_hi <= r_max"):
        config(pair_potential=[BARRIER | dict(r_lo=1.4)])


def test_config_and_saved_model_round_trip(tmp_path):
    cfg = config()
    assert AllegroConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    params = make_model(cfg)[0](jax.random.PRNGKey(2))
    save_model(tmp_path / "model", cfg, params)
    cfg2, params2 = load_model(tmp_path / "model")[:2]
    assert cfg2 == cfg
    s = random_molecule(np.random.default_rng(3), n=6, numbers=(1, 8))
    np.testing.assert_allclose(energy(cfg2, params2, [s])[0], energy(cfg, params, [s])[0])


def test_statistics_are_of_the_residual():
    """Labels = pair term + known per-type shifts: the fitted shifts are those shifts."""
    cfg = config()
    rng = np.random.default_rng(4)
    shifts = {"H": -13.6, "O": -432.0}
    labelled = []
    for n in (4, 5, 6, 7, 8):
        s = random_molecule(rng, n=n, numbers=(1, 8))
        (pair,) = subtract_pair_potential(cfg, [Structure(s.numbers, s.positions, energy=0.0)])
        labelled.append(
            Structure(
                s.numbers,
                s.positions,
                energy=sum(shifts["H" if z == 1 else "O"] for z in s.numbers) - pair.energy,
                forces=np.zeros((n, 3)),
            )
        )
    residual = subtract_pair_potential(cfg, labelled)
    assert any(abs(r.energy - s.energy) > 0.1 for r, s in zip(residual, labelled, strict=True))
    model = {k: v for k, v in cfg.to_dict().items() if "per_type_energy" not in k}
    model.pop("avg_num_neighbors")
    completed, _ = complete_model_config(model, labelled)
    np.testing.assert_allclose(completed.per_type_energy_shifts, (-13.6, -432.0), atol=1e-8)
