"""No tracked text file names a path that exists on one machine only (issue 18, item 3).

Commands in READMEs run from the repository root (``python -m experiments...``), and results
files record paths relative to it (``experiments/...``, ``../shared/data/...``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MACHINE_PATH = "/" + "work" + "/"  # spelled so that this file does not contain it
PATTERNS = ("*.md", "*.json", "*.yaml", "*.yml", "*.py", "*.sh")


def _tracked_text_files() -> list[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--", *PATTERNS],
        capture_output=True,
        check=True,
    ).stdout
    return [name for name in out.decode().split("\0") if name]


def test_no_tracked_text_file_contains_a_machine_path():
    files = _tracked_text_files()
    assert any(f.startswith("experiments/") and f.endswith("results.json") for f in files)
    offenders = []
    for name in files:
        path = REPO / name
        if not path.is_file():  # deleted in the work tree, not yet committed
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if MACHINE_PATH in line:
                offenders.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not offenders, "machine paths in tracked files:\n" + "\n".join(offenders)
