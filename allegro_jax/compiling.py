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

import jax

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


class _CompileCounter:
    """Compilations and their seconds since the process started (one global listener)."""

    def __init__(self) -> None:
        self.n_compiled = 0
        self.compile_s = 0.0
        self._registered = False

    def register(self) -> None:
        if self._registered:
            return

        def listener(event: str, duration: float, **_: object) -> None:
            if event in _COMPILE_EVENTS:
                self.compile_s += duration
                if event.endswith("backend_compile_duration"):
                    self.n_compiled += 1

        jax.monitoring.register_event_duration_secs_listener(listener)
        self._registered = True


_COUNTER = _CompileCounter()


class WatchedFunction:
    """A jitted function whose compilations are announced (see :func:`watch_compiles`).

    Attributes:
        fn: the wrapped function (``_cache_size`` and other attributes are forwarded).
        clocks: the :class:`CompileClock` of the first call, then one per later call that
            compiled (a new input shape).
    """

    def __init__(self, fn, what: str, stream: TextIO | None, quiet: bool):
        self.fn = fn
        self.what = what
        self.stream = stream
        self.quiet = quiet
        self.calls = 0
        self.clocks: list[CompileClock] = []

    def __getattr__(self, name: str):
        return getattr(self.fn, name)

    def __call__(self, *args, **kwargs):
        if self.calls == 0:
            with compiling(self.what, stream=self.stream, quiet=self.quiet) as clock:
                out = jax.block_until_ready(self.fn(*args, **kwargs))
            self.calls += 1
            self.clocks.append(clock)
            return out
        _COUNTER.register()
        n0, s0, t0 = _COUNTER.n_compiled, _COUNTER.compile_s, time.perf_counter()
        out = self.fn(*args, **kwargs)
        self.calls += 1
        if _COUNTER.n_compiled > n0:  # compiled at dispatch, i.e. before the call returned
            clock = CompileClock(
                compile_s=_COUNTER.compile_s - s0,
                wall_s=time.perf_counter() - t0,
                n_compiled=_COUNTER.n_compiled - n0,
            )
            self.clocks.append(clock)
            if not self.quiet:
                print(
                    f"compiled {self.what} again at call {self.calls} (its inputs differ in "
                    f"shape, type or placement from earlier calls) in {clock.compile_s:.1f} s",
                    file=self.stream or sys.stdout,
                    flush=True,
                )
        return out


def watch_compiles(
    fn, what: str, *, stream: TextIO | None = None, quiet: bool = False
) -> WatchedFunction:
    """Wrap a jitted ``fn``: its first call runs inside :func:`compiling` (``compiling
    <what>…`` before, the time after; the call is waited for, so the time is the
    compilation's and the first call's), and a later call that compiles again (inputs of
    another shape, type or placement, e.g. in a resumed run) prints ``compiled <what> again
    at call N ...`` with its seconds when it returns.

    Args:
        fn: a jitted function.
        what: e.g. ``"the training step"``.
        stream: where to print (default: ``sys.stdout`` at the time of the call).
        quiet: print nothing (the clocks still run).
    """
    return WatchedFunction(fn, what, stream, quiet)
