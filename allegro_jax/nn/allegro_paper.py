"""Allegro, paper generation (allegro 0.2 on nequip 0.5; Musaelian et al. 2023, Methods).

Per edge ij (centre i), with cutoff u = u(r_ij / r_max):

1. radial basis ``b(r) = (2/r_max) sin(ω r / r_max) / r`` (trainable ``ω``, init ``nπ``),
   standardised by its mean/std over (0, r_max] at init, times ``u``;
2. two-body latent ``x⁰ = u · MLP₂([onehot(t_i) ‖ onehot(t_j) ‖ b])``;
3. ``[w_V ‖ w_env] = Linear(x⁰)``, ``V⁰ = w_V ⊙ Y(r̂_ij)`` ``[n_edges, C, D]``;
4. each layer ℓ: ``env_i = N_avg^{-1/2} Σ_k w_ik ⊙ Y_ik``; unweighted channel-wise ("uuu")
   tensor product of V with ``env_i`` with every path its own slot; scalars = the 0e
   slots ``[n_edges, C·n_0e]``; a per-irrep linear mixes (channel, path) → channel to give
   the next V; ``x_new = u · MLP_ℓ([x ‖ scalars])``; residual update
   ``x ← √(c_{<ℓ}/c_{≤ℓ}) x + √(c_ℓ/c_{≤ℓ}) x_new`` with ``c = exp(θ)`` (θ = 0 gives
   ``(x·√ℓ + x_new)/√(ℓ+1)``); next ``w_env = Linear(x)``;
5. ``E_ij = MLP_E(x)`` (no nonlinearity), ``E_i = N_avg^{-1/2} Σ_j E_ij``,
   ``E_i ← σ_t E_i + μ_t``.

The residual coefficients follow the released allegro 0.2 code (``latent_resnet``
exp/cumsum parametrisation), which the published models used.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..config import AllegroConfig
from .allegro import (
    masked_edges,
    model_dtype,
    per_type_constant,
    scale_shift,
    spherical_harmonics,
)
from .cutoff import polynomial_cutoff
from .mlp import ScalarMLP
from .pair import pair_atomic_energies
from .radial import paper_bessel_basis, paper_bessel_normalization
from .tensor_product import (
    TPSpec,
    bilinear,
    irreps_offsets,
    layer_irreps,
    sh_irreps,
    weighted_channels_dc,
)


@functools.lru_cache(maxsize=64)
def paper_tp_specs(l_max: int, parity: bool, num_layers: int) -> tuple[TPSpec, ...]:
    irreps = layer_irreps(l_max, parity, num_layers)
    env = sh_irreps(l_max)
    return tuple(TPSpec.build(irreps[i], env, irreps[i + 1]) for i in range(num_layers))


@functools.lru_cache(maxsize=64)
def path_slots(spec: TPSpec) -> tuple[tuple, np.ndarray, tuple[int, ...]]:
    """The unweighted "every path its own slot" product as one :func:`bilinear`.

    Returns:
        ``(ia, ib, io)`` entries, their Clebsch–Gordan values ``[nnz, 1]``, and the first
        output row of each path's slot (path ``p`` fills rows
        ``start[p] : start[p] + 2 l3 + 1`` of an ``[n_edges, Σ_p (2 l3 + 1), C]`` output).
    """
    cg = spec.coupling()  # [P, D1, D2, Do]
    oo = irreps_offsets(spec.irreps_out)
    ia, ib, io, vals, starts, row = [], [], [], [], [], 0
    for p, (_, _, o) in enumerate(spec.paths):
        d3 = 2 * spec.irreps_out[o][0] + 1
        block = cg[p][:, :, oo[o] : oo[o] + d3]
        for i, j, k in np.argwhere(block != 0):
            ia.append(int(i)), ib.append(int(j)), io.append(row + int(k))
            vals.append(block[i, j, k])
        starts.append(row)
        row += d3
    values = np.asarray(vals)[:, None]
    values.setflags(write=False)
    return (tuple(ia), tuple(ib), tuple(io)), values, tuple(starts)


def uuu_paths(x1: jax.Array, x2: jax.Array, spec: TPSpec) -> list[jax.Array]:
    """Unweighted channel-wise TP; one ``[n_edges, 2l3+1, C]`` output per path.

    Args:
        x1: ``[n_edges, D1, C]``; x2: ``[n_edges, D2, C]``.
    """
    (ia, ib, io), values, starts = path_slots(spec)
    out = bilinear(x1, x2, jnp.asarray(values, x1.dtype), ia, ib, io, max(io) + 1)
    ends = list(starts[1:]) + [out.shape[1]]
    return [out[:, a:b] for a, b in zip(starts, ends, strict=True)]


def channel_major_weights(weights: jax.Array, n_irreps: int) -> jax.Array:
    """``[n, C * n_irreps]`` laid out (channel, irrep) -> ``[n, n_irreps, C]``."""
    return jnp.swapaxes(weights.reshape(weights.shape[0], -1, n_irreps), 1, 2)


class AllegroPaper(nn.Module):
    """Per-atom energies of the paper-generation Allegro model."""

    config: AllegroConfig

    @nn.compact
    def __call__(
        self,
        edge_vectors,
        species,
        edge_center,
        edge_neighbor,
        edge_mask,
        node_mask,
        num_centers: int | None = None,
    ):
        """Per-atom energies; ``num_centers`` as in :class:`allegro.AllegroCurrent`."""
        cfg = self.config
        dt = model_dtype(cfg)
        gdt = edge_vectors.dtype
        n_nodes = species.shape[0] if num_centers is None else num_centers
        center_species = species[:n_nodes]
        C = cfg.num_tensor_features
        n_sh = cfg.l_max + 1
        sh_ir = sh_irreps(cfg.l_max)
        specs = paper_tp_specs(cfg.l_max, cfg.parity, cfg.num_layers)

        vec, r = masked_edges(edge_vectors, edge_mask, cfg.r_max)  # [n_edges, 3], [n_edges]
        cut = polynomial_cutoff(r / cfg.r_max, cfg.polynomial_cutoff_p)
        cut = (cut * edge_mask).astype(dt)[:, None]  # [n_edges, 1]
        w_init = np.pi * np.arange(1, cfg.num_bessels + 1)
        if cfg.bessel_trainable:
            freqs = self.param("bessel_frequencies", lambda k: jnp.asarray(w_init, dt))
        else:
            freqs = jnp.asarray(w_init, gdt)
        mean, std = paper_bessel_normalization(cfg.r_max, cfg.num_bessels)
        basis = (paper_bessel_basis(r, freqs, cfg.r_max) - mean) / std
        basis = basis.astype(dt) * cut  # [n_edges, B]
        sh = spherical_harmonics(vec, cfg.l_max).astype(dt)  # [n_edges, D]

        onehot = jax.nn.one_hot(species, cfg.num_types, dtype=dt)
        two_body_in = jnp.concatenate([onehot[edge_center], onehot[edge_neighbor], basis], -1)
        latents = cut * ScalarMLP(
            cfg.two_body_latent_mlp_latent_dimensions, "silu", "paper", dt, name="two_body_latent"
        )(two_body_in)
        if cfg.latent_resnet_update_ratios_learnable:
            theta = self.param(
                "latent_resnet_coefficients", nn.initializers.zeros, (cfg.num_layers + 1,), dt
            )
        else:
            theta = jnp.zeros((cfg.num_layers + 1,), dt)
        coef = jnp.exp(theta)
        coef_cum = jnp.cumsum(coef)

        norm = 1.0 / np.sqrt(np.asarray(cfg.avg_num_neighbors_per_type()))
        node_norm = per_type_constant(norm, center_species, dt)  # [n_nodes]
        features = None
        scalars = None
        for layer in range(cfg.num_layers + 1):
            if layer > 0:
                new = ScalarMLP(
                    cfg.latent_mlp_latent_dimensions, "silu", "paper", dt, name=f"latent_{layer}"
                )(jnp.concatenate([latents, scalars], -1))
                new = cut * new
                if cfg.latent_resnet:
                    c_old = jnp.sqrt(coef_cum[layer - 1] / coef_cum[layer])
                    c_new = jnp.sqrt(coef[layer] / coef_cum[layer])
                    latents = c_old * latents + c_new * new
                else:
                    latents = new
            if layer == cfg.num_layers:
                break
            n_w = C * n_sh * (2 if layer == 0 else 1)
            weights = ScalarMLP((n_w,), None, "paper", dt, name=f"env_embed_{layer}")(latents)
            if layer == 0:
                w0 = channel_major_weights(weights[:, : C * n_sh], n_sh)
                features = weighted_channels_dc(sh, w0, sh_ir)  # [n_edges, D, C]
                weights = weights[:, C * n_sh :]
            env_edges = weighted_channels_dc(sh, channel_major_weights(weights, n_sh), sh_ir)
            env = jax.ops.segment_sum(env_edges, edge_center, num_segments=n_nodes)
            env = env * node_norm[:, None, None]  # [n_nodes, D, C]
            spec = specs[layer]
            outs = uuu_paths(features, env[edge_center], spec)  # per path [n_edges, 2l+1, C]
            scalar_paths = [
                o[:, 0, :]
                for (_, _, io), o in zip(spec.paths, outs, strict=True)
                if spec.irreps_out[io] == (0, 1)
            ]  # (channel, path) order, as the reference flattens [n_edges, C, n_0e]
            scalars = jnp.stack(scalar_paths, axis=-1).reshape(outs[0].shape[0], -1)
            if layer < cfg.num_layers - 1:
                features = self._mix(outs, spec, C, dt, layer)

        e_edge = ScalarMLP(
            cfg.edge_eng_mlp_latent_dimensions + (1,), None, "paper", dt, name="edge_eng"
        )(latents)[:, 0]
        e_edge = jnp.where(edge_mask, e_edge, 0.0)
        e_atom = jax.ops.segment_sum(e_edge, edge_center, num_segments=n_nodes) * node_norm
        e_atom = scale_shift(cfg, self, e_atom.astype(gdt), center_species)
        e_atom = e_atom + pair_atomic_energies(
            cfg, r, species, edge_center, edge_neighbor, edge_mask, num_segments=n_nodes
        )
        return jnp.where(node_mask[:n_nodes], e_atom, 0.0)

    def _mix(self, outs, spec: TPSpec, C: int, dt, layer: int) -> jax.Array:
        """Per output irrep, mix (channel, path) -> channel; returns ``[n_edges, D_out, C]``."""
        mixed = []
        for io, _ in enumerate(spec.irreps_out):
            group = [o for (_, _, jo), o in zip(spec.paths, outs, strict=True) if jo == io]
            x = jnp.stack(group, axis=1)  # [n_edges, n_p, 2l+1, C]
            n_p = len(group)
            w = self.param(f"linear_{layer}_{io}", nn.initializers.normal(1.0), (C, n_p, C), dt)
            mixed.append(jnp.einsum("zpku,upv->zkv", x, w) / math.sqrt(C * n_p))
        return jnp.concatenate(mixed, axis=1)
