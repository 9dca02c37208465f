"""Bias-free scalar MLPs with forward-normalised weights.

Weights are stored with unit variance, ``W ~ U(-√3, √3)``, and applied as
``x @ (W · α)`` with ``α = gain / √fan_in`` (nequip ``ScalarMLPFunction``), which keeps the
forward activations at unit scale without biases, so an all-zero input (an edge beyond the
cutoff) gives an all-zero output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

SQRT3 = math.sqrt(3.0)
# second moment normalisation of SiLU under N(0, 1) inputs: 1/sqrt(E[silu(x)^2])
SILU_2MOM = 1.6791767923989418


def shifted_softplus(x: jax.Array) -> jax.Array:
    return jax.nn.softplus(x) - math.log(2.0)


NONLINEARITIES: dict[str | None, Callable | None] = {
    None: None,
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "ssp": shifted_softplus,
}


def uniform_unit_variance(key, shape, dtype=jnp.float32):
    """``U(-√3, √3)``: zero mean, unit variance."""
    return jax.random.uniform(key, shape, dtype, minval=-SQRT3, maxval=SQRT3)


class ScalarMLP(nn.Module):
    """``x -> act(x @ W0 α0) @ W1 α1 ...``, no biases, no activation after the last layer.

    Attributes:
        features: widths of the hidden layers followed by the output width.
        nonlinearity: name in :data:`NONLINEARITIES` (``None`` for a linear/deep-linear map).
        gain: ``"current"``: gain √2 on layers after a nonlinearity (nequip >= 0.7);
            ``"paper"``: gain ``SILU_2MOM`` (e3nn ``normalize2mom``) on those layers.
        param_dtype: dtype of the weights.
    """

    features: Sequence[int]
    nonlinearity: str | None = "silu"
    gain: str = "current"
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array | Sequence[jax.Array],
        out_columns: Sequence[np.ndarray | slice] | None = None,
    ) -> jax.Array | tuple[jax.Array, ...]:
        """Apply the MLP.

        Args:
            x: ``[..., fan_in]``, or a list of arrays ``[..., d_k]`` that stand for their
                concatenation along the last axis (multiplied block by block, so the
                concatenation is never built).
            out_columns: if given, return one array per entry instead of the whole
                output: the output columns it selects (an index array or a slice), each
                computed by its own matmul (so no slices of the output are copied).

        Returns:
            ``[..., features[-1]]``, or a tuple of ``[..., len(columns)]``.
        """
        act = NONLINEARITIES[self.nonlinearity]
        n = len(self.features)
        xs = list(x) if isinstance(x, list | tuple) else [x]
        for layer, width in enumerate(self.features):
            fan_in = sum(xi.shape[-1] for xi in xs)
            w = self.param(
                f"weight_{layer}", uniform_unit_variance, (fan_in, width), self.param_dtype
            )
            w = _scaled(w, layer, act, self.gain).astype(xs[0].dtype)
            if layer == n - 1 and out_columns is not None:
                return tuple(_block_matmul(xs, w[:, cols]) for cols in out_columns)
            y = _block_matmul(xs, w)
            if act is not None and layer < n - 1:
                y = act(y)
            xs = [y]
        return xs[0]


class MLPWeights(nn.Module):
    """The weights of a :class:`ScalarMLP` as it applies them (scaled, in ``dtype``),
    for callers that schedule the matrix products themselves.

    Same parameters as the ``ScalarMLP`` of the same name, ``features``, ``nonlinearity``
    and ``gain`` whose input is ``fan_in`` wide: names ``weight_{i}``, shapes,
    initialisation and therefore the parameter tree are identical.
    """

    fan_in: int
    features: Sequence[int]
    nonlinearity: str | None = "silu"
    gain: str = "current"
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, dtype) -> list[jax.Array]:
        """``[W_0 α_0, W_1 α_1, …]`` in ``dtype``, ``W_i`` of shape ``[fan_in_i, width_i]``."""
        act = NONLINEARITIES[self.nonlinearity]
        out, fan_in = [], self.fan_in
        for layer, width in enumerate(self.features):
            w = self.param(
                f"weight_{layer}", uniform_unit_variance, (fan_in, width), self.param_dtype
            )
            out.append(_scaled(w, layer, act, self.gain).astype(dtype))
            fan_in = width
        return out


def _scaled(w: jax.Array, layer: int, act: Callable | None, gain: str) -> jax.Array:
    """``W α``: ``α = g / √fan_in``, ``g`` 1 on the first layer and on linear maps, else √2
    (``"current"``) or ``SILU_2MOM`` (``"paper"``)."""
    if act is None or layer == 0:
        g = 1.0
    else:
        g = math.sqrt(2.0) if gain == "current" else SILU_2MOM
    return w * (g / math.sqrt(w.shape[0]))


def _block_matmul(xs: Sequence[jax.Array], w: jax.Array) -> jax.Array:
    """``concatenate(xs, -1) @ w`` as a sum of block products."""
    out, row = None, 0
    for xi in xs:
        d = xi.shape[-1]
        t = xi @ w[row : row + d]
        out = t if out is None else out + t
        row += d
    return out
