"""Smooth radial cutoff (envelope) functions."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def polynomial_cutoff(x: jax.Array, p: float = 6.0) -> jax.Array:
    r"""Polynomial envelope of DimeNet (Klicpera et al. 2020), eq. (8).

    .. math::
        u(x) = 1 - \frac{(p+1)(p+2)}{2} x^p + p(p+2) x^{p+1} - \frac{p(p+1)}{2} x^{p+2}

    for :math:`x = r / r_{max} < 1`, else 0. ``u`` and its first two derivatives vanish at
    ``x = 1``, so energies and forces go smoothly to zero at the cutoff.

    Args:
        x: normalised distances ``r / r_max``, any shape.
        p: envelope exponent (nequip default 6).
    """
    p = float(p)
    xp = x**p
    out = 1.0 - 0.5 * (p + 1.0) * (p + 2.0) * xp + p * (p + 2.0) * xp * x
    out = out - 0.5 * p * (p + 1.0) * xp * x * x
    return jnp.where(x < 1.0, out, jnp.zeros_like(out))
