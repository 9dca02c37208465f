"""``import allegro_jax`` sets glibc malloc so that XLA:CPU reuses its temporaries between
calls (no page faults on the same memory every call); the user can switch it off."""

from __future__ import annotations

import sys

import pytest
from probes import run_probe

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc malloc settings (Linux only)"
)

PROBE = r"""
import json, resource
import numpy as np
import allegro_jax
import jax, jax.numpy as jnp
host = np.full((1024, 1024), 1 / 1024, np.float32)  # a 4 MiB numpy input
x = jnp.asarray(host)

def g(a):  # 128 MiB of temporaries, allocated by the thread that runs the program
    b = jax.lax.optimization_barrier(jnp.tanh(jnp.concatenate([a * k for k in range(16)])))
    return jnp.sum(b * b[::-1])

f = jax.jit(g)
f(x).block_until_ready()


def faults_per_call(prepare):
    out = []
    for _ in range(11):
        a = prepare()
        m0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        f(a).block_until_ready()
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - m0)
    return out


print(json.dumps({"tuning": allegro_jax._malloc.malloc_tuning(),
                  "faults": faults_per_call(lambda: x),
                  "faults_host_input": faults_per_call(lambda: host),
                  "faults_ready_input": faults_per_call(
                      lambda: allegro_jax._malloc.ready_on_device(host)),
                  "pages": f.lower(x).compile().memory_analysis().temp_size_in_bytes / 4096,
                  "async": bool(jax.config.values["jax_cpu_enable_async_dispatch"])}))
"""

# Not a 4096x4096 matrix product: Eigen packs such operands into a 64 MiB buffer on one
# of XLA's pool threads, and glibc serves a request that large from a thread's own arena
# with mmap whatever mallopt says (those arenas' heaps are at most 64 MiB), so such a
# probe faults on about half its calls with the settings on (benchmarks/NOTES.md, 9).


def _probe(**env: str) -> dict:
    return run_probe(PROBE, **env)


def test_temporaries_are_reused_between_calls():
    tuned = _probe()
    plain = _probe(ALLEGRO_JAX_TUNE_MALLOC="0")
    print(f"\npage faults per call: tuned {tuned}, off {plain}")
    assert tuned["tuning"] == "applied" and not tuned["async"]
    assert plain["tuning"] == "ALLEGRO_JAX_TUNE_MALLOC=0" and plain["async"]
    # without the settings every call faults its temporary in afresh
    assert min(plain["faults"]) >= 0.9 * plain["pages"]
    # with them most calls fault nothing (the first ones may, while the heap grows)
    assert _median(tuned["faults"]) <= 0.1 * tuned["pages"]
    # host (numpy) inputs run the program on a pool thread, where a block this large is
    # mmapped whatever mallopt says (printed above); inputs made ready on the device first
    # keep it on the calling thread
    assert _median(tuned["faults_ready_input"]) <= 0.1 * tuned["pages"]


def _median(xs: list) -> float:
    return sorted(xs)[len(xs) // 2]


def test_the_users_own_malloc_settings_win():
    probe = _probe(MALLOC_ARENA_MAX="4")
    assert probe["tuning"] == "the environment sets glibc's MALLOC_* variables"
    assert probe["async"]
