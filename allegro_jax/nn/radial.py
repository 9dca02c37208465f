"""Radial (Bessel) bases of both Allegro generations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def bessel_basis(x: jax.Array, frequencies: jax.Array) -> jax.Array:
    r"""Bessel basis of allegro >= 0.7 (nequip ``BesselEdgeLengthEncoding``).

    .. math:: b_n(x) = \frac{\sin(\omega_n \pi x)}{\pi x}, \quad \omega_n = n

    written as ``sinc(ω x)·ω`` with the normalised ``sinc``, which is finite at ``x = 0``.

    Args:
        x: normalised distances ``r / r_max``, ``[n_edges]``.
        frequencies: ``ω_n``, ``[n_basis]``.

    Returns:
        ``[n_edges, n_basis]``.
    """
    w = frequencies.astype(x.dtype)
    return jnp.sinc(x[:, None] * w[None, :]) * w[None, :]


def bessel_basis_integer(x: jax.Array, num_basis: int) -> jax.Array:
    r""":func:`bessel_basis` with the fixed frequencies ``ω_n = n = 1 … num_basis``.

    .. math:: b_n(x) = \frac{\sin(n \pi x)}{\pi x}

    ``sin(nθ)`` from one ``sin`` and one ``cos`` by the Chebyshev recurrence
    ``sin((n+1)θ) = 2 cos θ sin(nθ) − sin((n−1)θ)`` (two transcendentals per edge instead
    of ``num_basis``); at ``x = 0`` the limit ``b_n = n``.

    Args:
        x: normalised distances ``r / r_max``, ``[n_edges]``.
        num_basis: number of basis functions.

    Returns:
        ``[n_edges, num_basis]``.
    """
    theta = jnp.pi * x
    s, c2 = jnp.sin(theta), 2.0 * jnp.cos(theta)
    sines = [s]
    prev, cur = jnp.zeros_like(s), s
    for _ in range(num_basis - 1):
        prev, cur = cur, c2 * cur - prev
        sines.append(cur)
    zero = theta == 0
    inv = 1.0 / jnp.where(zero, 1.0, theta)
    limit = jnp.arange(1, num_basis + 1, dtype=x.dtype)
    return jnp.where(zero[:, None], limit[None, :], jnp.stack(sines, axis=-1) * inv[:, None])


def paper_bessel_basis(r: jax.Array, frequencies: jax.Array, r_max: float) -> jax.Array:
    r"""Un-normalised Bessel basis of the paper (allegro 0.2 / nequip 0.5), Methods eq. (8).

    .. math:: b_n(r) = \frac{2}{r_{max}} \frac{\sin(\omega_n r / r_{max})}{r},
        \quad \omega_n = n\pi \text{ at init.}

    Args:
        r: distances, ``[n_edges]``.
        frequencies: ``ω_n``, ``[n_basis]``.
        r_max: cutoff radius.
    """
    w = frequencies.astype(r.dtype)
    # sin(w r / r_max) / r = (w / r_max) * sinc(w r / (π r_max)) · π / π, finite at r = 0
    arg = r[:, None] * w[None, :] / r_max
    return (2.0 / r_max) * (w[None, :] / r_max) * jnp.sinc(arg / jnp.pi)


def paper_bessel_normalization(
    r_max: float, num_basis: int, n_points: int = 4000
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the paper basis over ``n_points`` in ``(0, r_max]``.

    Computed once at model construction with the initial frequencies ``nπ`` (as in
    allegro 0.2's ``NormalizedBasis``) and then held constant.
    """
    r = np.linspace(0.0, r_max, n_points + 1)[1:]
    w = np.pi * np.arange(1, num_basis + 1)
    b = (2.0 / r_max) * np.sin(w[None, :] * r[:, None] / r_max) / r[:, None]
    return b.mean(axis=0), b.std(axis=0)
