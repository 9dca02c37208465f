"""Fixtures for the MD tests; helpers live in md_helpers.py (``from md_helpers import ...``)."""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)
