"""Fixtures for the MD tests; helpers live in md_helpers.py (``from md_helpers import ...``)."""

from __future__ import annotations

import jax
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True)
def _quiet_jax_md_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="jax")
        yield
