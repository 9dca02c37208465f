"""glibc ``malloc`` settings that let XLA:CPU reuse its memory between calls.

XLA:CPU allocates each program's temporaries afresh at every call (hundreds of MiB for a
training step on a periodic batch: 619 MiB for mlearn Cu, batch 5 of 108-atom cells).
glibc serves such blocks with ``mmap`` (or from per-thread arenas that do), and returns
them to the kernel when freed, so every call touches every page anew: 158,000 page faults
per mlearn Cu training step, about a third of its time on a 2-core CPU
(``benchmarks/NOTES.md``, section 9). With no ``mmap`` and no trimming, and executions on
the calling thread (the main arena), freed blocks stay in the heap and the next call reuses
them (0 faults). A block of 64 MiB or more requested on another thread still comes from
``mmap`` (a thread's own arena grows in heaps of at most 64 MiB): call compiled models
with inputs already on the device (:func:`ready_on_device`), so that they run on the
calling thread.

The settings only take effect for threads that have not allocated yet, i.e. before JAX's
CPU backend starts (its thread pools): ``import allegro_jax`` applies them (once, on Linux
with glibc), unless the environment sets ``ALLEGRO_JAX_TUNE_MALLOC=0`` or already holds
one of glibc's own ``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_MAX_`` variables (the user's
choice wins). Cost: memory freed by the process stays with it (its resident size stays at
its peak) instead of going back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import jax  # (importing JAX does not start its backend)

# glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_state: dict[str, object] = {"applied": False, "reason": "not tried"}


def tune_malloc() -> bool:
    """Apply the settings (see the module docstring); True if they are in effect.

    Idempotent; :func:`malloc_tuning` says what happened.
    """
    if _state["applied"]:
        return True
    if os.environ.get("ALLEGRO_JAX_TUNE_MALLOC", "1") == "0":
        _state["reason"] = "ALLEGRO_JAX_TUNE_MALLOC=0"
        return False
    if any(k in os.environ for k in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_")):
        _state["reason"] = "the environment sets glibc's MALLOC_* variables"
        return False
    if not sys.platform.startswith("linux"):
        _state["reason"] = f"not Linux ({sys.platform})"
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl has no mallopt knobs)
    except (OSError, AttributeError):
        _state["reason"] = "not glibc"
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, -1) == 1  # -1: never
    _state["applied"] = ok
    _state["reason"] = "applied" if ok else "mallopt refused"
    if ok and "JAX_CPU_ENABLE_ASYNC_DISPATCH" not in os.environ:  # (the user's choice wins)
        # executions on the calling thread (the main arena: per-thread arenas fall back to
        # mmap for blocks larger than their 64 MiB heaps whatever M_MMAP_MAX says)
        try:
            jax.config.update("jax_cpu_enable_async_dispatch", False)
        except (AttributeError, KeyError, ValueError):  # a JAX without the option
            _state["reason"] = "applied (malloc only: this JAX has no CPU async dispatch)"
    return ok


def ready_on_device(tree):
    """``tree`` on the default device, its transfer finished (arrays already there pass
    through unchanged).

    Call a compiled model with these, not with host (numpy) arrays: with host inputs JAX
    transfers them asynchronously and XLA:CPU runs the program on the pool thread that
    finishes the transfer, not on the calling thread; that thread's arena serves
    temporaries above 64 MiB with ``mmap`` whatever :func:`tune_malloc` set, so every call
    faults them in afresh (Si 8000 energy and forces, 1.47 GiB: 377,000 faults and 900 ms
    per call, against 0 and 580 ms; ``benchmarks/NOTES.md`` section 10).
    """
    return jax.block_until_ready(jax.device_put(tree))


def malloc_tuning() -> str:
    """What :func:`tune_malloc` did: ``"applied"`` or why not (for benchmark records)."""
    return str(_state["reason"])
