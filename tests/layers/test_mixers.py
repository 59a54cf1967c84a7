"""Token mixers: pooling against torch's AvgPool (count_include_pad=False), GroupNorm(1) against torch,
N-d window partition / position index / shift mask against direct transcriptions, and the 3-D shifted
window attention against a loop-over-windows NumPy reference (padding, roll, mask, bias)."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ecformer_jax.layers import mixers as M
from ecformer_jax.layers import windows as W


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("shape,kernel", [((2, 7, 5, 3), (3, 3)), ((1, 3, 6, 5, 2), (3, 3, 5)),
                                          ((1, 7, 5, 6, 2), (7, 3, 1))])
def test_avg_pool_matches_torch_without_pad_counting(shape, kernel):
    x = _rand(shape)
    got = np.asarray(M.avg_pool_same(jnp.asarray(x), kernel, range(1, len(shape) - 1)))
    pool = torch.nn.functional.avg_pool2d if len(kernel) == 2 else torch.nn.functional.avg_pool3d
    ref = pool(torch.from_numpy(np.moveaxis(x, -1, 1)), kernel, 1, [k // 2 for k in kernel],
               count_include_pad=False).numpy()
    np.testing.assert_allclose(got, np.moveaxis(ref, 1, -1), atol=1e-6)


def test_pool_mixer_whole_clip_and_checks():
    u = _rand((2, 3, 4, 5, 6))
    # kt = 0 (whole clip) with a 1x1 spatial window: every token becomes the clip mean minus itself
    got = M.PoolMixer((0, 1, 1)).apply({}, jnp.asarray(u))
    np.testing.assert_allclose(np.asarray(got), u.mean(1, keepdims=True) - u, atol=1e-6)
    with pytest.raises(ValueError, match="3 entries for a 2-D token grid"):
        M.PoolMixer((0, 3, 3)).apply({}, jnp.zeros((1, 4, 4, 2)))
    with pytest.raises(ValueError, match="odd"):
        M.avg_pool_same(jnp.zeros((1, 4, 4, 2)), (2, 3), (1, 2))


def test_group_norm_one_group_matches_torch():
    x = _rand((2, 5, 6, 4), seed=1) * 3 + 1
    norm = M.GroupNorm1()
    params = {"params": {"scale": _rand((4,), 2), "bias": _rand((4,), 3)}}
    tn = torch.nn.GroupNorm(1, 4, eps=1e-5)
    with torch.no_grad():
        tn.weight.copy_(torch.from_numpy(params["params"]["scale"]))
        tn.bias.copy_(torch.from_numpy(params["params"]["bias"]))
        ref = tn(torch.from_numpy(np.moveaxis(x, -1, 1))).numpy()
    np.testing.assert_allclose(np.asarray(norm.apply(params, x)), np.moveaxis(ref, 1, -1), atol=1e-5)
    # per frame on (B, T, H, W, C) == per image on (B*T, H, W, C)
    v = np.stack([x, x[::-1] * 2])  # (2, 2, 5, 6, 4)
    per_frame = M.GroupNorm1(per_frame=True).apply(params, v)
    np.testing.assert_allclose(np.asarray(per_frame).reshape(4, 5, 6, 4),
                               np.asarray(norm.apply(params, v.reshape(4, 5, 6, 4))), atol=1e-5)


def test_partition_nd_order_and_roundtrip():
    x = _rand((2, 4, 6, 9, 3))
    win = np.asarray(M.window_partition_nd(jnp.asarray(x), (2, 3, 3)))
    assert win.shape == (2, 2 * 2 * 3, 18, 3)
    # window (1, 0, 2), token (1, 2, 0): frame 2 + 1, row 0 + 2, col 6 + 0
    np.testing.assert_array_equal(win[1, 1 * 6 + 0 * 3 + 2, 1 * 9 + 2 * 3 + 0], x[1, 3, 2, 6])
    np.testing.assert_array_equal(np.asarray(M.window_reverse_nd(jnp.asarray(win), (2, 3, 3), (4, 6, 9))), x)
    # the 2-D case agrees with the E2FGVI / Focal partition of layers/windows.py (T = 1)
    y = _rand((2, 10, 18, 3))
    np.testing.assert_array_equal(np.asarray(M.window_partition_nd(jnp.asarray(y), (5, 9))),
                                  np.asarray(W.window_partition(jnp.asarray(y[:, None]), (5, 9))).reshape(2, 4, 45, 3))
    with pytest.raises(ValueError, match="whole number of 2x4 windows"):
        M.window_partition_nd(jnp.zeros((1, 4, 6, 1)), (2, 4))


def test_relative_position_index_is_the_offset_formula():
    idx = M.relative_position_index((2, 3, 4))
    coords = [(t, y, x) for t in range(2) for y in range(3) for x in range(4)]
    for i, (ti, yi, xi) in enumerate(coords):
        for j, (tj, yj, xj) in enumerate(coords):
            want = (ti - tj + 1) * 5 * 7 + (yi - yj + 2) * 7 + (xi - xj + 3)
            assert idx[i, j] == want
    assert idx.max() == 3 * 5 * 7 - 1
    # a clamped window looks up the same offsets in the full table
    small = M.relative_position_index((1, 2, 2), table_window=(2, 3, 4))
    assert small[0, 3] == (0 + 1) * 35 + (0 - 1 + 2) * 7 + (0 - 1 + 3)


def test_shift_mask_band_rule_3d():
    grid, window, shift = (4, 6, 4), (2, 3, 2), (1, 1, 1)
    mask = M.shift_mask(grid, window, shift)
    assert mask.shape == (2 * 2 * 2, 12, 12)

    def label(n, w, s, i):
        return 0 if i < n - w else (1 if i < n - s else 2)

    for wi, (a, b, c) in enumerate([(a, b, c) for a in range(2) for b in range(2) for c in range(2)]):
        toks = [(a * 2 + t, b * 3 + y, c * 2 + x) for t in range(2) for y in range(3) for x in range(2)]
        lab = [tuple(label(n, w, s, p) for n, w, s, p in zip(grid, window, shift, tok)) for tok in toks]
        want = np.array([[0.0 if li == lj else -100.0 for lj in lab] for li in lab])
        np.testing.assert_array_equal(mask[wi], want)
    assert (mask[0] == 0).all()  # the first window never wraps


def test_effective_window_clamps():
    assert M.effective_window((2, 20, 36), (5, 5, 9), (2, 2, 4)) == ((2, 5, 9), (0, 2, 4))
    assert M.effective_window((7, 7), (7, 7), (3, 3), per_axis=False) == ((7, 7), (0, 0))
    assert M.effective_window((14, 14), (7, 7), (3, 3), per_axis=False) == ((7, 7), (3, 3))


def _reference_swa(x, params, window, shift, heads):
    """Loop-over-windows transcription: pad, roll, attend within windows (bias + band mask), undo."""
    b, *grid, c = x.shape
    padded = [-(-n // w) * w for n, w in zip(grid, window)]
    xp = np.zeros((b, *padded, c), np.float64)
    xp[:, : grid[0], : grid[1], : grid[2]] = x
    xr = np.roll(xp, [-s for s in shift], axis=(1, 2, 3))
    qkv = xr @ params["qkv"]["kernel"] + params["qkv"]["bias"]
    table = params["relative_position_bias_table"]
    labels = np.zeros(padded, np.int64)
    for a, (n, w, s) in enumerate(zip(padded, window, shift)):
        lab = np.zeros(n, np.int64)
        if s:
            lab[n - w: n - s], lab[n - s:] = 1, 2
        shp = [1, 1, 1]
        shp[a] = n
        labels = labels * 3 + lab.reshape(shp)
    out = np.zeros_like(xr)
    hd = c // heads
    for bi in range(b):
        for t0 in range(0, padded[0], window[0]):
            for y0 in range(0, padded[1], window[1]):
                for x0 in range(0, padded[2], window[2]):
                    pos = [(t0 + t, y0 + y, x0 + z) for t in range(window[0]) for y in range(window[1])
                           for z in range(window[2])]
                    tok = np.stack([qkv[bi, p[0], p[1], p[2]] for p in pos])
                    q, k, v = tok[:, :c], tok[:, c: 2 * c], tok[:, 2 * c:]
                    res = np.zeros((len(pos), c))
                    for h in range(heads):
                        sl = slice(h * hd, (h + 1) * hd)
                        logits = (q[:, sl] * hd ** -0.5) @ k[:, sl].T
                        for i, pi in enumerate(pos):
                            for j, pj in enumerate(pos):
                                d = [pi[a] - pj[a] + window[a] - 1 for a in range(3)]
                                row = (d[0] * (2 * window[1] - 1) + d[1]) * (2 * window[2] - 1) + d[2]
                                logits[i, j] += table[row, h]
                                if labels[pi] != labels[pj]:
                                    logits[i, j] -= 100.0
                        p = np.exp(logits - logits.max(-1, keepdims=True))
                        res[:, sl] = (p / p.sum(-1, keepdims=True)) @ v[:, sl]
                    res = res @ params["proj"]["kernel"] + params["proj"]["bias"]
                    for i, p in enumerate(pos):
                        out[bi, p[0], p[1], p[2]] = res[i]
    out = np.roll(out, shift, axis=(1, 2, 3))
    return out[:, : grid[0], : grid[1], : grid[2]]


@pytest.mark.parametrize("grid,shift", [((3, 4, 5), (1, 1, 1)), ((2, 4, 6), (0, 0, 0))])
def test_3d_shifted_window_attention_matches_loop_reference(grid, shift):
    window, heads, c = (2, 2, 3), 2, 8
    x = _rand((2, *grid, c), seed=4)
    mod = M.ShiftedWindowAttention(c, heads, window, pad=True)
    variables = mod.init(jax.random.key(0), jnp.asarray(x), window, shift)
    params = jax.tree.map(np.asarray, variables["params"])
    params["relative_position_bias_table"] = _rand(params["relative_position_bias_table"].shape, 5)
    got = jax.jit(lambda p, a: mod.apply({"params": p}, a, window, shift))(params, jnp.asarray(x))
    want = _reference_swa(x.astype(np.float64), params, window, shift, heads)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)


def test_window_attention_refuses_partial_windows_without_padding():
    mod = M.ShiftedWindowAttention(4, 1, (3, 3))
    with pytest.raises(ValueError, match="whole number of 3x3 windows"):
        mod.init(jax.random.key(0), jnp.zeros((1, 4, 6, 4)))


def test_video_swin_mixer_mixes_frames_and_clamps():
    x = jnp.asarray(_rand((1, 3, 4, 6, 8), 6))
    mix = M.VideoSwinMixer(8, 2, (2, 2, 3), shifted=True)
    variables = mix.init(jax.random.key(0), x)
    assert variables["params"]["attn"]["relative_position_bias_table"].shape == (3 * 3 * 5, 2)
    apply = jax.jit(mix.apply)
    y = apply(variables, x)
    chex.assert_shape(y, x.shape)
    # frame 1 and frame 2 share a (shifted) window: changing frame 2 changes frame 1's output
    y2 = apply(variables, x.at[:, 2].add(1.0))
    assert float(jnp.abs(y2[:, 1] - y[:, 1]).max()) > 1e-4
    # T = 1 <= Wt: the time axis is one window and unshifted, same table
    one = apply(variables, x[:, :1])
    chex.assert_shape(one, (1, 1, 4, 6, 8))
    assert bool(jnp.isfinite(one).all())


def test_temporal_focal_mixer_pads_and_equals_e2fgvi_attention_on_whole_windows():
    x = jnp.asarray(_rand((1, 2, 4, 8, 8), 7))
    mix = M.TemporalFocalMixer(8, 2, (2, 4), (3, 3))
    variables = jax.jit(mix.init)(jax.random.key(0), x)
    got = jax.jit(mix.apply)(variables, x)

    def e2fgvi(p, a):
        pooled = W.FocalPool((2, 4)).apply({"params": p["pool"]}, a)
        return W.TemporalFocalAttention(8, 2, (2, 4), (3, 3)).apply({"params": p["attn"]}, a, pooled)

    want = jax.jit(e2fgvi)(variables["params"], x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    odd = jnp.asarray(_rand((1, 2, 5, 7, 8), 8))  # padded to 6 x 8
    y = jax.jit(mix.apply)(variables, odd)
    chex.assert_shape(y, odd.shape)
    assert bool(jnp.isfinite(y).all())
