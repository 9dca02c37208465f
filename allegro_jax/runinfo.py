"""Provenance helpers for experiment and benchmark reports: the CPU model and generated
tables spliced into hand-written READMEs."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def splice_block(path: Path, start: str, end: str, body: str, new_text: str = "") -> None:
    """Replace the text between the marker lines ``start`` and ``end`` of ``path`` by
    ``body``; markers missing are appended (to ``new_text`` if the file does not exist)."""
    text = path.read_text() if path.exists() else new_text
    if start not in text or end not in text:
        text = text.rstrip() + f"\n\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{body}\n{end}{tail}")
