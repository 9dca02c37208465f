"""Irreps bookkeeping and the channel-wise ("strided") tensor products of Allegro.

Tensor features are stored strided, ``[n_edges, C, D]``: C channels, each holding one copy
of every irrep of an irreps list (multiplicity 1), concatenated along D. Irreps are
``(l, p)`` pairs, ``p = ±1``. Spherical harmonics carry ``p = (-1)^l``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np

from . import cpu_kernel

Irrep = tuple[int, int]  # (l, parity)


def irrep_str(ir: Irrep) -> str:
    return f"{ir[0]}{'e' if ir[1] == 1 else 'o'}"


def irreps_dim(irreps: Sequence[Irrep]) -> int:
    return sum(2 * l + 1 for l, _ in irreps)


def irreps_offsets(irreps: Sequence[Irrep]) -> list[int]:
    out, o = [], 0
    for l, _ in irreps:
        out.append(o)
        o += 2 * l + 1
    return out


def sh_irreps(l_max: int) -> list[Irrep]:
    """Irreps of the spherical harmonics up to ``l_max``: ``0e + 1o + 2e + ...``."""
    return [(l, (-1) ** l) for l in range(l_max + 1)]


def allowed_irreps(l_max: int, parity: bool) -> list[Irrep]:
    """Irreps allowed on the tensor track (allegro ``tensor_track_allowed_irreps``)."""
    if parity:
        return [(l, p) for l in range(l_max + 1) for p in (1, -1)]
    return sh_irreps(l_max)


def irrep_product(a: Irrep, b: Irrep) -> list[Irrep]:
    """Irreps in the product ``a ⊗ b``."""
    return [(l, a[1] * b[1]) for l in range(abs(a[0] - b[0]), a[0] + b[0] + 1)]


def _path_exists(irreps1: Sequence[Irrep], irreps2: Sequence[Irrep], out: Irrep) -> bool:
    return any(out in irrep_product(a, b) for a in irreps1 for b in irreps2)


def layer_irreps(l_max: int, parity: bool, num_layers: int) -> list[list[Irrep]]:
    """Irreps of the tensor track before and after each layer, with useless paths pruned.

    Mirrors allegro 0.8 ``Allegro_Module``: the input of layer 1 is the SH irreps; every
    layer's output is the allowed irreps reachable from its input, except the last, which
    outputs scalars ``0e`` only; then, walking backwards, an input irrep is kept only if it
    can reach some irrep that the next stage keeps.

    Returns:
        ``num_layers + 1`` irreps lists: the input of layer 1, then each layer's output.
    """
    env = sh_irreps(l_max)
    allowed = allowed_irreps(l_max, parity)
    tps = [env]
    arg = env
    for layer in range(num_layers):
        target = [(0, 1)] if layer == num_layers - 1 else allowed
        out = [ir for ir in target if _path_exists(arg, env, ir)]
        tps.append(out)
        arg = out
    # backward pruning
    pruned = [tps[-1]]
    out = tps[-1]
    for arg in reversed(tps[:-1]):
        keep = [a for a in arg if any(any(i in out for i in irrep_product(a, e)) for e in env)]
        pruned.append(keep)
        out = keep
    pruned = list(reversed(pruned))
    assert pruned[-1] == [(0, 1)], pruned[-1]
    return pruned


def tp_paths(
    irreps1: Sequence[Irrep], irreps2: Sequence[Irrep], irreps_out: Sequence[Irrep]
) -> list[tuple[int, int, int]]:
    """All ``(i1, i2, i_out)`` paths, ordered by output irrep, then ``i1``, then ``i2``."""
    return [
        (i1, i2, io)
        for io, ir_o in enumerate(irreps_out)
        for i1, ir1 in enumerate(irreps1)
        for i2, ir2 in enumerate(irreps2)
        if ir_o in irrep_product(ir1, ir2)
    ]


def path_coupling_tensor(
    irreps1: Sequence[Irrep],
    irreps2: Sequence[Irrep],
    irreps_out: Sequence[Irrep],
    paths: Sequence[tuple[int, int, int]],
) -> np.ndarray:
    """Clebsch–Gordan blocks of every path, ``[n_paths, D1, D2, D_out]`` (float64).

    Each block is ``C^{l1 l2 l3}`` (unit Frobenius norm, equal to e3nn-torch ``wigner_3j``)
    times ``√(2 l3 + 1)`` ("component" normalisation), placed at the irreps' offsets.
    """
    o1, o2, oo = irreps_offsets(irreps1), irreps_offsets(irreps2), irreps_offsets(irreps_out)
    w = np.zeros((len(paths), irreps_dim(irreps1), irreps_dim(irreps2), irreps_dim(irreps_out)))
    for p, (i1, i2, io) in enumerate(paths):
        (l1, _), (l2, _), (l3, _) = irreps1[i1], irreps2[i2], irreps_out[io]
        cg = np.asarray(e3nn.clebsch_gordan(l1, l2, l3), dtype=np.float64) * math.sqrt(2 * l3 + 1)
        w[
            p,
            o1[i1] : o1[i1] + 2 * l1 + 1,
            o2[i2] : o2[i2] + 2 * l2 + 1,
            oo[io] : oo[io] + 2 * l3 + 1,
        ] = cg
    return w


@dataclasses.dataclass(frozen=True)
class TPSpec:
    """Static description of one Allegro tensor product."""

    irreps1: tuple[Irrep, ...]
    irreps2: tuple[Irrep, ...]
    irreps_out: tuple[Irrep, ...]
    paths: tuple[tuple[int, int, int], ...]

    @classmethod
    def build(cls, irreps1, irreps2, irreps_out) -> TPSpec:
        paths = tuple(tp_paths(irreps1, irreps2, irreps_out))
        if not paths:
            raise ValueError(f"no tensor product paths {irreps1} x {irreps2} -> {irreps_out}")
        return cls(tuple(irreps1), tuple(irreps2), tuple(irreps_out), paths)

    @property
    def num_paths(self) -> int:
        return len(self.paths)

    @property
    def dims(self) -> tuple[int, int, int]:
        return irreps_dim(self.irreps1), irreps_dim(self.irreps2), irreps_dim(self.irreps_out)

    def coupling(self) -> np.ndarray:
        """``[n_paths, D1, D2, D_out]`` Clebsch–Gordan blocks (cached, read-only)."""
        return _cached_coupling(self)

    def __str__(self) -> str:
        f = lambda irs: "+".join(irrep_str(i) for i in irs)  # noqa: E731
        ins = f"{f(self.irreps1)} x {f(self.irreps2)}"
        return f"{ins} -> {f(self.irreps_out)} [{self.num_paths} paths]"


def weighted_channels(basis: jax.Array, weights: jax.Array, irreps: Sequence[Irrep]) -> jax.Array:
    """Per-(channel, irrep) weighting of a one-copy basis (allegro ``MakeWeightedChannels``).

    Args:
        basis: ``[n, D]`` (e.g. spherical harmonics).
        weights: ``[n, C * n_irreps]``, channel-major.
        irreps: the irreps of ``basis``.

    Returns:
        ``[n, C, D]`` with ``out[z, u, m] = weights[z, u, irrep(m)] * basis[z, m]``.
    """
    n_ir = len(irreps)
    w = weights.reshape(weights.shape[0], -1, n_ir)  # [n, C, n_irreps]
    idx = np.repeat(np.arange(n_ir), [2 * l + 1 for l, _ in irreps])
    return w[:, :, idx] * basis[:, None, :]


@functools.lru_cache(maxsize=256)
def _cached_coupling(spec: TPSpec) -> np.ndarray:
    w = path_coupling_tensor(spec.irreps1, spec.irreps2, spec.irreps_out, spec.paths)
    w.setflags(write=False)
    return w


# ---------------------------------------------------------------------------------------
# Sparse channel-wise tensor product in the [n_edges, D, C] layout (channels minor).
#
# Only the non-zero Clebsch–Gordan entries (i, j, k) of the summed path tensor are visited
# (l_max 2: 83 of 729 dense entries). Two primitives close the algebra under
# differentiation, so forces (first derivatives) and force training (second derivatives)
# stay sparse:
#   bilinear:      out[:, k_n] += w[n] · a[:, i_n] · b[:, j_n]         (row by row)
#   trilinear_sum: s[n]         = Σ_rows x[:, i_n] · y[:, j_n] · z[:, k_n]   ([nnz, C])
# The VJP of each is written with the other, index roles permuted.
#
# On CPU both run as the hand-written kernels of ``_tp_cpu.cc`` (cpu_kernel.py): every
# entry of one edge applied while its operands sit in L1. XLA:CPU cannot do that: it emits
# one loop per output component and one column reduction per entry (~8 elementwise ops per
# TP output and ~10 µs of overhead each; benchmarks/NOTES.md, entry 4). Elsewhere (GPU), or
# with the kernels off, the same maths runs as XLA operations on [n, C] slices.
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def sparse_entries(
    spec: TPSpec,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], np.ndarray]:
    """Non-zero entries ``(I, J, K)`` of the summed path tensor and their per-path values.

    Returns:
        ``I, J, K`` (static index tuples, sorted by ``K``) and ``values`` ``[n_paths, nnz]``.
    """
    cg = spec.coupling()
    nz = np.argwhere(np.any(cg != 0, axis=0))
    nz = nz[np.lexsort((nz[:, 1], nz[:, 0], nz[:, 2]))]
    i, j, k = (tuple(int(v) for v in col) for col in nz.T)
    values = cg[:, nz[:, 0], nz[:, 1], nz[:, 2]]
    values.setflags(write=False)
    return i, j, k, values


def _bilinear_xla(a, b, w, ia, ib, io, n_out):
    outs: list = [None] * n_out
    for n, (i, j, k) in enumerate(zip(ia, ib, io, strict=True)):
        t = a[:, i] * b[:, j] * w[n]
        outs[k] = t if outs[k] is None else outs[k] + t
    zero = jnp.zeros_like(a[:, 0])
    return jnp.stack([zero if o is None else o for o in outs], axis=1)


def _trilinear_sum_xla(x, y, z, ix, iy, iz):
    return jnp.stack(
        [jnp.sum(x[:, i] * y[:, j] * z[:, k], axis=0) for i, j, k in zip(ix, iy, iz, strict=True)]
    )


def _indices(**idx) -> dict[str, np.ndarray]:
    return {name: np.asarray(v, np.int32) for name, v in idx.items()}


def _bilinear_kernel(a, b, w, ia, ib, io, n_out):
    order = np.argsort(np.asarray(io), kind="stable")  # the kernel groups entries by output
    ia, ib, io = (tuple(np.asarray(v)[order]) for v in (ia, ib, io))
    call = jax.ffi.ffi_call(
        "allegro_bilinear",
        jax.ShapeDtypeStruct((a.shape[0], n_out, a.shape[2]), a.dtype),
        vmap_method="sequential",
    )
    return call(a, b, w[order], **_indices(ia=ia, ib=ib, io=io))


def _trilinear_sum_kernel(x, y, z, ix, iy, iz):
    call = jax.ffi.ffi_call(
        "allegro_trilinear_sum",
        jax.ShapeDtypeStruct((len(ix), x.shape[2]), x.dtype),
        vmap_method="sequential",
    )
    return call(x, y, z, **_indices(ix=ix, iy=iy, iz=iz))


def _dispatch(kernel, xla, arrays, static):
    """``kernel(*arrays, *static)`` on CPU when the CPU kernels are on and built, else the
    XLA version."""
    if not cpu_kernel.enabled():
        return xla(*arrays, *static)
    return jax.lax.platform_dependent(
        *arrays,
        cpu=lambda *xs: kernel(*xs, *static),
        default=lambda *xs: xla(*xs, *static),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def bilinear(a, b, w, ia, ib, io, n_out):
    """``out[:, io_n] += w[n] * a[:, ia_n] * b[:, ib_n]`` over the entries ``n``.

    Args:
        a: ``[n, Da, C]``; b: ``[n, Db, C]``; w: ``[nnz, C]`` or ``[nnz, 1]`` (broadcast
            over rows); ia, ib, io: static index tuples of length nnz; n_out: output
            dimension.

    Returns:
        ``[n, n_out, C]``.
    """
    return _dispatch(_bilinear_kernel, _bilinear_xla, (a, b, w), (ia, ib, io, n_out))


def _bilinear_fwd(a, b, w, ia, ib, io, n_out):
    return bilinear(a, b, w, ia, ib, io, n_out), (a, b, w)


def _bilinear_bwd(ia, ib, io, n_out, res, g):
    a, b, w = res
    da = bilinear(g, b, w, io, ib, ia, a.shape[1])
    db = bilinear(g, a, w, io, ia, ib, b.shape[1])
    dw = trilinear_sum(g, a, b, io, ia, ib)  # [nnz, C]
    if w.shape[-1] == 1 and dw.shape[-1] != 1:
        dw = jnp.sum(dw, axis=-1, keepdims=True)
    return da, db, dw.astype(w.dtype)


bilinear.defvjp(_bilinear_fwd, _bilinear_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def trilinear_sum(x, y, z, ix, iy, iz):
    """``s[n] = Σ_rows x[:, ix_n] * y[:, iy_n] * z[:, iz_n]`` for every entry ``n``.

    Args:
        x: ``[n, Dx, C]``; y: ``[n, Dy, C]``; z: ``[n, Dz, C]``; ix, iy, iz: static index
            tuples of length nnz.

    Returns:
        ``[nnz, C]``.
    """
    return _dispatch(_trilinear_sum_kernel, _trilinear_sum_xla, (x, y, z), (ix, iy, iz))


def _trilinear_sum_fwd(x, y, z, ix, iy, iz):
    return trilinear_sum(x, y, z, ix, iy, iz), (x, y, z)


def _trilinear_sum_bwd(ix, iy, iz, res, ct):
    x, y, z = res
    dx = bilinear(y, z, ct, iy, iz, ix, x.shape[1])
    dy = bilinear(x, z, ct, ix, iz, iy, y.shape[1])
    dz = bilinear(x, y, ct, ix, iy, iz, z.shape[1])
    return dx, dy, dz


trilinear_sum.defvjp(_trilinear_sum_fwd, _trilinear_sum_bwd)


def sparse_channelwise_tp(
    x1: jax.Array, x2: jax.Array, weights: jax.Array, spec: TPSpec
) -> jax.Array:
    """Weighted channel-wise TP in the ``[n_edges, D, C]`` layout.

    ``out[z, k, u] = Σ_p w[u, p] Σ_ij CG_p[i, j, k] x1[z, i, u] x2[z, j, u]`` (or ``w[p]``
    without channel coupling).

    Args:
        x1: ``[n_edges, D1, C]``; x2: ``[n_edges, D2, C]``.
        weights: ``[C, n_paths]`` or ``[n_paths]``.
        spec: the tensor product.

    Returns:
        ``[n_edges, D_out, C]``.
    """
    i, j, k, values = sparse_entries(spec)
    dtype = x1.dtype
    vals = jnp.asarray(values.T, dtype)  # [nnz, P]
    ww = vals @ weights.astype(dtype).T if weights.ndim == 2 else (vals @ weights)[:, None]
    return bilinear(x1, x2.astype(dtype), ww, i, j, k, spec.dims[2])


def weighted_channels_dc(
    basis: jax.Array, weights: jax.Array, irreps: Sequence[Irrep]
) -> jax.Array:
    """:func:`weighted_channels` in the ``[n, D, C]`` layout, weights irrep-major.

    Args:
        basis: ``[n, D]``.
        weights: ``[n, n_irreps, C]``.
        irreps: the irreps of ``basis``.

    Returns:
        ``[n, D, C]`` with ``out[z, m, u] = weights[z, irrep(m), u] * basis[z, m]``.

    Its VJP is written out (``_weighted_channels``): differentiated by JAX, the
    weights broadcast to ``[n, D, C]`` was materialised for the basis' cotangent (three
    ``[n_edges, D, C]`` arrays written and read back per force call; benchmarks/NOTES.md
    section 14).
    """
    return _weighted_channels(tuple(2 * l + 1 for l, _ in irreps))(basis, weights)


@functools.cache
def _weighted_channels(block_sizes: tuple[int, ...]):
    """``weighted_channels_dc`` for irrep blocks of these sizes, with its own VJP."""
    starts = np.concatenate([[0], np.cumsum(block_sizes)]).tolist()
    blocks = [(ir, starts[ir], starts[ir + 1]) for ir in range(len(block_sizes))]

    @jax.custom_vjp
    def wc(basis, weights):
        parts = [weights[:, ir : ir + 1, :] * basis[:, a:b, None] for ir, a, b in blocks]
        return jnp.concatenate(parts, axis=1)

    def fwd(basis, weights):
        return wc(basis, weights), (basis, weights)

    def bwd(res, g):
        # plain JAX ops, so the force loss can differentiate this again
        basis, weights = res
        g_basis = jnp.concatenate(
            [jnp.sum(g[:, a:b, :] * weights[:, ir : ir + 1, :], axis=-1) for ir, a, b in blocks],
            axis=1,
        )
        g_weights = jnp.stack(
            [jnp.sum(g[:, a:b, :] * basis[:, a:b, None], axis=1) for _, a, b in blocks], axis=1
        )
        return g_basis.astype(basis.dtype), g_weights.astype(weights.dtype)

    wc.defvjp(fwd, bwd)
    return wc


def irrep_major_columns(offset: int, channels: int, n_irreps: int) -> np.ndarray:
    """Columns of a channel-major ``[C * n_irreps]`` weight block, reordered irrep-major.

    A block laid out as ``(channel, irrep)`` (allegro ``MakeWeightedChannels``) at column
    ``offset``; selecting these columns gives ``(irrep, channel)`` order, which reshapes to
    ``[n, n_irreps, C]``.
    """
    return np.concatenate(channel_major_columns(offset, channels, n_irreps))


def channel_major_columns(offset: int, channels: int, n_irreps: int) -> list[np.ndarray]:
    """Columns of each irrep's ``[C]`` weights in a channel-major ``[C * n_irreps]`` block.

    A block laid out as ``(channel, irrep)`` (allegro ``MakeWeightedChannels``) at column
    ``offset`` holds irrep ``ir``'s weights at ``offset + ir + n_irreps * arange(C)``.
    """
    return [offset + ir + n_irreps * np.arange(channels) for ir in range(n_irreps)]
