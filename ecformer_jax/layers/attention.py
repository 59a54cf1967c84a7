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


def topk_attention(q, k, v, topk: int | None, scale: float | None = None):
    """kNN attention: per query, softmax over only its `topk` highest-scoring keys (the rest get weight 0).

    q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv). A key is kept when its score is >= the query's
    topk-th largest score, so keys tied with that score are all kept; `topk` None or >= Lk is exactly
    `dot_product_attention`. Dropped keys get -inf before the softmax: their weights and their gradients
    are exactly zero. Scores and softmax run in float32; the result has q's dtype.
    """
    if topk is not None and (isinstance(topk, bool) or int(topk) < 1):
        raise ValueError(f"topk_attention: topk must be a positive int or None; got {topk!r}")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("...qd,...kd->...qk", q, k, preferred_element_type=jnp.float32) * scale
    if topk is not None and int(topk) < scores.shape[-1]:
        kth = jax.lax.stop_gradient(jax.lax.top_k(scores, int(topk))[0][..., -1:])
        scores = jnp.where(scores >= kth, scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("...qk,...kd->...qd", probs, v)
