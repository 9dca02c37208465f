"""The model's XLA compile options (``allegro_jax.nn.xla_options``): on a CPU, no YNNPACK
matrix fusions (measured faster for the model's tall-skinny products, benchmarks/NOTES.md
section 11) unless ``ALLEGRO_JAX_CPU_YNNPACK=1``; nothing on other backends; the programs
users get (ASE calculator, training step) are compiled with them and compute the same
numbers."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from allegro_jax import AllegroConfig, make_model
from allegro_jax.data.padding import build_graph
from allegro_jax.nn import xla_options
from allegro_jax.nn.xla_options import ENV, YNN_OPTION, compiler_options

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compile options")


def _ynn_fusions(compiled) -> int:
    return compiled.as_text().count("__ynn_fusion")


def test_options_by_backend_and_switch(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert compiler_options("gpu") == {} and compiler_options("tpu") == {}
    # this project's jaxlib (pyproject: jax >= 0.10.1) knows the option
    assert xla_options._cpu_accepts(YNN_OPTION, ""), "jaxlib no longer has " + YNN_OPTION
    assert compiler_options("cpu") == {YNN_OPTION: ""}
    assert compiler_options() == {YNN_OPTION: ""}  # the default backend here is the CPU
    monkeypatch.setenv(ENV, "1")
    assert compiler_options("cpu") == {}
    monkeypatch.setenv(ENV, "0")
    assert compiler_options("cpu") == {YNN_OPTION: ""}
    # an option the compiler does not know is refused by the probe, not raised later
    assert not xla_options._cpu_accepts("xla_cpu_no_such_option_anywhere", "")


@pytest.fixture(scope="module")
def model(structures_si):
    cfg = AllegroConfig(
        type_names=("Si",), r_max=4.0, l_max=1, num_layers=2, num_scalar_features=16,
        num_tensor_features=8, avg_num_neighbors=10.0, model_dtype="float64",
    )  # fmt: skip
    init_fn, apply_fn = make_model(cfg)
    graph = build_graph(structures_si, cfg.type_names, cfg.r_max, dtype=np.float64)
    return cfg, init_fn(jax.random.PRNGKey(0)), apply_fn, graph


@pytest.fixture(scope="module")
def structures_si():
    from ase.build import bulk

    from allegro_jax import Structure

    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=1)
    return [Structure.from_ase(atoms)]


def test_the_option_removes_the_ynnpack_fusions_and_keeps_the_numbers(model):
    _, params, apply_fn, graph = model

    def fn(p, g):
        return apply_fn(p, g, forces=True, stress=True)

    plain = jax.jit(fn).lower(params, graph).compile()
    ours = jax.jit(fn, compiler_options=compiler_options()).lower(params, graph).compile()
    if _ynn_fusions(plain) == 0:
        pytest.skip("this jaxlib uses no YNNPACK fusions by default: nothing to compare")
    assert _ynn_fusions(ours) == 0
    a, b = plain(params, graph), ours(params, graph)
    for key in ("energy", "forces", "stress"):
        np.testing.assert_allclose(np.asarray(b[key]), np.asarray(a[key]), rtol=1e-12, atol=1e-12)


def test_the_ase_calculator_compiles_with_the_options(model, monkeypatch):
    from allegro_jax.md.ase_calculator import AllegroCalculator

    cfg, params, _, graph = model
    calc = AllegroCalculator(cfg, params)
    args = (params, graph)
    lowered = calc._apply.lower(*args, forces=True, stress=True, chunks=None)
    assert _ynn_fusions(lowered.compile()) == 0
    monkeypatch.setenv(ENV, "1")  # the switch: a new calculator keeps XLA's fusions
    calc = AllegroCalculator(cfg, params)
    lowered = calc._apply.lower(*args, forces=True, stress=True, chunks=None)
    assert _ynn_fusions(lowered.compile()) > 0
