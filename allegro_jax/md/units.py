"""Unit conversions between user units and jax-md's internal units.

jax-md has no units of its own: it integrates Newton's equations in whatever consistent set
of units the energy, length and mass are given in. We use eV, Å and atomic mass units
(amu, the unified atomic mass unit, 1/12 of the mass of a ¹²C atom). The time unit that
makes ``E = m v² / 2`` consistent is then

    t₀ = sqrt(amu · Å² / eV) = sqrt(1.66053906660e-27 kg · 1e-20 m² / 1.602176634e-19 J)
       = 1.0180505e-14 s ≈ 10.1805 fs,

so a timestep of ``dt_fs`` femtoseconds is ``dt_fs / TIME_UNIT_FS`` internal time units,
velocities are in Å/t₀ (divide by ``TIME_UNIT_FS`` to get Å/fs) and momenta in amu·Å/t₀.
Temperatures enter as ``kT`` in eV (``KB_EV_PER_K · T``); pressures as eV/Å³.
"""

from __future__ import annotations

import math

from ..units import AMU_KG, ANGSTROM_M, EV_J, KB_J_PER_K, PA_PER_EV_PER_A3

#: Boltzmann constant in eV/K.
KB_EV_PER_K = KB_J_PER_K / EV_J
#: The internal time unit sqrt(amu Å² / eV) in femtoseconds (≈ 10.1805).
TIME_UNIT_FS = math.sqrt(AMU_KG * ANGSTROM_M**2 / EV_J) * 1e15
#: 1 eV/Å³ in bar (1 bar = 1e5 Pa); ≈ 1.602e6.
BAR_PER_EV_PER_A3 = PA_PER_EV_PER_A3 / 1e5


def fs_to_internal(t_fs: float) -> float:
    """A time in fs as internal time units t₀."""
    return t_fs / TIME_UNIT_FS


def kelvin_to_kt(temperature_k: float) -> float:
    """``kT`` in eV for a temperature in K."""
    return KB_EV_PER_K * temperature_k


def bar_to_internal(pressure_bar: float) -> float:
    """A pressure in bar as eV/Å³."""
    return pressure_bar / BAR_PER_EV_PER_A3
