"""Tell the user when JAX compiles: ``with compiling("the model") as clock: ...``.

The first call of a jitted function traces, lowers and compiles it with XLA, which can take
tens of seconds during which a program otherwise prints nothing. :func:`compiling` prints
``compiling <what>…`` on entry and, on exit, how long it took, with the seconds JAX itself
reports for tracing, lowering and XLA compilation (``jax.monitoring`` events) inside the
block.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Iterator
from typing import TextIO

_COMPILE_EVENTS = frozenset(
    {
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    }
)


@dataclasses.dataclass
class CompileClock:
    """What happened inside a :func:`compiling` block.

    Attributes:
        compile_s: seconds JAX reported for tracing, lowering and compiling (at most
            ``wall_s``).
        wall_s: wall-clock seconds of the block.
        n_compiled: XLA compilations.
    """

    compile_s: float = 0.0
    wall_s: float = 0.0
    n_compiled: int = 0


@contextlib.contextmanager
def compiling(
    what: str, *, stream: TextIO | None = None, quiet: bool = False, done: str = "compiled"
) -> Iterator[CompileClock]:
    """Announce compilation of ``what`` and report its time when the block ends.

    Args:
        what: e.g. ``"the model (first call)"``.
        stream: where to print (default: ``sys.stdout`` at the time of the call).
        quiet: print nothing (the clock still runs).
        done: the word that starts the closing line (``"compiled"``).

    Yields:
        The :class:`CompileClock`, filled in when the block ends.
    """
    import jax

    clock = CompileClock()
    stream = None if quiet else (stream or sys.stdout)

    def listener(event: str, duration: float, **_: object) -> None:
        if event in _COMPILE_EVENTS:
            clock.compile_s += duration
            if event.endswith("backend_compile_duration"):
                clock.n_compiled += 1

    if stream is not None:
        print(f"compiling {what}…", file=stream, flush=True)
    jax.monitoring.register_event_duration_secs_listener(listener)
    t0 = time.perf_counter()
    try:
        yield clock
    finally:
        clock.wall_s = time.perf_counter() - t0
        jax.monitoring.unregister_event_duration_listener(listener)
        clock.compile_s = min(clock.compile_s, clock.wall_s)
    if stream is not None:
        print(
            f"{done} in {clock.compile_s:.1f} s ({clock.wall_s:.1f} s in all)",
            file=stream,
            flush=True,
        )
