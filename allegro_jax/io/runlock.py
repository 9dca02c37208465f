"""One process at a time in a run directory: ``with run_lock(directory, "MD run"): ...``.

A :class:`filelock.FileLock` on ``<directory>/.allegro-jax.lock`` taken without waiting. The
operating system releases it when the process ends, also after ``kill -9``, so a killed run
never leaves a stale lock behind. A second process that tries to take it gets a
:class:`RunLockedError` naming the directory and what holds it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import filelock

LOCK_FILE = ".allegro-jax.lock"


class RunLockedError(RuntimeError):
    """Another process holds the directory's lock."""


@contextlib.contextmanager
def run_lock(directory: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold the lock of ``directory`` (created if needed) for the ``with`` block.

    Args:
        directory: the run directory.
        what: what is being run there, for the error message (``"MD run"``, ``"training"``).

    Yields:
        The lock file's path.

    Raises:
        RunLockedError: another process holds the lock.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    lock = filelock.FileLock(path, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise RunLockedError(
            f"{directory} is in use by another allegro-jax process (lock {path}); a second "
            f"{what} there would mix its files with the first one's. Wait for the other "
            "process to finish, or choose another directory."
        ) from None
    try:
        yield path
    finally:
        lock.release()
