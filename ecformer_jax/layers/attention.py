"""Scaled dot-product attention: one tiled core (`attend`) under the dense, top-k and windowed attentions,
and the multi-head wrapper.

Why tiles: on the CPU the (..., Lq, Lk) score tensor of a whole layer is written, read back by the softmax and
read again by the value product; at E2FGVI's 64 x 360 x 1680 or FuseFormer's 4 x 3600 x 3600 logits that is
150-200 MB per pass, and the attention ran at half the speed of the same matmuls on cache-sized blocks.
`attend` therefore evaluates the attention in tiles of about `layers.tiling.CPU_TILE` logits (a group of
heads/windows, or a block of queries of one), one tile after another in a `lax.map`. Every query row gets
the same arithmetic as untiled (up to matmul rounding). On GPU/TPU nothing is tiled by
default.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecformer_jax.layers.conv import normal_init
from ecformer_jax.layers.tiling import default_tile


def _softmax_rows(q, k, v, scale, bias, topk):
    if q.ndim > 3:  # one batch axis: XLA's CPU dot runs slower with several
        lead = q.shape[:-2]
        flat = lambda a: None if a is None else a.reshape(-1, *a.shape[-2:])
        out = _softmax_rows(flat(q), flat(k), flat(v), scale, flat(bias), topk)
        return out.reshape(*lead, *out.shape[-2:])
    scores = jnp.einsum("...qd,...kd->...qk", q, k, preferred_element_type=jnp.float32)
    if scale is not None:
        scores = scores * scale
    if bias is not None:
        scores = scores + bias
    if topk is not None and topk < scores.shape[-1]:
        kth = jax.lax.stop_gradient(jax.lax.top_k(scores, topk)[0][..., -1:])
        scores = jnp.where(scores >= kth, scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("...qk,...kd->...qd", probs, v)


def _tiling(groups: int, lq: int, lk: int, tile: int):
    """(heads/windows per tile, query blocks per head) for `groups` independent attentions of lq x lk."""
    if lq * lk <= tile:
        per = max(d for d in range(1, groups + 1) if groups % d == 0 and d * lq * lk <= tile)
        return per, 1
    return 1, math.ceil(lq * lk / tile)


def attend(q, k, v, *, scale: float | None = None, bias=None, topk: int | None = None, tile: int | None = None):
    """softmax(scale * q k^T + bias) v over the key axis, in float32 logits; the result has v's dtype.

    q (B, ..., Lq, D), k (B, ..., Lk, D), v (B, ..., Lk, Dv) with the same leading dims; `scale` None means q
    is already scaled; `bias` broadcastable to (B, ..., Lq, Lk) is added to the logits; `topk` keeps only
    each query's topk best keys (ties with the topk-th kept; the rest get -inf). `tile`: logits per tile,
    default `layers.tiling.CPU_TILE` on the CPU and untiled elsewhere; 0 = untiled. The leading (batch)
    axis is never split, so a batch-sharded input stays sharded.
    """
    tile = default_tile(tile)
    lead, (lq, d), (lk, dv) = q.shape[:-2], q.shape[-2:], v.shape[-2:]
    if k.shape[:-2] != lead or v.shape[:-2] != lead or k.shape[-2] != lk or k.shape[-1] != d:
        raise ValueError(f"attend: q {q.shape}, k {k.shape}, v {v.shape} do not line up as (..., L, D)")
    if bias is not None:
        bias = jnp.asarray(bias, jnp.float32)
        bias = jnp.broadcast_to(bias, lead + bias.shape[-2:] if bias.ndim >= 2 else lead + (1, lk))
    groups = math.prod(lead[1:])
    per, blocks = _tiling(groups, lq, lk, tile) if tile else (groups, 1)
    if len(lead) == 0 or (per == groups and blocks == 1):
        return _softmax_rows(q, k, v, scale, bias, topk)

    b = lead[0]
    n = groups // per
    cq = math.ceil(lq / blocks)

    def to_tiles(a):  # (B, ..., L, X) -> (n, B * per, L, X); one batch axis: XLA's CPU dot is slower with two
        return jnp.moveaxis(a.reshape(b, n, per, *a.shape[-2:]), 1, 0).reshape(n, b * per, *a.shape[-2:])

    def one_group(args):
        qg, kg, vg, bg = args
        if blocks == 1:
            return _softmax_rows(qg, kg, vg, scale, bg, topk)
        pad = blocks * cq - lq
        split = lambda a: jnp.moveaxis(jnp.pad(a, ((0, 0), (0, pad), (0, 0))).reshape(
            b * per, blocks, cq, a.shape[-1]), 1, 0)  # (blocks, B * per, cq, X)
        qb = split(qg)
        if bg is not None and bg.shape[-2] == lq:
            out = jax.lax.map(lambda a: _softmax_rows(a[0], kg, vg, scale, a[1], topk), (qb, split(bg)))
        else:
            out = jax.lax.map(lambda qc: _softmax_rows(qc, kg, vg, scale, bg, topk), qb)
        return jnp.moveaxis(out, 0, 1).reshape(b * per, blocks * cq, dv)[:, :lq]

    tiles = (to_tiles(q), to_tiles(k), to_tiles(v), None if bias is None else to_tiles(bias))
    out = jax.lax.map(one_group, tiles) if n > 1 else one_group(tuple(None if a is None else a[0] for a in tiles))[None]
    return jnp.moveaxis(out.reshape(n, b, per, lq, dv), 0, 1).reshape(*lead, lq, dv)


def dot_product_attention(q, k, v, scale: float | None = None):
    """softmax(q k^T * scale) v over the key axis; scale defaults to D ** -0.5. q (..., Lq, D),
    k (..., Lk, D), v (..., Lk, Dv). Scores and softmax run in float32; the result has v's dtype."""
    return attend(q, k, v, scale=q.shape[-1] ** -0.5 if scale is None else scale)


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
    are exactly zero. Scores and softmax run in float32; the result has v's dtype.
    """
    if topk is not None and (isinstance(topk, bool) or int(topk) < 1):
        raise ValueError(f"topk_attention: topk must be a positive int or None; got {topk!r}")
    return attend(q, k, v, scale=q.shape[-1] ** -0.5 if scale is None else scale,
                  topk=None if topk is None else int(topk))
