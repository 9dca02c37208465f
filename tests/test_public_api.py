"""The curated top-level API: every name resolves, and importing the package stays light."""

from __future__ import annotations

import subprocess
import sys

from systems import REPO

import allegro_jax


def test_every_public_name_resolves():
    for name in allegro_jax.__all__:
        assert getattr(allegro_jax, name) is not None, name
    assert allegro_jax.load_model is allegro_jax.io.model.load_model
    assert allegro_jax.make_simulation.__module__ == "allegro_jax.md.integrate"


def test_import_does_not_load_md_or_training_machinery():
    code = (
        "import sys, allegro_jax; "
        "print(sorted(m for m in sys.modules if m.startswith(('jax_md', 'allegro_jax.md', "
        "'allegro_jax.train', 'allegro_jax.io', 'orbax', 'ase.calculators.calculator'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
