"""Fixed (untrained) pair terms added to the learned per-atom energies.

For what the training data cannot pin down. The motivating case is liquid water: in every
training frame each H has exactly one O at 0.89-1.14 Å and the next O at >= 1.33 Å, so the
learned energy of an H with an O in between is an unconstrained extrapolation, and MD finds
it when it is low (`experiments/water/`: the Morse term did not fix that case; the barrier
did, at a 0.5 fs step). Two kinds, each for an unordered pair of types:

* ``morse``: ``V(r) = D [(1 - exp(-a (r - r0)))² - 1] · u(r / r_cut)`` with ``u`` the model's
  polynomial envelope (``r_cut <= r_max``: the term sees only the model's edges). A baseline
  the network learns the difference to; the training statistics are computed from the labels
  minus the pair terms.
* ``barrier``: ``V(r) = height · (1 - t²)³`` on ``r_lo < r < r_hi`` (``t`` runs from -1 to 1
  across it), zero outside, with two continuous derivatives. Placed on a range of distances
  that no training frame visits, it leaves every training label unchanged and is meant to
  keep MD out of that range. It is stiff: its curvature reaches ~4.8·height·(2/width)² eV/Å²,
  so a narrow barrier needs a short timestep. Measured in water (1 eV on 1.10–1.36 Å, 1 fs,
  H mass 1): H atoms crossed it through integration error; at 0.5 fs it held.

``E_pair = ½ Σ_{i≠j} V_{t_i t_j}(r_ij)``: half of each pair goes to each atom's energy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..config import MorsePair
from .cutoff import polynomial_cutoff


def _term_energy(term, r: jax.Array, p: float) -> jax.Array:
    if isinstance(term, MorsePair):
        morse = term.D * (jnp.square(1.0 - jnp.exp(-term.a * (r - term.r0))) - 1.0)
        return morse * polynomial_cutoff(r / term.r_cut, p)
    t = (2.0 * r - term.r_lo - term.r_hi) / (term.r_hi - term.r_lo)
    inside = jnp.abs(t) < 1.0
    return jnp.where(inside, term.height * (1.0 - jnp.square(jnp.where(inside, t, 0.0))) ** 3, 0.0)


def pair_atomic_energies(
    cfg,
    r: jax.Array,
    species: jax.Array,
    edge_center: jax.Array,
    edge_neighbor: jax.Array,
    edge_mask: jax.Array,
    num_segments: int | None = None,
) -> jax.Array | float:
    """Per-atom energies ``[n_nodes]`` of ``cfg.pair_potential`` (0.0 when there is none).

    ``r`` are the edge lengths with padding edges already moved beyond the cutoff
    (``allegro.masked_edges``). Edges are directed (each pair appears as i→j and j→i); each
    direction gives half of ``V(r)`` to its centre atom. ``num_segments``: the number of
    nodes summed into (default: all of ``species``).
    """
    if not cfg.pair_potential:
        return 0.0
    ti, tj = species[edge_center], species[edge_neighbor]
    e_edge = jnp.zeros_like(r)
    for term in cfg.pair_potential:
        a, b = (cfg.type_names.index(t) for t in term.types)
        match = ((ti == a) & (tj == b)) | ((ti == b) & (tj == a))
        e_edge = e_edge + jnp.where(match, _term_energy(term, r, cfg.polynomial_cutoff_p), 0.0)
    e_edge = jnp.where(edge_mask, 0.5 * e_edge, 0.0)
    n = species.shape[0] if num_segments is None else num_segments
    return jax.ops.segment_sum(e_edge, edge_center, num_segments=n)
