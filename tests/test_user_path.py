"""End to end: the README's path from install to simulation, its commands run as written.

The code blocks between ``<!-- user-path:begin -->`` and ``<!-- user-path:end -->`` run in
order from a directory laid out like the repository root (``allegro_jax/`` and
``../shared/data`` reachable as on a fresh clone), each in its own process; only the
installation line is skipped (this environment is installed) and ``allegro-jax`` is called
as ``python -m allegro_jax.cli`` so that this checkout's code runs.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import ase.io
import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def readme_steps() -> list[tuple[str, str]]:
    """``(language, code)`` of every bash/python block of the README's user path."""
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- user-path:begin -->")[1].split("<!-- user-path:end -->")[0]
    found = re.findall(r"^\s*```(bash|python)\n(.*?)^\s*```", block, re.S | re.M)
    return [(language, textwrap.dedent(code)) for language, code in found]


def test_readme_user_path_is_complete():
    steps = readme_steps()
    commands = "\n".join(code for language, code in steps if language == "bash")
    for needed in (
        "allegro-jax demo",
        "allegro-jax train",
        "allegro-jax evaluate",
        "allegro-jax md",
        "allegro-jax export",
    ):
        assert needed in commands
    python = "\n".join(code for language, code in steps if language == "python")
    assert "AllegroCalculator.from_model_dir" in python and "make_simulation" in python
    text = (REPO / "README.md").read_text()
    assert "experiments/<benchmark>/models/" in text
    for line in commands.splitlines():
        assert "/" + "work/" not in line and not line.startswith("cd ")  # no machine path


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{argv}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_readme_user_path_runs(tmp_path, shared_data):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "allegro_jax").symlink_to(REPO / "allegro_jax")
    (tmp_path / "shared").symlink_to(shared_data.parent)
    outputs = []
    for language, code in readme_steps():
        if language == "python":
            outputs.append(_run([sys.executable, "-c", code], root).stdout)
            continue
        for line in code.splitlines():
            if not line.strip() or line.startswith("#") or "pip install" in line:
                continue  # the environment running this test is installed already
            argv = shlex.split(line)
            if argv[0] == "allegro-jax":
                argv = [sys.executable, "-m", "allegro_jax.cli", *argv[1:]]
            elif argv[0] == "python":
                argv[0] = sys.executable
            outputs.append(_run(argv, root).stdout)

    assert (root / "runs" / "tiny" / "model" / "params.msgpack").is_file()
    assert (root / "runs" / "tiny" / "eval_rmd17_aspirin_test_01.json").is_file()
    frames = ase.io.read(root / "runs" / "tiny_md" / "trajectory.extxyz", index=":")
    assert [f.info["step"] for f in frames] == list(range(0, 201, 20))
    assert frames[-1].get_forces().shape == (21, 3)  # aspirin
    assert any("compiling" in out for out in outputs)
    export = root / "runs" / "tiny_export"
    assert (export / "allegro.jaxexport").stat().st_size > 0
    assert (export / "contract.json").is_file()
