"""Scaled dot-product attention cores (dense; masked; top-k) and the multi-head wrapper."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecformer_jax.layers.conv import normal_init


def dot_product_attention(q, k, v, scale: float | None = None, mask=None, mask_value: float = -1e9):
    """softmax(q k^T * scale) v over the key axis.

    q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv); `mask` broadcastable to (..., Lq, Lk), True = hide.
    Scores and softmax run in float32 whatever the input dtype; the result has q's dtype.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("...qd,...kd->...qk", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        scores = jnp.where(mask, mask_value, scores)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("...qk,...kd->...qd", probs, v)


def split_heads(x, heads: int):
    """(..., L, heads * d) -> (..., heads, L, d), head-major channel split as view(b, n, heads, d)."""
    *lead, n, c = x.shape
    return jnp.moveaxis(x.reshape(*lead, n, heads, c // heads), -2, -3)


def merge_heads(x):
    *lead, h, n, d = x.shape
    return jnp.moveaxis(x, -3, -2).reshape(*lead, n, h * d)


class MultiHeadAttention(nn.Module):
    """Linear q/k/v projections, `heads` heads over all tokens, linear output projection."""

    dim: int
    heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        dense = lambda name: nn.Dense(self.dim, dtype=self.dtype, kernel_init=normal_init, name=name)
        q, k, v = (split_heads(dense(n)(x), self.heads) for n in ("query", "key", "value"))
        out = dot_product_attention(q, k, v)
        return dense("out")(merge_heads(out))
