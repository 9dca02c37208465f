"""ASE calculator for Allegro models.

``AllegroCalculator(config, params)`` (or ``AllegroCalculator.from_model_dir(path)`` for a
trained model) computes ``energy``, ``free_energy`` (the same: no electronic entropy),
``forces``, ``stress`` (Voigt order xx, yy, zz, yz, xz, xy, ASE sign convention
``σ = (1/V) ∂E/∂ε``) and per-atom ``energies``.

Graphs come from :func:`allegro_jax.data.padding.build_graph` (host neighbour list with
image shifts, so any cell size works) padded to a bucketed :class:`Budget`: node and edge
counts are rounded up on a geometric ladder (``steps_per_octave`` values per factor of
two), so structures of similar size reuse one compiled function. The budget only grows:
once a structure needs a larger bucket, smaller ones are padded to it as well, so an MD
run or an optimisation compiles at most a handful of times (``n_compilations``).

Large systems are evaluated a block of atoms at a time
(:func:`allegro_jax.nn.model.plan_atom_chunks`, blocks of about ``chunk_edges`` edges,
2048 on a CPU): the same numbers, in memory that does not grow with the system. By default
that starts, on a CPU, where the whole graph's temporaries would pass 2 GiB
(:func:`allegro_jax.nn.model.whole_graph_bytes`; below it the whole graph is as fast or
faster). The block layout is kept while the structure's blocks fit it (5 % spare edge
capacity), so MD does not recompile for it either.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from .._malloc import ready_on_device
from ..config import AllegroConfig
from ..data.graph import Structure
from ..data.padding import (
    Budget,
    build_graph,
    graph_inputs_from_structure,
    max_budget,
    round_budget,
)
from ..io.model import load_model, read_ensemble_size
from ..nn.ensemble import ensemble_size_of, make_ensemble_apply_fn
from ..nn.model import AtomChunks, ChunkPlanner, make_model
from ..nn.xla_options import jit_apply

Params = Any


class AllegroCalculator(Calculator):
    """ASE calculator running an Allegro model (see the module docstring).

    Args:
        config: the model configuration.
        params: the model parameters.
        steps_per_octave: resolution of the budget ladder (higher: less padding, more
            compilations).
        min_distance: coincident-atom threshold in Å passed to the neighbour list.
        ensemble_size: K > 1: ``params`` are K stacked members (an ensemble model, as
            ``from_model_dir`` reads it): the results are the members' mean, plus
            ``energy_std`` (eV) and the per-atom ``forces_std`` (eV/Å) in ``results``.
        chunk_edges: ``"auto"``: block-wise, in blocks of 2048 edges on a CPU
            (:func:`allegro_jax.nn.model.default_block_edges`), once the whole graph's
            temporaries would pass 2 GiB (on an accelerator: above 8 blocks' worth of
            edges); an int: structures with more than ``8 chunk_edges`` edges run in
            blocks of about ``chunk_edges`` edges; ``None``: always the whole graph.
        **kwargs: passed to :class:`ase.calculators.calculator.Calculator`.
    """

    implemented_properties: ClassVar[list[str]] = [
        "energy",
        "free_energy",
        "forces",
        "stress",
        "energies",
    ]

    def __init__(
        self,
        config: AllegroConfig,
        params: Params,
        *,
        steps_per_octave: int = 4,
        min_distance: float | None = 1e-6,
        ensemble_size: int = 1,
        chunk_edges: int | None | str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.params = jax.tree.map(jnp.asarray, params)
        self.steps_per_octave = steps_per_octave
        self.min_distance = min_distance
        self.dtype = config.dtype
        _, apply_fn = make_model(config)
        self.ensemble_size = 1
        if ensemble_size > 1:  # stacked members: the mean, and the spread as extra results
            if ensemble_size_of(self.params) != ensemble_size:
                raise ValueError(f"params are not a stacked ensemble of {ensemble_size} members")
            self.ensemble_size = ensemble_size
            apply_fn = make_ensemble_apply_fn(apply_fn)
        self._apply = jit_apply(apply_fn)
        self._budget: Budget | None = None
        self._planner = ChunkPlanner(chunk_edges, config=config, members=self.ensemble_size)

    @classmethod
    def from_model_dir(cls, path: str | os.PathLike, **kwargs: Any) -> AllegroCalculator:
        """A calculator for a trained model (a run directory or its ``model/`` folder)."""
        config, params, _ = load_model(path)
        return cls(config, params, ensemble_size=read_ensemble_size(path), **kwargs)

    @property
    def budget(self) -> Budget | None:
        """The current padding budget (grows monotonically)."""
        return self._budget

    @property
    def chunks(self) -> AtomChunks | None:
        """The block layout of the last large structure (``None`` until one was seen)."""
        return self._planner.chunks

    @property
    def n_compilations(self) -> int:
        """How many shapes the jitted model has been compiled for."""
        return int(self._apply._cache_size())

    def _graph(self, atoms: Any) -> tuple[Any, int]:
        inputs = graph_inputs_from_structure(
            Structure.from_ase(atoms),
            self.config.type_names,
            self.config.r_max,
            min_distance=self.min_distance,
        )
        need = round_budget(
            inputs.n_atoms, inputs.n_edges, 1, steps_per_octave=self.steps_per_octave
        )
        if self._budget is None:
            self._budget = need
        elif not self._budget.fits(inputs.n_atoms, inputs.n_edges, 1):
            self._budget = max_budget([self._budget, need])  # buckets only grow
        graph = build_graph(
            [inputs],
            self.config.type_names,
            self.config.r_max,
            budget=self._budget,
            dtype=self.dtype,
        )
        return graph, inputs.n_atoms

    def calculate(
        self,
        atoms: Any = None,
        properties: list[str] | tuple[str, ...] = ("energy",),
        system_changes: list[str] = all_changes,
    ) -> None:
        """Compute the requested properties (all of them, stress if periodic and asked)."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        want_stress = "stress" in properties
        if want_stress and not all(atoms.pbc):
            raise PropertyNotImplementedError(
                "stress needs a fully periodic cell (atoms.pbc all True); this structure has "
                f"pbc={atoms.pbc.tolist()}"
            )
        graph, n = self._graph(atoms)
        periodic = bool(all(atoms.pbc))
        chunks = self._planner(graph)
        graph = ready_on_device(graph)  # run on this thread (allegro_jax._malloc)
        out = self._apply(self.params, graph, forces=True, stress=periodic, chunks=chunks)
        out = jax.tree.map(np.asarray, out)
        if out.get("chunk_overflow", False):  # the host check above makes this unreachable
            raise RuntimeError(f"block layout {chunks} does not fit this structure")
        energy = float(out["energy"][0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": out["forces"][:n].astype(np.float64),
            "energies": out["atomic_energies"][:n].astype(np.float64),
        }
        if periodic:
            self.results["stress"] = full_3x3_to_voigt_6_stress(out["stress"][0].astype(np.float64))
        if self.ensemble_size > 1:
            self.results["energy_std"] = float(out["energy_std"][0])
            self.results["forces_std"] = out["forces_std"][:n].astype(np.float64)
