"""Atomic file replacement: a reader (or a process killed mid-write) sees the old or the new file.

:func:`atomic_open` writes into ``.<name>.tmp`` next to the target, flushes and ``fsync``s it,
then ``os.replace``s it over the target and ``fsync``s the folder, so that a ``kill -9`` (or a
power cut) at any point leaves either the complete old file or the complete new one, never a
truncated mix. One writer per target at a time (run directories are locked, see
:mod:`allegro_jax.io.runlock`); a temporary left by a killed writer is overwritten by the next.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open ``path`` for writing; the file replaces ``path`` only when the block ends cleanly.

    Args:
        path: the target file.
        mode: ``"w"`` or ``"wb"`` (the file is always written from scratch).
        **kwargs: passed to :func:`open` (``newline``, ``encoding``).

    Yields:
        The open temporary file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` by ``text`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w") as f:
        f.write(text)
