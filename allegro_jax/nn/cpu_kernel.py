"""The CPU tensor-product kernels (``_tp_cpu.cc``): built on first use, loaded, registered.

XLA:CPU runs the sparse channel-wise tensor product as one small loop per output
component and reduces rows column by column; the hand-written kernels apply all non-zero
Clebsch–Gordan entries of one edge while its operands sit in L1 (benchmarks/NOTES.md,
entry 4). They are XLA FFI custom calls, compiled once per machine with the system C++
compiler against the FFI headers of the installed jaxlib, and cached in
``$ALLEGRO_JAX_CACHE`` (default ``~/.cache/allegro_jax``) under a name that hashes the
source, the jaxlib version, the compiler and the CPU's instruction-set flags (the build uses
``-march=native``), so a shared home directory on a mixed cluster gets one build per CPU
kind and a jaxlib upgrade triggers a rebuild.

Without a C++ compiler, or with ``ALLEGRO_JAX_CPU_KERNEL=0``, the model runs the same
maths as XLA operations (slower on CPU, identical results to rounding). GPUs always use
the XLA operations. :func:`use_cpu_kernel` switches the kernels off while tracing, for
artefacts that must run without this package (``jax.export``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import jax
import jaxlib

SOURCE = Path(__file__).with_name("_tp_cpu.cc")
TARGETS = {"allegro_bilinear": "AllegroBilinear", "allegro_trilinear_sum": "AllegroTrilinearSum"}

_enabled = True


@contextlib.contextmanager
def use_cpu_kernel(enabled: bool) -> Iterator[None]:
    """Use (or not) the CPU kernels in the functions traced inside this block.

    Tracing is what counts: a ``jax.jit`` function already traced for the same argument
    shapes is reused from its cache, so build a fresh one inside the block (as
    ``jax.export`` of a new function does).
    """
    global _enabled
    previous, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = previous


def enabled() -> bool:
    """Whether a tensor product traced now uses the CPU kernels on CPU (building them once)."""
    return _enabled and available()


def cache_dir() -> Path:
    root = os.environ.get("ALLEGRO_JAX_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "allegro_jax"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _arch_flags() -> list[str]:
    """``-march=native``, and 512-bit vectors where the CPU has AVX-512: a compiler that
    does not know the CPU tunes for an older one and keeps to 256 bits (GCC 12 on an AMD
    Zen 5: znver3), twice the vector instructions per tensor-product entry
    (benchmarks/NOTES.md, section 17)."""
    flags = ["-march=native"]
    if "avx512f" in _cpu_flags().split():
        flags.append("-mprefer-vector-width=512")
    return flags


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _build(cxx: str, target: Path) -> None:
    """Compile ``SOURCE`` into ``target`` (atomically: concurrent builds are harmless)."""
    include = jax.ffi.include_dir()
    base = [cxx, "-O3", "-std=c++17", "-fPIC", "-shared", f"-I{include}", str(SOURCE)]
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for arch in (_arch_flags(), []):  # some compilers/CPUs reject -march=native
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        proc = subprocess.run(base + arch + ["-o", tmp], capture_output=True, text=True)
        if proc.returncode == 0:
            os.replace(tmp, target)
            return
        os.unlink(tmp)
        errors.append(proc.stderr.strip()[-2000:])
    raise RuntimeError("\n".join(errors))


@functools.cache
def available() -> bool:
    """Build (once per machine), load and register the kernels; False if that fails."""
    if os.environ.get("ALLEGRO_JAX_CPU_KERNEL", "1").lower() in ("0", "false", "off", "no"):
        return False
    cxx = _compiler()
    if cxx is None:
        warnings.warn(
            "allegro_jax: no C++ compiler found (set CXX), so the tensor product runs as XLA "
            "operations on CPU (correct, but several times slower to train)",
            stacklevel=2,
        )
        return False
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(
        b"\0".join(
            x if isinstance(x, bytes) else x.encode()
            for x in (
                SOURCE.read_bytes(),
                jax.__version__,
                jaxlib.__version__,
                version.split("\n")[0],
                _cpu_flags(),
                " ".join(_arch_flags()),
            )
        )
    ).hexdigest()[:16]
    library = cache_dir() / f"tp_cpu_{key}.so"
    try:
        if not library.exists():
            _build(cxx, library)
        lib = ctypes.cdll.LoadLibrary(str(library))
        for name, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), "cpu")
    except Exception as err:  # noqa: BLE001 - any failure means: use the XLA operations
        warnings.warn(
            f"allegro_jax: could not build or load the CPU tensor-product kernel ({library}); "
            f"using XLA operations instead (correct, but slower to train on CPU):\n{err}",
            stacklevel=2,
        )
        return False
    return True
