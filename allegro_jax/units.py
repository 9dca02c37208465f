"""Physical constants (exact SI 2019 values unless noted) and unit conversions.

The project's units are Å, eV and amu; everything else is converted on the way in.
"""

from __future__ import annotations

#: Avogadro constant in 1/mol.
AVOGADRO = 6.02214076e23
#: Elementary charge in C, i.e. J per eV.
EV_J = 1.602176634e-19
#: Boltzmann constant in J/K.
KB_J_PER_K = 1.380649e-23
#: Unified atomic mass unit in kg (CODATA 2018).
AMU_KG = 1.66053906660e-27
#: Ångström in m.
ANGSTROM_M = 1e-10
#: 1 kcal/mol (thermochemical calorie) in eV: 0.043364104241800934.
KCAL_PER_MOL_TO_EV = 4184.0 / (AVOGADRO * EV_J)
#: 1 Hartree in eV (CODATA 2018).
HARTREE_TO_EV = 27.211386245988
#: 1 eV/Å³ in Pa (≈ 160.2 GPa).
PA_PER_EV_PER_A3 = EV_J / ANGSTROM_M**3
#: 1 GPa in eV/Å³ (6.241509074460762e-3).
GPA_TO_EV_PER_A3 = 1e9 / PA_PER_EV_PER_A3
#: 1 kbar in eV/Å³.
KBAR_TO_EV_PER_A3 = 0.1 * GPA_TO_EV_PER_A3
