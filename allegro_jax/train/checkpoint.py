"""Orbax checkpoints of the train state, verified by a per-checkpoint file manifest.

Layout under the work directory::

    checkpoints/<step>/                 the last ``keep`` states (orbax, synchronous)
    checkpoints/<step>/allegro_manifest.json   size and SHA-256 of every file of the step
    checkpoints_best/<step>/            the state of the best validation loss

Orbax writes a step into a temporary directory and renames it when complete, so a run
killed at any point leaves only complete steps (temporaries are cleaned up on the next
start). The manifest, written after the rename, catches later damage (a truncated or
altered file): :meth:`CheckpointStore.restore_latest` names the damaged file, moves that
step to ``corrupt_checkpoints/`` and falls back to the newest good step of ``checkpoints/``
and ``checkpoints_best/`` (the best one is the fallback when every other step is damaged).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

MANIFEST = "allegro_manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be restored (the message names the file or directory)."""


class _UnretrievedReadErrorFilter(logging.Filter):
    """Drops asyncio's "Future/Task exception was never retrieved" of tensorstore reads."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (
            str(record.msg).startswith(("Future exception was", "Task exception was"))
            and exc is not None
            and "tensorstore_spec" in str(exc)
        )


def _drop_closed_event_loop_noise() -> None:
    """Silence orbax's "Event loop is closed" tracebacks after a failed restore.

    orbax runs each restore in its own asyncio event loop. When one array of a damaged
    checkpoint cannot be read, the restore fails and the loop is closed while tensorstore is
    still completing the other reads; each completion then raises ``RuntimeError('Event
    loop is closed')`` in a callback, which reaches :func:`sys.unraisablehook` and prints a
    traceback (hundreds of lines for one damaged step), and the reads that failed too are
    logged by asyncio as "Future/Task exception was never retrieved". The failure itself is
    reported by :meth:`CheckpointStore.restore`; exactly these messages are dropped, every
    other unraisable exception and asyncio log record still goes through.
    """
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _UnretrievedReadErrorFilter) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_UnretrievedReadErrorFilter())
    previous = sys.unraisablehook
    if getattr(previous, "_drops_closed_event_loop", False):
        return

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        previous(unraisable)

    hook._drops_closed_event_loop = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(step_dir: Path) -> None:
    """Record size and SHA-256 of every file below ``step_dir`` (atomically)."""
    files = {}
    for root, _, names in os.walk(step_dir):
        for name in sorted(names):
            path = Path(root) / name
            if name == MANIFEST or name.startswith(MANIFEST):
                continue
            rel = str(path.relative_to(step_dir))
            files[rel] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    tmp = step_dir / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"files": files}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, step_dir / MANIFEST)


def verify_manifest(step_dir: Path) -> bool:
    """Check a step against its manifest.

    Returns:
        True if verified, False if the step has no manifest (it could not be checked).

    Raises:
        CheckpointError: naming the first missing, truncated or altered file.
    """
    manifest = step_dir / MANIFEST
    if not manifest.is_file():
        return False
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint manifest {manifest} is unreadable: {err}") from err
    for rel, info in sorted(files.items()):
        path = step_dir / rel
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} is missing")
        size = path.stat().st_size
        if size != info["size"]:
            raise CheckpointError(
                f"checkpoint file {path} is truncated or altered: {size} bytes, expected "
                f"{info['size']}"
            )
        if _sha256(path) != info["sha256"]:
            raise CheckpointError(f"checkpoint file {path} is corrupt (SHA-256 mismatch)")
    return True


class CheckpointStore:
    """The run's checkpoints: the last ``keep`` states plus the best one.

    Args:
        workdir: the run's work directory.
        keep: number of most recent checkpoints kept.
    """

    def __init__(self, workdir: str | os.PathLike, keep: int = 3):
        _drop_closed_event_loop_noise()
        self.workdir = Path(workdir).resolve()
        self.directory = self.workdir / "checkpoints"
        self.best_directory = self.workdir / "checkpoints_best"
        options = dict(enable_async_checkpointing=False, create=True, cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, **options)
        )
        self._best = ocp.CheckpointManager(
            self.best_directory, options=ocp.CheckpointManagerOptions(max_to_keep=1, **options)
        )
        self.restored_from: Path | None = None  # the step directory restore_latest used
        self.problems: list[str] = []  # the damaged checkpoints restore_latest skipped

    def steps(self, *, best: bool = False) -> list[int]:
        return sorted((self._best if best else self._manager).all_steps())

    def save(self, step: int, state: Any, meta: dict, *, best: bool = False) -> Path:
        """Save ``state`` (a pytree) and ``meta`` (JSON) at ``step``; returns its directory."""
        manager = self._best if best else self._manager
        directory = self.best_directory if best else self.directory
        if step in manager.all_steps():
            return directory / str(step)
        newer = [s for s in manager.all_steps() if s > step]
        if newer:  # orbax would keep those and drop this one (max_to_keep)
            raise CheckpointError(
                f"cannot save step {step} in {directory}: it holds the newer step(s) {newer}, "
                f"which do not belong to this run's history (was the run restored from an "
                f"older checkpoint by hand?); move them away and run again"
            )
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
        manager.wait_until_finished()
        write_manifest(directory / str(step))
        return directory / str(step)

    def restore(self, step: int, target: Any, *, best: bool = False) -> tuple[Any, dict]:
        """Restore one step into the structure of ``target``.

        Raises:
            CheckpointError: naming the damaged file or the step directory.
        """
        manager = self._best if best else self._manager
        step_dir = (self.best_directory if best else self.directory) / str(step)
        verified = verify_manifest(step_dir)
        try:
            out = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as err:  # noqa: BLE001 - orbax raises many types
            how = "" if verified else " (it has no manifest to check the files against)"
            raise CheckpointError(
                f"cannot restore checkpoint {step_dir}{how}: {type(err).__name__}: {err}"
            ) from err
        return out["state"], dict(out["meta"])

    def restore_latest(self, target: Any) -> tuple[Any, dict] | None:
        """Restore the newest good checkpoint of ``checkpoints/`` and ``checkpoints_best/``.

        Steps are tried from the newest down (a best checkpoint is a complete train state
        too, so it is used when it is newer than every good step of ``checkpoints/``, and
        as the fallback when every step there is damaged). Damaged steps are reported with
        a warning naming the file and moved to ``corrupt_checkpoints/``. Afterwards
        :attr:`restored_from` is the step directory used and :attr:`problems` lists the
        damaged ones.

        Returns:
            ``(state, meta)``, or None when there is no checkpoint at all.

        Raises:
            CheckpointError: every checkpoint is damaged (listing each problem).
        """
        self.restored_from, self.problems = None, []
        candidates = [(step, False) for step in self.steps()]
        candidates += [(step, True) for step in self.steps(best=True)]
        candidates.sort(key=lambda c: (c[0], not c[1]), reverse=True)  # regular first on ties
        for step, best in candidates:
            try:
                result = self.restore(step, target, best=best)
            except CheckpointError as err:
                self.problems.append(str(err))
                warnings.warn(f"{err}; falling back to an older checkpoint", stacklevel=2)
                self._quarantine(step, best=best)
                continue
            self.restored_from = (self.best_directory if best else self.directory) / str(step)
            return result
        if self.problems:
            raise CheckpointError(
                "no usable checkpoint in checkpoints/ or checkpoints_best/ (the damaged steps "
                "were moved to corrupt_checkpoints/): " + " | ".join(self.problems)
            )
        return None

    def _quarantine(self, step: int, *, best: bool = False) -> None:
        dest = self.workdir / "corrupt_checkpoints"
        dest.mkdir(exist_ok=True)
        source = (self.best_directory if best else self.directory) / str(step)
        name = f"{'best-' if best else ''}{step}-{time.strftime('%Y%m%dT%H%M%S')}"
        target, k = dest / name, 1
        while target.exists():
            target, k = dest / f"{name}-{k}", k + 1
        shutil.move(str(source), str(target))
        (self._best if best else self._manager).reload()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._manager.close()
        self._best.close()
