"""Loss and error sums on padded batches, in physical units (eV, Å).

``loss = w_E · mean_g((ΔE_g / N_g)²) + w_F · mean_{i,α}(ΔF_iα²) + w_S · mean_{g,αβ}(ΔS_gαβ²)``

over the labelled real graphs, the real atoms' force components and the graphs that carry
a stress label (the paper's per-atom energy MSE plus force MSE, Musaelian et al. 2023,
Methods). Padding and unlabelled entries are masked out. The same quantities are also
returned as sums (:class:`ErrorSums`) so that metrics over many batches aggregate exactly.

Each structure may carry a loss weight ``w_g`` (``Labels.weight``; the training config's
``config_type_weights``): the training loss then sums ``w_g (ΔE_g/N_g)²``, ``w_g ΔF_iα²``
over the atoms of graph g and ``w_g ΔS_gαβ²``, over the same counts (weights of 1 give the
loss above exactly). Metrics (MAE, RMSE, the validation loss) stay unweighted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from allegro_jax.data.graph import AtomicGraph, Structure
from allegro_jax.data.padding import Budget, pad_graph_values, pad_node_values


class Labels(NamedTuple):
    """Reference values of a padded batch (a pytree); masks say which entries are labelled."""

    energy: jax.Array  # [n_graphs] eV
    forces: jax.Array  # [n_nodes, 3] eV/Å
    stress: jax.Array  # [n_graphs, 3, 3] eV/Å^3
    energy_mask: jax.Array  # [n_graphs] bool
    forces_mask: jax.Array  # [n_nodes] bool
    stress_mask: jax.Array  # [n_graphs] bool
    weight: jax.Array  # [n_graphs] the structure's loss weight (1 by default, 0 for padding)


class Batch(NamedTuple):
    """A padded graph and its labels."""

    graph: AtomicGraph
    labels: Labels


class ErrorSums(NamedTuple):
    """Sums of errors over a batch (or an epoch); every field is a scalar.

    ``e_*`` are total-energy errors, ``epa_*`` per-atom energy errors, ``f_*`` force
    components, ``s_*`` stress components; ``n_*`` count the entries.
    """

    n_e: jax.Array
    e_abs: jax.Array
    e_sq: jax.Array
    epa_abs: jax.Array
    epa_sq: jax.Array
    n_f: jax.Array
    f_abs: jax.Array
    f_sq: jax.Array
    n_s: jax.Array
    s_abs: jax.Array
    s_sq: jax.Array

    @classmethod
    def zeros(cls, dtype=jnp.float32) -> ErrorSums:
        return cls(*(jnp.zeros((), dtype) for _ in cls._fields))


def make_labels(
    structures: list[Structure],
    budget: Budget,
    dtype=np.float32,
    weights: list[float] | None = None,
) -> Labels:
    """Labels of a batch of structures (in batch order), padded to ``budget``.

    Missing labels (``None``) get a zero value and a False mask; ``weights`` are the
    structures' loss weights (default 1).
    """
    weight = pad_graph_values(
        [1.0] * len(structures) if weights is None else [float(w) for w in weights], budget, 0.0
    )
    energy = pad_graph_values(
        [s.energy if s.energy is not None else 0.0 for s in structures], budget
    )
    energy_mask = pad_graph_values([s.energy is not None for s in structures], budget, False)
    forces = pad_node_values(
        [s.forces if s.forces is not None else np.zeros((s.n_atoms, 3)) for s in structures], budget
    )
    forces_mask = pad_node_values(
        [np.full(s.n_atoms, s.forces is not None) for s in structures], budget, False
    )
    stress = pad_graph_values(
        [s.stress if s.stress is not None else np.zeros((3, 3)) for s in structures], budget
    )
    stress_mask = pad_graph_values([s.stress is not None for s in structures], budget, False)
    return Labels(
        energy=energy.astype(dtype),
        forces=forces.astype(dtype),
        stress=stress.astype(dtype),
        energy_mask=energy_mask.astype(bool),
        forces_mask=forces_mask.astype(bool),
        stress_mask=stress_mask.astype(bool),
        weight=weight.astype(dtype),
    )


def error_sums(pred: Mapping[str, jax.Array], batch: Batch, weighted: bool = False) -> ErrorSums:
    """Masked error sums of a prediction (``apply_fn``'s output) against the labels;
    ``weighted``: every term times its structure's ``labels.weight`` (the counts stay)."""
    graph, labels = batch
    dtype = pred["energy"].dtype
    if weighted:  # the errors times sqrt(w): the squared sums are weighted
        root_w = jnp.sqrt(jnp.maximum(labels.weight.astype(dtype), 0.0))  # [n_graphs]
        node_w = root_w[graph.node_graph]  # [n_nodes]
        pred = dict(pred)
        labels = labels._replace(
            energy=labels.energy.astype(dtype) * root_w,
            forces=labels.forces.astype(dtype) * node_w[:, None],
            stress=labels.stress.astype(dtype) * root_w[:, None, None],
        )
        pred["energy"] = pred["energy"] * root_w
        if "forces" in pred:
            pred["forces"] = pred["forces"] * node_w[:, None]
        if "stress" in pred:
            pred["stress"] = pred["stress"] * root_w[:, None, None]
        batch = Batch(graph, labels)
        return error_sums(pred, batch)
    e_mask = (labels.energy_mask & graph.graph_mask).astype(dtype)  # [n_graphs]
    n_atoms = jnp.maximum(graph.n_node, 1).astype(dtype)  # [n_graphs]
    de = jnp.where(e_mask > 0, pred["energy"] - labels.energy, 0.0)  # [n_graphs]
    depa = de / n_atoms
    out = dict(
        n_e=e_mask.sum(),
        e_abs=jnp.abs(de).sum(),
        e_sq=(de**2).sum(),
        epa_abs=jnp.abs(depa).sum(),
        epa_sq=(depa**2).sum(),
    )
    zero = jnp.zeros((), dtype)
    if "forces" in pred:
        f_mask = labels.forces_mask & graph.node_mask  # [n_nodes]
        df = jnp.where(f_mask[:, None], pred["forces"] - labels.forces, 0.0)  # [n_nodes, 3]
        out |= dict(
            n_f=3.0 * f_mask.astype(dtype).sum(), f_abs=jnp.abs(df).sum(), f_sq=(df**2).sum()
        )
    else:
        out |= dict(n_f=zero, f_abs=zero, f_sq=zero)
    if "stress" in pred:
        s_mask = labels.stress_mask & graph.graph_mask  # [n_graphs]
        ds = jnp.where(s_mask[:, None, None], pred["stress"] - labels.stress, 0.0)
        out |= dict(
            n_s=9.0 * s_mask.astype(dtype).sum(), s_abs=jnp.abs(ds).sum(), s_sq=(ds**2).sum()
        )
    else:
        out |= dict(n_s=zero, s_abs=zero, s_sq=zero)
    return ErrorSums(**out)


def weighted_loss(
    pred: Mapping[str, jax.Array], batch: Batch, coeffs: Mapping[str, float]
) -> tuple[jax.Array, ErrorSums]:
    """The training loss of a batch (its structures' weights applied) and its unweighted
    error sums (for the metrics)."""
    return loss_from_sums(error_sums(pred, batch, weighted=True), coeffs), error_sums(pred, batch)


def loss_from_sums(sums: ErrorSums, coeffs: Mapping[str, float]) -> jax.Array:
    """``w_E·epa_sq/n_e + w_F·f_sq/n_f + w_S·s_sq/n_s`` (terms with no entries count 0).

    Works on jax arrays (inside ``jit``) and on numpy/Python scalars (epoch aggregates).
    """
    xp = jnp if isinstance(sums.n_e, jax.Array) else np

    def mean(total, count):
        return total / xp.maximum(count, 1.0)

    loss = coeffs.get("total_energy", 0.0) * mean(sums.epa_sq, sums.n_e)
    loss = loss + coeffs.get("forces", 0.0) * mean(sums.f_sq, sums.n_f)
    if coeffs.get("stress", 0.0):
        loss = loss + coeffs["stress"] * mean(sums.s_sq, sums.n_s)
    return loss


def summarize(sums: ErrorSums, coeffs: Mapping[str, float]) -> dict[str, float]:
    """Human units from aggregated sums: MAE and RMSE in meV, meV/atom, meV/Å, meV/Å^3."""
    s = ErrorSums(*(float(np.asarray(v, dtype=np.float64)) for v in sums))
    out = {"loss": float(loss_from_sums(s, coeffs))}
    if s.n_e:
        out |= {
            "energy_mae_mev": 1e3 * s.e_abs / s.n_e,
            "energy_rmse_mev": 1e3 * np.sqrt(s.e_sq / s.n_e),
            "energy_per_atom_mae_mev": 1e3 * s.epa_abs / s.n_e,
            "energy_per_atom_rmse_mev": 1e3 * np.sqrt(s.epa_sq / s.n_e),
        }
    if s.n_f:
        out |= {
            "force_mae_mev_per_a": 1e3 * s.f_abs / s.n_f,
            "force_rmse_mev_per_a": 1e3 * np.sqrt(s.f_sq / s.n_f),
        }
    if s.n_s:
        out |= {
            "stress_mae_mev_per_a3": 1e3 * s.s_abs / s.n_s,
            "stress_rmse_mev_per_a3": 1e3 * np.sqrt(s.s_sq / s.n_s),
        }
    return out
