"""Shared fixtures: 64-bit JAX on, path to ../shared/data, a jax_debug_nans switch.

Generated systems live in ``tests/systems.py`` (``from systems import ...``)."""

from __future__ import annotations

import os

import jax
import pytest
from systems import SHARED_DATA

jax.config.update("jax_enable_x64", True)
# the data directory of the packaged configs' ${ALLEGRO_JAX_DATA}/... paths (subprocesses too)
os.environ.setdefault("ALLEGRO_JAX_DATA", str(SHARED_DATA))


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    return SHARED_DATA


@pytest.fixture
def debug_nans():
    jax.config.update("jax_debug_nans", True)
    try:
        yield
    finally:
        jax.config.update("jax_debug_nans", False)
