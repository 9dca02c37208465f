"""XLA compile options for the model's programs (``jax.jit(fn, compiler_options=...)``).

On a CPU, XLA (jaxlib 0.10) hands every matrix product to YNNPACK (``ynn_fusion``). For
the model's products, a tall [edges, ≤ 128] operand against a small weight matrix, XLA's
own dot emitter is faster in the whole program: energy + forces 4–8 % less time from ~1,000
edges up (aspirin ×32, water 192, Si 1000, whole-graph Si 8000), training steps 4–5 %
(`benchmarks/NOTES.md`, section 11), measured with two threads on a 2-core CPU; with one
thread the two take the same time, and more cores were not measured. For one aspirin (320
edges) it depends on the model: the trained rMD17 models are 8–22 % faster through the ASE
calculator, the benchmark's l_max 1 model 6 % slower. A measured default, not a law:
``ALLEGRO_JAX_CPU_YNNPACK=1`` keeps XLA's choice. Other backends get no options.

The option is XLA's ``xla_cpu_experimental_ynn_fusion_type`` (empty: no YNNPACK fusions);
a jaxlib that does not know it gets no options (checked once with a tiny compile) rather
than an error.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
ENV = "ALLEGRO_JAX_CPU_YNNPACK"


@functools.cache
def _cpu_accepts(option: str, value: Any) -> bool:
    try:
        x = jax.device_put(jnp.zeros(2), jax.devices("cpu")[0])
        jax.jit(jnp.sin).lower(x).compile(compiler_options={option: value})
    except Exception:  # noqa: BLE001 (any refusal: "No such compile option", bad value)
        return False
    return True


def compiler_options(backend: str | None = None) -> dict[str, Any]:
    """The compile options for a model program on ``backend`` (default: JAX's default
    backend): ``{}`` except on a CPU, where YNNPACK matrix fusions are switched off unless
    ``ALLEGRO_JAX_CPU_YNNPACK=1``."""
    backend = backend or jax.default_backend()
    if backend != "cpu" or os.environ.get(ENV, "0") not in ("", "0"):
        return {}
    return {YNN_OPTION: ""} if _cpu_accepts(YNN_OPTION, "") else {}


def jit_apply(apply_fn: Callable) -> Callable:
    """``apply_fn`` (:func:`allegro_jax.nn.model.make_model`'s) jitted for top-level calls:
    ``forces``, ``stress`` and ``chunks`` static, compiled with :func:`compiler_options`."""
    return jax.jit(
        apply_fn,
        static_argnames=("forces", "stress", "chunks"),
        compiler_options=compiler_options(),
    )
