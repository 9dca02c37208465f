"""Run an ordinary LAMMPS input with an Allegro model: ``allegro-jax lammps -in in.lammps``.

The input is a plain LAMMPS input; the model is named in one place, the way LAMMPS users
name ``pair_allegro`` models::

    units        metal
    read_data    water.data
    pair_style   allegro/jax
    pair_coeff   * * path/to/model O H       # one element per atom type, in type order
    # pair_coeff * * path/to/model           # ... or the data file's type labels

``path/to/model`` is a trained model or run directory (``allegro-jax train``). Every other
command goes to LAMMPS unchanged (variables, ``-var``, ``include``, loops, restarts,
minimisation, any fix). The two ``allegro/jax`` lines are handled in Python: they load the
model and attach it with :class:`allegro_jax.lammps.provider.AllegroLammps`. They must be
commands of the input file itself (not of an ``include``d file or inside a ``jump`` loop);
a later ``pair_style`` of another kind detaches the model.

From Python::

    from allegro_jax.lammps import LammpsSession
    with LammpsSession(["-log", "none"]) as s:
        s.file("in.lammps")                 # or s.command("pair_coeff * * model O H")
        s.lmp.get_thermo("pe")
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._loader import LammpsUnavailable, import_lammps, import_mpi
from .provider import AllegroLammps, LammpsSetupError, Potential, agree, make_comm

STYLE = "allegro/jax"

USAGE = """usage: allegro-jax lammps -in INPUT [LAMMPS options, e.g. -var T 300 -log run.log]
       mpiexec -n N allegro-jax lammps -in INPUT

Runs the LAMMPS input INPUT with an Allegro model as the force field:
    pair_style   allegro/jax [nodes N] [edges M]
    pair_coeff   * * <model or run directory> [element of type 1] [element of type 2] ...
Without elements, the atom type labels of the data file (or labelmap) are used.
nodes/edges: smallest padded sizes per rank (sizes grow as needed; each size compiles once).
Units must be 'metal'. Every other line is an ordinary LAMMPS command."""


@dataclasses.dataclass
class Line:
    """One logical input line (continuations joined) and its kind."""

    text: str
    number: int  # first physical line, 1-based
    kind: str  # "lammps", "pair_style", "pair_coeff", "other_pair_style"


_WORDS = re.compile(r"\S+")


def _words(text: str) -> list[str]:
    return _WORDS.findall(text.split("#", 1)[0])


def logical_lines(text: str) -> list[tuple[str, int]]:
    """Physical lines joined into commands: ``&`` continuations and triple quotes."""
    physical = text.splitlines(keepends=True)
    out, i = [], 0
    while i < len(physical):
        start, buf = i, physical[i]
        while i + 1 < len(physical) and (buf.rstrip().endswith("&") or buf.count('"""') % 2 == 1):
            i += 1
            buf += physical[i]
        out.append((buf, start + 1))
        i += 1
    return out


def classify(text: str, active: bool) -> str:
    """``pair_style allegro/jax``, its ``pair_coeff``, another ``pair_style``, or LAMMPS."""
    words = _words(text.replace("&\n", " "))
    if not words:
        return "lammps"
    if words[0] == "pair_style":
        if len(words) > 1 and words[1] == STYLE:
            return "pair_style"
        return "other_pair_style" if active else "lammps"
    if words[0] == "pair_coeff" and active:
        return "pair_coeff"
    return "lammps"


def parse_input(text: str) -> list[Line]:
    """The input's logical lines, each classified (see :func:`classify`)."""
    lines, active = [], False
    for raw, number in logical_lines(text):
        kind = classify(raw, active)
        if kind == "pair_style":
            active = True
        elif kind == "other_pair_style":
            active = False
        lines.append(Line(raw, number, kind))
    return lines


class LammpsSession:
    """A LAMMPS instance whose inputs may use ``pair_style allegro/jax``.

    Args:
        args: LAMMPS command-line arguments (``-log``, ``-screen``, ``-var``, ``-echo`` ...;
            not ``-in``: use :meth:`file`).
        comm: the ``mpi4py`` communicator (default ``MPI_COMM_WORLD``).
    """

    def __init__(self, args: Sequence[str] = (), comm: Any = None):
        lammps = import_lammps()
        mpi = import_mpi()
        if comm is None and mpi is not None:
            comm = mpi.COMM_WORLD
        self._mpi_comm = comm
        kwargs = {"comm": comm} if comm is not None else {}
        self.lmp = lammps.lammps(cmdargs=list(args), **kwargs)
        self.comm = make_comm(self.lmp, comm)
        self.active = False
        self.min_sizes: tuple[int, int] | None = None
        self.provider: AllegroLammps | None = None
        self.providers: list[AllegroLammps] = []
        self._potentials: dict[str, Potential] = {}
        self._tmp = tempfile.mkdtemp(prefix="allegro_jax_lammps_")
        self._segment = 0

    # -- commands ----------------------------------------------------------------------------

    def file(self, path: str | os.PathLike) -> None:
        """Run an input file (its ``allegro/jax`` lines handled here)."""
        path = Path(path)
        text = agree(self.comm, lambda: _read_input(path))
        lines = parse_input(text)
        chunk: list[str] = []
        for line in lines:
            if line.kind == "lammps":
                chunk.append(line.text)
                continue
            self._run_text("".join(chunk), path)
            chunk = []
            self._special(line, path)
        self._run_text("".join(chunk), path)

    def command(self, text: str) -> None:
        """Run one command (``pair_style allegro/jax`` and its ``pair_coeff`` included)."""
        kind = classify(text, self.active)
        if kind == "lammps":
            self.lmp.command(text)
        else:
            self._special(Line(text, 0, kind), None)

    def commands_string(self, text: str) -> None:
        """Run several commands, as :meth:`file` does for a file."""
        for line in parse_input(text):
            if line.kind == "lammps":
                self.lmp.commands_string(line.text)
            else:
                self._special(line, None)

    def _run_text(self, text: str, source: Path) -> None:
        if not text.strip():
            return
        self._segment += 1
        # LAMMPS reads input files on rank 0 only; a file (not a string) keeps jump/label
        # loops working inside the segment
        segment = os.path.join(self._tmp, f"{source.name}.part{self._segment}")
        with open(segment, "w") as f:
            f.write(text)
        self.lmp.file(segment)

    def _special(self, line: Line, source: Path | None) -> None:
        where = f"{source}:{line.number}: " if source is not None else ""
        text = " ".join(line.text.replace("&\n", " ").split("#", 1)[0].split())
        if line.kind == "pair_style":
            words = _words(self.lmp.expand(text) or text)
            self.min_sizes = parse_style_args(words[2:], where)
            self._echo(text)
            self.active = True
            return
        if line.kind == "other_pair_style":
            self.detach()
            self.lmp.command(text)
            return
        # pair_coeff * * model [elements]
        words = _words(self.lmp.expand(text) or text)
        if len(words) < 4 or words[1] != "*" or words[2] != "*":
            raise LammpsSetupError(
                f"{where}expected 'pair_coeff * * <model directory> [element ...]' for "
                f"pair_style {STYLE}, got {text!r}"
            )
        self._echo(text)
        model, elements = words[3], words[4:] or None
        potential = self._potentials.get(model)
        if potential is None:
            potential = agree(self.comm, lambda: _load(model, where))
            self._potentials[model] = potential
        self.detach()
        try:
            self.provider = AllegroLammps(
                self.lmp, potential, elements, comm=self._mpi_comm, min_sizes=self.min_sizes
            )
        except LammpsSetupError as err:
            raise LammpsSetupError(f"{where}{err}") from None
        self.providers.append(self.provider)
        self._print(self.provider.describe())

    def detach(self) -> None:
        """Remove the model's fixes (a later ``pair_style`` of another kind)."""
        if self.provider is not None:
            for fix in (self.provider.fix_id, f"{self.provider.fix_id}_halt"):
                if self.lmp.has_id("fix", fix):
                    self.lmp.command(f"unfix {fix}")
            self.provider = None
        self.active = False

    def _echo(self, text: str) -> None:
        # the replaced line, as a comment in the log (LAMMPS echoes comments with -echo)
        self.lmp.command(f"# {text}")

    def _print(self, message: str) -> None:
        self.lmp.command('print "' + message.replace('"', "'").replace("$", "") + '"')

    # -- results -------------------------------------------------------------------------------

    @property
    def error(self) -> str | None:
        """The agreed force-evaluation error that stopped a run, if any."""
        for p in self.providers:
            if p.error is not None:
                return p.error
        return None

    def summary(self) -> str:
        """Force calls and time per call (slowest rank; compilations apart)."""
        stats = [p.stats for p in self.providers]
        calls = sum(st.calls for st in stats)
        if not calls:
            return "allegro-jax: no force calls"
        local = np.array(
            [
                sum(st.total_s - st.compile_s for st in stats),
                sum(st.graph_s for st in stats),
                sum(st.model_s for st in stats),
                sum(st.comm_s for st in stats),
                sum(st.compile_s for st in stats),
                sum(st.compile_calls for st in stats),
            ]
        )
        worst = np.max(np.stack(self.comm.allgather(local)), axis=0)
        steady = calls - int(worst[5])
        if steady <= 0:
            return (
                f"allegro-jax: {calls} force calls on {self.comm.size} rank(s), each the first "
                f"of a new padded shape ({worst[4]:.1f} s with compilation)"
            )
        ms = 1e3 / steady
        return (
            f"allegro-jax: {calls} force calls on {self.comm.size} rank(s); slowest rank "
            f"{worst[0] * ms:.2f} ms/call (neighbours {worst[1] * ms:.2f}, model "
            f"{worst[2] * ms:.2f}, MPI sum {worst[3] * ms:.2f}) plus {worst[4]:.1f} s for "
            f"{int(worst[5])} compiled shapes"
        )

    def close(self) -> None:
        if self.lmp is not None:
            self.lmp.close()
            self.lmp = None
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> LammpsSession:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def parse_style_args(args: Sequence[str], where: str = "") -> tuple[int, int] | None:
    """``pair_style allegro/jax [nodes N] [edges M]``: the smallest padded sizes per rank.

    Padded sizes only grow during a run (each new size compiles once); giving the final
    sizes up front compiles one shape for the whole run (and lets a JAX compilation cache
    share it between ranks and runs)."""
    sizes = {"nodes": 0, "edges": 0}
    usage = (
        f"usage: pair_style {STYLE} [nodes N] [edges M] (smallest padded atoms and edges "
        "per rank); the model is named in pair_coeff: pair_coeff * * <model> <elements>"
    )
    if len(args) % 2:
        raise LammpsSetupError(f"{where}{usage}; got {' '.join(args)!r}")
    for key, value in zip(args[::2], args[1::2], strict=True):
        if key not in sizes or not value.isdigit() or int(value) < 1:
            raise LammpsSetupError(f"{where}{usage}; got {key} {value}")
        sizes[key] = int(value)
    if not any(sizes.values()):
        return None
    return sizes["nodes"], sizes["edges"]


def _read_input(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as err:
        raise LammpsSetupError(
            f"cannot read the LAMMPS input {str(path)!r}: {err.strerror}"
        ) from None


def _load(model: str, where: str) -> Potential:
    try:
        return Potential.from_dir(model)
    except LammpsSetupError as err:
        raise LammpsSetupError(f"{where}{err}") from None


def _split_args(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    argv = list(argv)
    path, rest, i = None, [], 0
    while i < len(argv):
        if argv[i] in ("-in", "-i") and i + 1 < len(argv):
            path = argv[i + 1]
            i += 2
            continue
        rest.append(argv[i])
        i += 1
    return path, rest


def _local_ranks() -> int:
    for var in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "PMI_SIZE", "PMIX_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def configure_jax() -> None:
    """64-bit JAX (LAMMPS coordinates stay float64 in the geometry; a float32 model computes
    its features in float32) and, with several ranks on a node, one XLA CPU thread per
    rank (LAMMPS's one-rank-per-core layout) unless ``XLA_FLAGS`` says otherwise."""
    if _local_ranks() > 1 and "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
        ).strip()
    import jax

    jax.config.update("jax_enable_x64", True)


def main(argv: Sequence[str] | None = None) -> int:
    """``allegro-jax lammps -in INPUT [LAMMPS options]``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "-help") for a in argv):
        print(USAGE)
        return 0
    path, args = _split_args(argv)
    if path is None:
        print(
            f"ERROR (allegro-jax): no input file given: use -in INPUT\n\n{USAGE}", file=sys.stderr
        )
        return 2
    configure_jax()
    try:
        session = LammpsSession(args)
    except LammpsUnavailable as err:
        print(f"ERROR (allegro-jax): {err}", file=sys.stderr)
        return 1
    rank = session.comm.rank
    status = 0
    try:
        session.file(path)
        summary = session.summary()
        session._print(summary)
    except LammpsSetupError as err:
        if rank == 0:
            print(f"ERROR (allegro-jax): {err}", file=sys.stderr, flush=True)
        status = 1
    except Exception as err:  # noqa: BLE001 - LAMMPS errors arrive as plain Exceptions
        status = 1
        if type(err).__name__ == "MPIAbortException":
            # an error on one rank only: LAMMPS printed it; stop every rank
            sys.stderr.flush()
            _abort(session)
        elif type(err) is Exception and str(err).startswith("ERROR"):
            # LAMMPS printed the message already (rank 0); add a hint where one helps
            if rank == 0 and f"Unrecognized pair style '{STYLE}'" in str(err):
                print(
                    f"ERROR (allegro-jax): 'pair_style {STYLE}' must be a line of the input "
                    "file itself, not of an included file or a loop",
                    file=sys.stderr,
                )
        else:  # a bug: show it, and do not leave the other ranks waiting
            traceback.print_exc()
            sys.stderr.flush()
            _abort(session)
    finally:
        session.close()
    return status


def _abort(session: LammpsSession) -> None:
    comm = session._mpi_comm
    if comm is not None and session.comm.size > 1:
        comm.Abort(1)
