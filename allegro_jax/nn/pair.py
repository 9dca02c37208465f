"""Fixed (untrained) pair potentials added to the learned per-atom energies.

A baseline for what the training data cannot pin down. The motivating case is a covalent
bond that never breaks in the data (liquid water: every H has exactly one O at ~1 Å in every
frame). Total energies then cannot tell the network how much the bond is worth, because its
energy is a constant absorbed by the per-type shifts. The learned energy between the bonded
distance and the hydrogen-bond distance is an unconstrained extrapolation, and it can be
lower than the bonded state. A Morse term for that pair of types makes a stretched bond cost
energy whatever the network extrapolates; the network learns the difference to the data.

``E_pair = ½ Σ_{i≠j} V_{t_i t_j}(r_ij) · u(r_ij / r_cut)`` with the Morse form
``V(r) = D [(1 - exp(-a (r - r0)))² - 1]`` (minimum ``-D`` at ``r0``) and ``u`` the model's
polynomial envelope, so energy and forces go smoothly to zero at ``r_cut`` (<= ``r_max``: the
term sees only the model's edges). Half of each pair goes to each atom's energy.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..config import MorsePair
from .cutoff import polynomial_cutoff


def _pair_tables(terms: Sequence[MorsePair], type_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Symmetric ``[T, T]`` tables of D, a, r0, r_cut (D = 0 where no term applies)."""
    n = len(type_names)
    tables = {k: np.zeros((n, n)) for k in ("D", "a", "r0")}
    tables["r_cut"] = np.ones((n, n))
    for term in terms:
        i, j = (type_names.index(t) for t in term.types)
        for key in tables:
            tables[key][i, j] = tables[key][j, i] = getattr(term, key)
    return tables


def pair_atomic_energies(
    cfg,
    r: jax.Array,
    species: jax.Array,
    edge_center: jax.Array,
    edge_neighbor: jax.Array,
    edge_mask: jax.Array,
) -> jax.Array | float:
    """Per-atom energies ``[n_nodes]`` of ``cfg.pair_potential`` (0.0 when there is none).

    ``r`` are the edge lengths with padding edges already moved beyond the cutoff
    (``allegro.masked_edges``). Edges are directed (each pair appears as i→j and j→i); each
    direction gives half of ``V(r)`` to its centre atom.
    """
    if not cfg.pair_potential:
        return 0.0
    dtype = r.dtype
    tables = _pair_tables(cfg.pair_potential, cfg.type_names)
    ti, tj = species[edge_center], species[edge_neighbor]
    D, a, r0, r_cut = (jnp.asarray(tables[k], dtype)[ti, tj] for k in ("D", "a", "r0", "r_cut"))
    morse = D * (jnp.square(1.0 - jnp.exp(-a * (r - r0))) - 1.0)
    e_edge = 0.5 * morse * polynomial_cutoff(r / r_cut, cfg.polynomial_cutoff_p)
    e_edge = jnp.where(edge_mask & (D > 0), e_edge, 0.0)
    return jax.ops.segment_sum(e_edge, edge_center, num_segments=species.shape[0])
