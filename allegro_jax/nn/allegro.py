"""Allegro, current generation (allegro >= 0.7, weight-level parity with nequip-allegro 0.8.3).

Edge ij runs from centre i to neighbour j. Per edge, with x = r_ij / r_max:

1. two-body scalar embedding (``TwoBodyBesselScalarEmbed`` + ``scalar_embed_mlp``)
   ``h = MLP([Emb_c(t_i) ‖ Emb_n(t_j)] ⊙ Linear(b(x)·u(x)))``, ``[n_edges, S]``;
2. two-body tensor embedding ``V⁰ = Linear(h) ⊙ Y(r̂_ij)``, ``[n_edges, C, D]``;
3. ``[x⁰ ‖ w] = Linear(h)``; for each layer ℓ:
   ``env_i = N_avg^{-1/2} Σ_k w_ik ⊙ Y_ik`` (``[n_nodes, C, D]``),
   ``V^ℓ = TP(V^{ℓ-1}, env_i)`` (channel-wise, weighted paths),
   ``[x^ℓ ‖ w] = MLP_ℓ([x⁰ ‖ … ‖ x^{ℓ-1} ‖ V^ℓ_{0e}])``;
4. ``E_ij = MLP([x⁰ ‖ … ‖ x^L])``, ``E_i = (2 N_avg)^{-1/2} Σ_j E_ij``,
   ``E_i ← σ_t E_i + μ_t``.
"""

from __future__ import annotations

import functools

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..config import AllegroConfig
from .cutoff import polynomial_cutoff
from .mlp import NONLINEARITIES, MLPWeights, ScalarMLP, uniform_unit_variance
from .pair import pair_atomic_energies
from .radial import bessel_basis, bessel_basis_integer
from .tensor_product import (
    TPSpec,
    irrep_major_columns,
    irrep_str,
    layer_irreps,
    sh_irreps,
    sparse_channelwise_tp,
    weighted_channels_dc,
)


def spherical_harmonics(vectors: jax.Array, l_max: int) -> jax.Array:
    """Component-normalised real SH of the unit vectors, ``[n_edges, (l_max+1)^2]``."""
    irreps = "+".join(irrep_str(ir) for ir in sh_irreps(l_max))
    return e3nn.spherical_harmonics(
        irreps, vectors, normalize=True, normalization="component"
    ).array


def masked_edges(
    edge_vectors: jax.Array, edge_mask: jax.Array, r_max: float
) -> tuple[jax.Array, jax.Array]:
    """Edge vectors with padding edges moved to ``(2 r_max, 0, 0)``, and their lengths.

    Padding edges are zero vectors (self-loops); replacing them before the norm keeps the
    norm, the spherical harmonics and their gradients finite, and puts them beyond the
    cutoff, where every feature vanishes.
    """
    safe = jnp.asarray([2.0 * r_max, 0.0, 0.0], edge_vectors.dtype)
    vec = jnp.where(edge_mask[:, None], edge_vectors, safe)
    return vec, jnp.sqrt(jnp.sum(vec * vec, axis=-1))


def per_type_constant(values, species: jax.Array, dtype) -> jax.Array:
    """Look up a per-type constant tuple (or a scalar) for each node."""
    arr = jnp.asarray(np.asarray(values, dtype=np.float64), dtype=dtype)
    if arr.ndim == 0 or arr.shape[0] == 1:
        return jnp.broadcast_to(arr.reshape(()), species.shape)
    return arr[species]


def scale_shift(
    cfg: AllegroConfig, module: nn.Module, energies: jax.Array, species: jax.Array
) -> jax.Array:
    """``E_i ← σ_t E_i + μ_t`` with fixed or trainable per-type constants."""
    dtype = energies.dtype
    if cfg.per_type_energy_scales is not None:
        if cfg.per_type_energy_scales_trainable:
            init = np.asarray(cfg.per_type_energy_scales)
            s = module.param("per_type_energy_scales", lambda k: jnp.asarray(init, dtype))
            energies = energies * s.astype(dtype)[species]
        else:
            energies = energies * per_type_constant(cfg.per_type_energy_scales, species, dtype)
    if cfg.per_type_energy_shifts is not None:
        if cfg.per_type_energy_shifts_trainable:
            init = np.asarray(cfg.per_type_energy_shifts)
            b = module.param("per_type_energy_shifts", lambda k: jnp.asarray(init, dtype))
            energies = energies + b.astype(dtype)[species]
        else:
            energies = energies + per_type_constant(cfg.per_type_energy_shifts, species, dtype)
    return energies


def model_dtype(cfg: AllegroConfig):
    return jnp.float64 if cfg.model_dtype == "float64" else jnp.float32


@functools.lru_cache(maxsize=64)
def allegro_tp_specs(l_max: int, parity: bool, num_layers: int) -> tuple[TPSpec, ...]:
    """The tensor products of the current generation, one per layer (pruned irreps)."""
    irreps = layer_irreps(l_max, parity, num_layers)
    env = sh_irreps(l_max)
    return tuple(TPSpec.build(irreps[i], env, irreps[i + 1]) for i in range(num_layers))


@jax.custom_vjp
def wide_product(u: jax.Array, ms: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """``(u @ m for m in ms)`` as one product with the matrices side by side (a wide
    product runs closer to the machine's rate than several narrow ones). Its VJP keeps the
    products apart: ``Σ_k g_k m_kᵀ`` instead of autodiff's concatenation of the cotangents,
    which XLA cannot fuse when they have other readers. Plain JAX both ways, so it
    differentiates again (the force loss)."""
    return _split_like(u @ jnp.concatenate(ms, axis=1), ms)


def _split_like(y: jax.Array, ms: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """``y``'s columns split into blocks as wide as the matrices ``ms``."""
    return tuple(jnp.split(y, np.cumsum([m.shape[1] for m in ms])[:-1], axis=1))


def _wide_product_fwd(u, ms):
    return wide_product(u, ms), (u, ms)


def _wide_product_bwd(res, gs):
    u, ms = res
    du = None
    for g, m in zip(gs, ms, strict=True):
        t = g @ m.T
        du = t if du is None else du + t
    # the matrices' cotangent (training only: dead code in a force call) as one product
    return du, _split_like(u.T @ jnp.concatenate(gs, axis=1), ms)


wide_product.defvjp(_wide_product_fwd, _wide_product_bwd)


class AllegroCurrent(nn.Module):
    """Per-atom energies of the current-generation Allegro model."""

    config: AllegroConfig
    # False: every latent materialised and each MLP applied block by block (the layout of
    # the reference; the tests compare the two). Models whose latent MLPs have no hidden
    # layer always take that path.
    fold_latents: bool = True

    @nn.compact
    def __call__(
        self,
        edge_vectors: jax.Array,  # [n_edges, 3], geometry dtype
        species: jax.Array,  # [n_nodes]
        edge_center: jax.Array,  # [n_edges]
        edge_neighbor: jax.Array,  # [n_edges]
        edge_mask: jax.Array,  # [n_edges]
        node_mask: jax.Array,  # [n_nodes]
        num_centers: int | None = None,
    ) -> jax.Array:  # [n_nodes] (or [num_centers]) per-atom energies, geometry dtype
        """Per-atom energies; with ``num_centers``, only of the first ``num_centers`` nodes.

        ``num_centers`` (static) says that every edge's centre is among the first
        ``num_centers`` nodes, the rest being only neighbours (their species is all that is
        read): the per-node sums then run over those nodes alone. Allegro is strictly local
        (an atom's energy depends only on its own edges), which lets
        :func:`allegro_jax.nn.model.make_model` evaluate a large system a block of atoms at
        a time.
        """
        cfg = self.config
        dt = model_dtype(cfg)
        specs = allegro_tp_specs(cfg.l_max, cfg.parity, cfg.num_layers)
        gdt = edge_vectors.dtype
        n_nodes = species.shape[0] if num_centers is None else num_centers
        center_species = species[:n_nodes]
        S, C = cfg.num_scalar_features, cfg.num_tensor_features
        n_sh = cfg.l_max + 1
        sh_ir = sh_irreps(cfg.l_max)

        # ---- geometry (in the input dtype, as nequip does in float64) ----
        vec, r = masked_edges(edge_vectors, edge_mask, cfg.r_max)  # [n_edges, 3], [n_edges]
        x = r / cfg.r_max
        freqs = np.arange(1, cfg.num_bessels + 1, dtype=np.float64)
        if cfg.bessel_trainable:
            freqs = self.param("bessel_frequencies", lambda k: jnp.asarray(freqs, dt))
            basis = bessel_basis(x, freqs).astype(dt)  # [n_edges, B]
        else:
            basis = bessel_basis_integer(x, cfg.num_bessels).astype(dt)  # [n_edges, B]
        cut = polynomial_cutoff(x, cfg.polynomial_cutoff_p).astype(dt)  # [n_edges]
        cut = cut * edge_mask.astype(dt)
        basis = basis * cut[:, None]
        sh = spherical_harmonics(vec, cfg.l_max).astype(dt)  # [n_edges, D]

        # ---- two-body scalar embedding ----
        emb = cfg.embed_dim
        normal = jax.nn.initializers.normal(1.0)
        center_embed = self.param("center_embed", normal, (cfg.num_types, emb // 2), dt)
        neighbor_embed = self.param("neighbor_embed", normal, (cfg.num_types, emb // 2), dt)
        t_i, t_j = species[edge_center], species[edge_neighbor]
        type_embed = jnp.concatenate([center_embed[t_i], neighbor_embed[t_j]], axis=-1)
        radial = ScalarMLP((emb,), None, param_dtype=dt, name="basis_linear")(basis)
        h = type_embed * radial  # [n_edges, emb]
        hidden = (
            cfg.scalar_embed_mlp_hidden_layers_width,
        ) * cfg.scalar_embed_mlp_hidden_layers_depth
        h = ScalarMLP(
            hidden + (S,),
            cfg.scalar_embed_mlp_nonlinearity,
            param_dtype=dt,
            name="scalar_embed_mlp",
        )(h)  # [n_edges, S]

        # The tensor track is [n_edges, D, C] (channels minor): the layout of the tensor
        # product kernels. Weights laid out (channel, irrep) in the reference are read
        # irrep-major straight out of the matmuls, so they reshape to [n_edges, n_irreps, C].
        env_cols = irrep_major_columns(S, C, n_sh)  # after the S latents

        def per_irrep(w):  # [n_edges, n_sh * C] -> [n_edges, n_sh, C]
            return w.reshape(w.shape[0], n_sh, C)

        norm = 1.0 / np.sqrt(np.asarray(cfg.avg_num_neighbors_per_type()))
        node_norm = per_type_constant(norm, center_species, dt)[:, None, None]  # [n_nodes, 1, 1]
        lat_hidden = (cfg.allegro_mlp_hidden_layers_width,) * cfg.allegro_mlp_hidden_layers_depth
        ro_hidden = (cfg.readout_mlp_hidden_layers_width,) * cfg.readout_mlp_hidden_layers_depth
        L = cfg.num_layers

        def layer_tp(layer, spec, features, env_w):
            env_edges = weighted_channels_dc(sh, per_irrep(env_w), sh_ir)  # [n_edges, D, C]
            env = jax.ops.segment_sum(env_edges, edge_center, num_segments=n_nodes)
            env = (env * node_norm)[edge_center]  # [n_edges, D, C]
            tp_shape = (C, spec.num_paths) if cfg.tp_path_channel_coupling else (spec.num_paths,)
            tp_w = self.param(f"tp_{layer}", uniform_unit_variance, tp_shape, dt)
            return sparse_channelwise_tp(features, env, tp_w, spec)  # [n_edges, D', C]

        if self.fold_latents and cfg.allegro_mlp_hidden_layers_depth >= 1:
            # The latents x⁰ … x^L are read only by the first layers of the later latent
            # MLPs and of the readout, all linear maps: each latent's contributions to its
            # readers are computed by the product that would have made it, with the
            # composed weights (x^k W_c = u (V_k W_c), u the producer's input), so no
            # latent is materialised and each producer is one wide product.
            E = h.shape[-1]
            W_te = MLPWeights(E, (C * n_sh,), None, param_dtype=dt, name="tensor_embed_linear")
            W_fp = MLPWeights(
                E, (S + C * n_sh,), None, param_dtype=dt, name="first_layer_projection"
            )
            W_te, W_fp = W_te(dt)[0], W_fp(dt)[0]
            W_lat = [
                MLPWeights(
                    S * (j + 1) + C,
                    lat_hidden + (S + (0 if j == L - 1 else C * n_sh),),
                    cfg.allegro_mlp_nonlinearity,
                    param_dtype=dt,
                    name=f"latent_{j}",
                )(dt)
                for j in range(L)
            ]
            W_ro = MLPWeights(
                S * (L + 1),
                ro_hidden + (1,),
                cfg.readout_mlp_nonlinearity,
                param_dtype=dt,
                name="readout",
            )(dt)
            act_l = NONLINEARITIES[cfg.allegro_mlp_nonlinearity] or (lambda a: a)
            act_r = NONLINEARITIES[cfg.readout_mlp_nonlinearity] or (lambda a: a)
            first = [W_lat[j][0] for j in range(L)] + [W_ro[0]]  # readers of the latents

            def produce(u, direct, V, k):
                """``u @ [direct… | V W_k→c for every reader c of latent k]`` split up."""
                readers = [first[c][k * S : (k + 1) * S] for c in range(k, L + 1)]
                outs = wide_product(u, tuple(direct) + tuple(V @ r for r in readers))
                n_direct = len(direct)
                return outs[:n_direct], dict(zip(range(k, L + 1), outs[n_direct:], strict=True))

            (w0, env_w), into = produce(
                h, [W_te[:, irrep_major_columns(0, C, n_sh)], W_fp[:, env_cols]], W_fp[:, :S], 0
            )
            contributions = [into]  # contributions[k][c]: x^k's share of reader c's input

            def reader_input(c):  # Σ_{k ≤ c} x^k W_k→c, in the block products' order
                pre = contributions[0][c]
                for k in range(1, c + 1):
                    pre = pre + contributions[k][c]
                return pre

            features = weighted_channels_dc(sh, per_irrep(w0), sh_ir)  # [n_edges, D, C]
            for layer, spec in enumerate(specs):
                features = layer_tp(layer, spec, features, env_w)
                scalars = features[:, 0, :]  # [n_edges, C] (0e is first)
                Ws = W_lat[layer]
                rows = S * (layer + 1)
                a = act_l(reader_input(layer) + scalars @ Ws[0][rows : rows + C])
                for w in Ws[1:-1]:
                    a = act_l(a @ w)
                last = layer == L - 1
                direct = [] if last else [Ws[-1][:, env_cols]]
                outs, into = produce(a, direct, Ws[-1][:, :S], layer + 1)
                env_w = None if last else outs[0]
                contributions.append(into)
            pre = reader_input(L)
            if not ro_hidden:
                e_edge = pre[:, 0]
            else:
                a = act_r(pre)
                for w in W_ro[1:-1]:
                    a = act_r(a @ w)
                e_edge = (a @ W_ro[-1])[:, 0]
        else:
            # ---- two-body tensor embedding ----
            (w0,) = ScalarMLP((C * n_sh,), None, param_dtype=dt, name="tensor_embed_linear")(
                h, out_columns=[irrep_major_columns(0, C, n_sh)]
            )
            features = weighted_channels_dc(sh, per_irrep(w0), sh_ir)  # [n_edges, D, C]

            # ---- Allegro layers ----
            x0, env_w = ScalarMLP(
                (S + C * n_sh,), None, param_dtype=dt, name="first_layer_projection"
            )(h, out_columns=[slice(0, S), env_cols])
            latents = [x0]
            for layer, spec in enumerate(specs):
                features = layer_tp(layer, spec, features, env_w)
                scalars = features[:, 0, :]  # [n_edges, C] (0e is first)
                last = layer == L - 1
                out_dim = S + (0 if last else C * n_sh)
                y, *env_w = ScalarMLP(
                    lat_hidden + (out_dim,),
                    cfg.allegro_mlp_nonlinearity,
                    param_dtype=dt,
                    name=f"latent_{layer}",
                )(latents + [scalars], out_columns=[slice(0, S)] + ([] if last else [env_cols]))
                env_w = env_w[0] if env_w else None
                latents.append(y)

            # ---- readout ----
            e_edge = ScalarMLP(
                ro_hidden + (1,), cfg.readout_mlp_nonlinearity, param_dtype=dt, name="readout"
            )(latents)[:, 0]
        e_edge = jnp.where(edge_mask, e_edge, 0.0)
        e_atom = jax.ops.segment_sum(e_edge, edge_center, num_segments=n_nodes)
        e_atom = e_atom * node_norm[:, 0, 0] / np.sqrt(2.0)
        e_atom = scale_shift(cfg, self, e_atom.astype(gdt), center_species)
        e_atom = e_atom + pair_atomic_energies(
            cfg, r, species, edge_center, edge_neighbor, edge_mask, num_segments=n_nodes
        )
        return jnp.where(node_mask[:n_nodes], e_atom, 0.0)
