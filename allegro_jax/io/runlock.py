"""One process per run directory: an exclusive, OS-level lock on a training or MD directory.

Two processes writing one run directory mix their checkpoints, metrics rows and trajectory
frames. :class:`RunLock` refuses the second one with :class:`RunLockedError`, whose message
names the directory, the process that holds it and what to do.

Usage (training, MD, or any tool that writes a run directory)::

    from allegro_jax.io.runlock import RunLock, RunLockedError

    with RunLock(workdir, purpose="training"):  # raises RunLockedError if held elsewhere
        ...  # write checkpoints, metrics, frames

API:

* ``RunLock(directory, purpose="run")``: ``directory`` is created if needed; ``purpose``
  (e.g. ``"training"``, ``"MD"``) is recorded for the message another process shows.
* ``acquire()`` (or ``with``): takes the lock without waiting, then records the holder
  (PID, host, purpose, start time, command line) in ``<directory>/.allegro_jax.lock.json``.
  Raises :class:`RunLockedError` if another process (or another :class:`RunLock` object in
  this process) holds it. ``release()`` (or leaving the ``with`` block) lets it go;
  ``locked`` tells whether this object holds it. A :class:`RunLock` is not re-entrant.
* :func:`read_holder` returns the recorded holder of a directory (or None).
* ``with run_lock(directory, what):`` is the same as ``with RunLock(directory, what):``.

Stale locks: the lock is a kernel lock (``flock`` through the maintained :mod:`filelock`
package) on ``<directory>/.allegro_jax.lock``, so the kernel releases it when the holding
process ends in any way, ``kill -9`` included; a leftover lock file or holder record does
not block anyone. The holder record is informational only: it is never used to decide
whether the directory is free. (On a file system without ``flock`` support filelock falls
back to a marker file; there a crashed holder's marker has to be removed by hand, and the
error message says so.)
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock

LOCK_FILE = ".allegro_jax.lock"
HOLDER_FILE = ".allegro_jax.lock.json"


class RunLockedError(RuntimeError):
    """Another process holds the run directory (the message names it and what to do).

    Attributes:
        directory: the run directory.
        holder: its recorded holder (``pid``, ``host``, ``purpose``, ``started``,
            ``command``) or None if unknown.
    """

    def __init__(self, message: str, directory: Path, holder: dict[str, Any] | None):
        super().__init__(message)
        self.directory = directory
        self.holder = holder


def read_holder(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The recorded holder of a run directory's lock (None if none was recorded)."""
    try:
        holder = json.loads((Path(directory) / HOLDER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process (its details were not recorded yet)"
    parts = [f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"]
    if holder.get("started"):
        parts.append(f"started {holder['started']}")
    if holder.get("command"):
        parts.append(f"command: {holder['command']}")
    return f"another {holder.get('purpose', 'run')} ({', '.join(parts)})"


class RunLock:
    """Exclusive lock on a run directory (see the module docstring).

    Args:
        directory: the run directory (created if missing).
        purpose: what the holder does, shown to a refused process (``"training"``, ``"MD"``).
    """

    def __init__(self, directory: str | os.PathLike, purpose: str = "run"):
        self.directory = Path(directory).resolve()
        self.purpose = purpose
        self._lock: filelock.BaseFileLock | None = None

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock."""
        return self._lock is not None and self._lock.is_locked

    def acquire(self) -> RunLock:
        """Take the lock without waiting and record the holder.

        Returns:
            self.

        Raises:
            RunLockedError: another process (or another :class:`RunLock`) holds it.
            RuntimeError: this object already holds it.
        """
        if self.locked:
            raise RuntimeError(f"{self.directory} is already locked by this RunLock")
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.directory / LOCK_FILE), timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            holder = read_holder(self.directory)
            raise RunLockedError(
                f"{self.directory} is in use by {_describe(holder)}; a second {self.purpose} "
                f"in the same directory would mix its checkpoints and output with the first "
                f"one's. Wait for it to finish (or stop it), or use another directory. The lock "
                f"is released by the operating system when that process ends, even after "
                f"kill -9; if it is not running, another machine may be using this directory "
                f"(or, on a file system without flock, remove {self.directory / LOCK_FILE}).",
                self.directory,
                holder,
            ) from None
        self._lock = lock
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "purpose": self.purpose,
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        }
        tmp = self.directory / (HOLDER_FILE + f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(record, indent=1))
            os.replace(tmp, self.directory / HOLDER_FILE)
        except OSError:  # informational only
            tmp.unlink(missing_ok=True)
        return self

    def release(self) -> None:
        """Let the lock go (the holder record is removed; a no-op if not held)."""
        if self._lock is None:
            return
        try:
            holder = read_holder(self.directory)
            if holder and holder.get("pid") == os.getpid():
                (self.directory / HOLDER_FILE).unlink(missing_ok=True)
        finally:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunLock({str(self.directory)!r}, purpose={self.purpose!r}, locked={self.locked})"


@contextlib.contextmanager
def run_lock(directory: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold ``directory``'s lock for the ``with`` block (a :class:`RunLock` for ``what``).

    Yields:
        The lock file's path.

    Raises:
        RunLockedError: another process holds the lock.
    """
    with RunLock(directory, purpose=what) as lock:
        yield lock.directory / LOCK_FILE
