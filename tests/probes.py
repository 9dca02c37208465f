"""Helper of the memory tests (import as ``probes``): a Python snippet run in a fresh
process, with glibc's malloc left to ``import allegro_jax`` (no ``MALLOC_*`` variables, no
``ALLEGRO_JAX_TUNE_MALLOC``) unless ``env`` sets them; the snippet prints one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_probe(code: str, **env: str) -> dict:
    """The JSON object printed last by ``code`` run in a fresh CPU-only process."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean.pop("ALLEGRO_JAX_TUNE_MALLOC", None)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, "JAX_PLATFORMS": "cpu", **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
