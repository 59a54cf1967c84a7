"""Window partition / reverse, rolled ring keys, pooled neighbourhoods and temporal focal attention,
checked against direct geometric (loop) transcriptions of the official semantics."""
from __future__ import annotations

import collections

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecformer_jax.layers import windows as W

WINDOW, EXPAND, KERNEL = (5, 9), (2, 4), (5, 9)


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_partition_order_and_roundtrip():
    x = _rand((2, 3, 10, 18, 4))
    win = np.asarray(W.window_partition(jnp.asarray(x), WINDOW))
    assert win.shape == (2, 2, 2, 3, 45, 4)
    for b, i, j, t, r, c in [(0, 0, 0, 0, 0, 0), (1, 1, 0, 2, 4, 8), (0, 1, 1, 1, 2, 3)]:
        np.testing.assert_array_equal(win[b, i, j, t, r * 9 + c], x[b, t, i * 5 + r, j * 9 + c])
    np.testing.assert_array_equal(np.asarray(W.window_reverse(jnp.asarray(win), WINDOW)), x)


def test_partition_rejects_partial_windows():
    with pytest.raises(ValueError, match="whole number of 5x9 windows"):
        W.window_partition(jnp.zeros((1, 1, 10, 20, 2)), WINDOW)


def test_ring_indices_match_official_buffer():
    idx = W.rolled_ring_indices(WINDOW, EXPAND)
    assert idx.shape == (120,)
    # the official buffer: nonzero entries of the four stacked 5x9 masks
    masks = np.ones((4, 5, 9))
    masks[0, :3, :5] = 0
    masks[1, :3, 4:] = 0
    masks[2, 2:, :5] = 0
    masks[3, 2:, 4:] = 0
    np.testing.assert_array_equal(idx, np.flatnonzero(masks))


def test_rolled_tokens_are_the_ring_with_middle_row_and_column_twice():
    """Geometry: the (2, 4) ring around each window (wrapping around the grid), tokens in the window's
    middle row or middle column extension present twice - 108 distinct + 12 duplicates."""
    t, h, w = 2, 10, 27
    pos = np.stack(np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij"), -1)  # (t, h, w, 3)
    got = np.asarray(W.rolled_tokens(jnp.asarray(pos[None]), WINDOW, EXPAND))  # (1, nh, nw, t, 120, 3)
    assert got.shape == (1, 2, 3, t, 120, 3)
    for i in range(2):
        for j in range(3):
            for f in range(t):
                want = collections.Counter()
                for rr in range(-2, 7):
                    for cc in range(-4, 13):
                        if 0 <= rr < 5 and 0 <= cc < 9:
                            continue
                        key = (f, (i * 5 + rr) % h, (j * 9 + cc) % w)
                        want[key] += 2 if (rr == 2 or cc == 4) else 1
                assert sum(want.values()) == 120
                assert collections.Counter(map(tuple, got[0, i, j, f])) == want


def test_neighbourhood_zero_padding_and_valid_mask():
    pooled = _rand((1, 2, 3, 4, 2))
    got = np.asarray(W.neighbourhood(jnp.asarray(pooled), KERNEL))  # (1, 3, 4, 2, 45, 2)
    valid = W.neighbourhood_valid((3, 4), KERNEL)
    assert got.shape == (1, 3, 4, 2, 45, 2) and valid.shape == (3, 4, 45)
    for i in range(3):
        for j in range(4):
            for kr in range(5):
                for kc in range(9):
                    y, x = i - 2 + kr, j - 4 + kc
                    inside = 0 <= y < 3 and 0 <= x < 4
                    assert valid[i, j, kr * 9 + kc] == inside
                    want = pooled[0, :, y, x] if inside else np.zeros((2, 2))
                    np.testing.assert_array_equal(got[0, i, j, :, kr * 9 + kc], want)
    with pytest.raises(ValueError, match="must be odd"):
        W.neighbourhood(jnp.asarray(pooled), (4, 9))


def test_focal_pool_default_is_mean_and_learned_weights_apply():
    x = _rand((1, 2, 10, 18, 3))
    pool = W.FocalPool(WINDOW)
    variables = pool.init(jax.random.key(0), x)
    got = np.asarray(pool.apply(variables, x))
    assert got.shape == (1, 2, 2, 2, 3)
    want = x.reshape(1, 2, 2, 5, 2, 9, 3).mean(axis=(3, 5))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    wgt, bias = _rand((45,), 1), np.float32(0.3)
    got = pool.apply({"params": {"fc": {"kernel": wgt[:, None], "bias": np.array([bias])}}}, x)
    blocks = x.reshape(1, 2, 2, 5, 2, 9, 3).transpose(0, 1, 2, 4, 3, 5, 6).reshape(1, 2, 2, 2, 45, 3)
    np.testing.assert_allclose(np.asarray(got), np.einsum("btijnc,n->btijc", blocks, wgt) + bias, rtol=1e-5,
                               atol=1e-5)


def _reference_attention(x, pooled, p, heads):
    """Per-window loop over the geometric key set (float64): own window, ring (middle row / column
    twice, wrapping), pooled 5x9 neighbourhood with -100 on zero-padded keys."""
    x, pooled = x.astype(np.float64), pooled.astype(np.float64)
    b_, t, h, w, c = x.shape
    d = c // heads
    qkv = x @ p["qkv"]["kernel"] + p["qkv"]["bias"]
    pqkv = pooled @ p["qkv"]["kernel"] + p["qkv"]["bias"]
    q, k, v = np.split(qkv, 3, -1)
    _, pk, pv = np.split(pqkv, 3, -1)
    nh, nw = h // 5, w // 9
    out = np.zeros_like(x)
    for b in range(b_):
        for i in range(nh):
            for j in range(nw):
                qs, ks, vs, bias = [], [], [], []
                for f in range(t):
                    for r in range(5):
                        for cc in range(9):
                            qs.append(q[b, f, i * 5 + r, j * 9 + cc])
                for f in range(t):
                    for rr in range(-2, 7):
                        for cc in range(-4, 13):
                            y, xx = (i * 5 + rr) % h, (j * 9 + cc) % w
                            inside = 0 <= rr < 5 and 0 <= cc < 9
                            copies = 1 if inside else (2 if (rr == 2 or cc == 4) else 1)
                            for _ in range(copies):
                                ks.append(k[b, f, y, xx])
                                vs.append(v[b, f, y, xx])
                                bias.append(0.0)
                    for kr in range(5):
                        for kc in range(9):
                            y, xx = i - 2 + kr, j - 4 + kc
                            if 0 <= y < nh and 0 <= xx < nw:
                                ks.append(pk[b, f, y, xx])
                                vs.append(pv[b, f, y, xx])
                                bias.append(0.0)
                            else:
                                ks.append(np.zeros(c))
                                vs.append(np.zeros(c))
                                bias.append(-100.0)
                qs, ks, vs, bias = map(np.asarray, (qs, ks, vs, bias))
                assert ks.shape[0] == t * 210
                res = np.zeros((qs.shape[0], c))
                for hh in range(heads):
                    sl = slice(hh * d, (hh + 1) * d)
                    logits = (qs[:, sl] * d**-0.5) @ ks[:, sl].T + bias
                    a = np.exp(logits - logits.max(-1, keepdims=True))
                    a /= a.sum(-1, keepdims=True)
                    res[:, sl] = a @ vs[:, sl]
                res = res @ p["proj"]["kernel"] + p["proj"]["bias"]
                out[b, :, i * 5 : i * 5 + 5, j * 9 : j * 9 + 9] = res.reshape(t, 5, 9, c)
    return out


@pytest.mark.parametrize("grid", [(10, 18), (15, 27)])
def test_temporal_focal_attention_matches_geometric_reference(grid):
    h, w = grid
    c, heads, t = 8, 2, 2
    x = _rand((1, t, h, w, c), 3)
    pooled = _rand((1, t, h // 5, w // 9, c), 4)
    attn = W.TemporalFocalAttention(c, heads)
    variables = attn.init(jax.random.key(1), x, pooled)
    # larger weights than the init so that the softmax is far from uniform
    variables = jax.tree.map(lambda a: np.asarray(_rand(a.shape, a.size)) * 0.7, variables)
    got = np.asarray(attn.apply(variables, x, pooled))
    want = _reference_attention(x, pooled, jax.tree.map(np.asarray, variables["params"]), heads)
    chex.assert_shape(got, (1, t, h, w, c))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_temporal_focal_attention_bfloat16_runs():
    x = _rand((1, 2, 10, 18, 8), 5)
    pooled = _rand((1, 2, 2, 2, 8), 6)
    attn32 = W.TemporalFocalAttention(8, 2)
    variables = attn32.init(jax.random.key(2), x, pooled)
    ref = np.asarray(attn32.apply(variables, x, pooled))
    got = W.TemporalFocalAttention(8, 2, dtype=jnp.bfloat16).apply(variables, x.astype(jnp.bfloat16),
                                                                    pooled.astype(jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), ref, atol=3e-2 * max(1, np.abs(ref).max()))


def test_focal_key_index_is_the_structured_key_set():
    """One gather with `focal_key_index` = own window ++ rolled ring ++ zero-padded pooled neighbourhood."""
    t, h, w, c = 2, 15, 27, 3
    full, pooled = _rand((1, t, h, w, c), 8), _rand((1, t, 3, 3, c), 9)
    window, expand, kernel = (5, 9), (2, 4), (5, 9)
    flat = lambda a: np.asarray(a).reshape(1, 3, 3, -1, c)
    want = np.concatenate([flat(W.window_partition(full, window)), flat(W.rolled_tokens(full, window, expand)),
                           flat(W.neighbourhood(pooled, kernel))], axis=-2)
    idx = W.focal_key_index(t, h, w, window, expand, kernel)
    rows = np.concatenate([np.asarray(full).reshape(t * h * w, c), np.asarray(pooled).reshape(-1, c),
                           np.zeros((1, c), np.float32)])
    np.testing.assert_array_equal(rows[idx][None], want)
