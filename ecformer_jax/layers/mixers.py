"""Token mixers, channels-last: PoolFormer pooling, Swin (shifted) window attention in 2-D and 3-D,
Focal window attention (2-D), and the video versions used by the mixer generators.

Maps are (B, *S, C) with S the spatial (H, W) or spatio-temporal (T, H, W) grid. Windows are cut
batch-major, then window by window in row-major order over S; the tokens of a window are row-major
too (for 3-D: (t, y, x)). Masks use -100 (not -inf), as the official Swin / Focal code.

  * `avg_pool_same` / `PoolMixer`: P(u) - u with an average pool, stride 1, "same" padding,
    count_include_pad=False (PoolFormer; video: (kt, kh, kw) over (T, H, W)).
  * `ShiftedWindowAttention`: Swin's window attention with relative position bias, cyclic shift and
    the band mask, in any number of dimensions (2-D Swin, 3-D Video-Swin), optional end padding.
  * `FocalAttention`: Focal Transformer's window attention (window tokens, rolled neighbour ring,
    pooled windows, three position-bias tables), one pooled level ('fc'). It reuses the ring / pooled
    neighbourhood helpers of `layers/windows.py` with a time axis of length 1.
  * `TemporalFocalMixer`: E2FGVI's temporal focal attention (`layers/windows.py`) with zero padding
    to whole windows, for any token grid.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax

from ecformer_jax.layers.attention import attend, merge_heads, split_heads
from ecformer_jax.layers.windows import (
    FocalPool,
    TemporalFocalAttention,
    neighbourhood,
    neighbourhood_valid,
    rolled_ring_indices,
    rolled_tokens,
    window_partition,
)

MASK_LOGIT = -100.0  # what Swin / Focal add to the logits of masked pairs
trunc_normal = nn.initializers.truncated_normal(0.02)


# --- pooling ---------------------------------------------------------------------------------------
def pool_counts(size: int, kernel: int) -> np.ndarray:
    """How many in-range taps a stride-1, pad kernel//2 window has at each of `size` positions."""
    p = kernel // 2
    i = np.arange(size)
    return (np.minimum(i + p, size - 1) - np.maximum(i - p, 0) + 1).astype(np.float32)


def avg_pool_same(x, kernel, axes):
    """Average pool of `x` over `axes` with odd `kernel` sizes, stride 1, padding kernel // 2 and
    count_include_pad=False (each output is the mean of the in-range taps only)."""
    kernel, axes = tuple(int(k) for k in kernel), tuple(a % x.ndim for a in axes)
    if len(kernel) != len(axes):
        raise ValueError(f"avg_pool_same: {len(kernel)} kernel sizes for {len(axes)} axes")
    if any(k < 1 or k % 2 == 0 for k in kernel):
        raise ValueError(f"avg_pool_same: kernel sizes must be odd and positive; got {kernel}")
    dims, pads = [1] * x.ndim, [(0, 0)] * x.ndim
    count = np.ones([1] * x.ndim, np.float32)
    for a, k in zip(axes, kernel):
        dims[a], pads[a] = k, (k // 2, k // 2)
        shape = [1] * x.ndim
        shape[a] = x.shape[a]
        count = count * pool_counts(x.shape[a], k).reshape(shape)
    total = lax.reduce_window(x, np.array(0, x.dtype), lax.add, tuple(dims), (1,) * x.ndim, tuple(pads))
    return total / jnp.asarray(count, x.dtype)


class PoolMixer(nn.Module):
    """PoolFormer's token mixer P(u) - u on (B, *S, C) maps (no parameters).

    `pool_size` has one odd size per grid axis ((kh, kw) for images, (kt, kh, kw) for video); 0 means
    the whole axis (kernel 2n - 1: every token gets the mean over that axis, e.g. the clip mean).
    """

    pool_size: tuple = (3, 3)

    @nn.compact
    def __call__(self, u):
        grid = u.shape[1:-1]
        if len(self.pool_size) != len(grid):
            raise ValueError(f"PoolMixer: pool_size {tuple(self.pool_size)} has {len(self.pool_size)} entries for a "
                             f"{len(grid)}-D token grid {tuple(grid)}")
        kernel = tuple(2 * n - 1 if k == 0 else k for k, n in zip(self.pool_size, grid))
        return avg_pool_same(u, kernel, range(1, 1 + len(grid))) - u


class GroupNorm1(nn.Module):
    """GroupNorm with one group (PoolFormer's norm): per sample, mean and biased variance over all of
    (*S, C) jointly, eps 1e-5, then a per-channel affine (params `scale`, `bias`). This is not a
    per-token LayerNorm. `per_frame=True` on (B, T, H, W, C) uses one set of statistics per frame
    (the per-image statistics of PoolFormer with frames folded into the batch)."""

    per_frame: bool = False
    epsilon: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        if self.per_frame and x.ndim != 5:
            raise ValueError(f"GroupNorm1(per_frame=True) needs (B, T, H, W, C) maps; got shape {x.shape}")
        axes = tuple(range(2 if self.per_frame else 1, x.ndim))
        xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        mean = xf.mean(axes, keepdims=True)
        var = jnp.square(xf - mean).mean(axes, keepdims=True)
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        y = (xf - mean) * lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(self.dtype)


# --- window partition (any number of grid axes) ------------------------------------------------------
def window_partition_nd(x, window):
    """(B, *S, C) -> (B, nW, N, C): windows in row-major order over the window grid, tokens row-major."""
    b, *grid, c = x.shape
    nd = len(grid)
    window = tuple(window)
    if len(window) != nd or any(n % w for n, w in zip(grid, window)):
        raise ValueError(f"window partition: the {'x'.join(map(str, grid))} grid must be a whole number of "
                         f"{'x'.join(map(str, window))} windows")
    counts = [n // w for n, w in zip(grid, window)]
    split = [b] + [v for pair in zip(counts, window) for v in pair] + [c]
    perm = [0] + [1 + 2 * i for i in range(nd)] + [2 + 2 * i for i in range(nd)] + [1 + 2 * nd]
    return x.reshape(split).transpose(perm).reshape(b, math.prod(counts), math.prod(window), c)


def window_reverse_nd(windows, window, grid):
    """(B, nW, N, C) -> (B, *grid, C), the inverse of `window_partition_nd`."""
    b, _, _, c = windows.shape
    nd = len(grid)
    counts = [n // w for n, w in zip(grid, window)]
    x = windows.reshape(b, *counts, *window, c)
    perm = [0] + [v for i in range(nd) for v in (1 + i, 1 + nd + i)] + [1 + 2 * nd]
    return x.transpose(perm).reshape(b, *grid, c)


def relative_position_index(window, table_window=None) -> np.ndarray:
    """(N, N) indices into a Swin bias table of sum_a (2 W_a - 1) rows: idx(i, j) = sum over axes of
    (p_i - p_j + W_a - 1) * prod_{b > a} (2 W_b - 1) with p the in-window coordinates. `table_window`
    (default `window`) is the window the table was made for; a smaller `window` (clamped) indexes the
    same offsets of that table."""
    window = tuple(window)
    table_window = window if table_window is None else tuple(table_window)
    coords = np.stack(np.meshgrid(*[np.arange(w) for w in window], indexing="ij")).reshape(len(window), -1)
    rel = coords[:, :, None] - coords[:, None, :]
    idx = np.zeros(rel.shape[1:], np.int64)
    for a, tw in enumerate(table_window):
        stride = math.prod(2 * t - 1 for t in table_window[a + 1:])
        idx += (rel[a] + tw - 1) * stride
    return idx


def shift_mask(grid, window, shift) -> np.ndarray:
    """Swin's shifted-window mask (nW, N, N) in {0, -100} on the rolled grid: along an axis with shift
    s > 0 the bands [0, n - w), [n - w, n - s), [n - s, n) get labels 0, 1, 2; tokens of one window with
    different combined labels may not attend to each other."""
    labels = np.zeros(tuple(grid), np.int64)
    for a, (n, w, s) in enumerate(zip(grid, window, shift)):
        lab = np.zeros(n, np.int64)
        if s > 0:
            lab[n - w: n - s], lab[n - s:] = 1, 2
        shape = [1] * len(grid)
        shape[a] = n
        labels = labels * 3 + lab.reshape(shape)
    win = np.asarray(window_partition_nd(labels[None, ..., None], window))[0, :, :, 0]  # (nW, N)
    return np.where(win[:, :, None] != win[:, None, :], MASK_LOGIT, 0.0).astype(np.float32)


def effective_window(grid, window, shift, per_axis: bool = True):
    """Swin's clamp: an axis whose extent is <= its window uses window = extent and no shift.
    `per_axis=False` is the 2-D Swin rule: if min(grid) <= window, window = min(grid) on all axes."""
    grid, window, shift = tuple(grid), tuple(window), tuple(shift)
    if per_axis:
        eff_w = tuple(min(n, w) for n, w in zip(grid, window))
        eff_s = tuple(0 if n <= w else s for n, w, s in zip(grid, window, shift))
        return eff_w, eff_s
    m = min(grid)
    if m <= max(window):
        return (m,) * len(grid), (0,) * len(grid)
    return window, shift


class ShiftedWindowAttention(nn.Module):
    """Swin window attention on a normalised map (B, *S, C) -> (B, *S, C).

    Steps: optional zero padding at the end of each axis to whole windows (`pad=True`; padded tokens
    are ordinary keys), cyclic roll by -shift, partition, multi-head attention with qkv = Linear(C ->
    3C) ([q | k | v], heads contiguous), q scaled by head_dim^-0.5, + relative position bias, + the
    -100 band mask when shifted, softmax, proj = Linear(C -> C), reverse, roll back, crop.

    `window` is the window the bias table ((prod(2 W - 1), heads), Swin layout) is made for; a call may
    use a smaller (clamped) `eff_window`. Window outputs (B, nW, N, C) are sown as 'windows'.
    Parameter names follow the official module: qkv, proj, relative_position_bias_table.
    """

    dim: int
    heads: int
    window: tuple
    qkv_bias: bool = True
    pad: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, eff_window=None, shift=None):
        b, *grid, c = x.shape
        nd = len(grid)
        window = tuple(self.window if eff_window is None else eff_window)
        shift = (0,) * nd if shift is None else tuple(shift)
        if c != self.dim or self.dim % self.heads:
            raise ValueError(f"window attention: {c} input channels for dim={self.dim} / heads={self.heads}")
        if len(window) != nd or len(shift) != nd:
            raise ValueError(f"window attention: window {window} / shift {shift} do not fit a {nd}-D grid {grid}")
        if any(not 0 <= s < w for s, w in zip(shift, window)):
            raise ValueError(f"window attention: shifts {shift} must lie in [0, window) for window {window}")
        padded = tuple(-(-n // w) * w for n, w in zip(grid, window))
        if padded != tuple(grid):
            if not self.pad:
                raise ValueError(f"window attention: the {'x'.join(map(str, grid))} grid must be a whole number of "
                                 f"{'x'.join(map(str, window))} windows")
            x = jnp.pad(x, [(0, 0)] + [(0, p - n) for p, n in zip(padded, grid)] + [(0, 0)])
        axes = tuple(range(1, 1 + nd))
        shifted = any(shift)
        if shifted:
            x = jnp.roll(x, tuple(-s for s in shift), axis=axes)
        windows = window_partition_nd(x, window)  # (B, nW, N, C)
        n = windows.shape[2]

        dense = lambda f, name, bias=True: nn.Dense(f, use_bias=bias, dtype=self.dtype, kernel_init=trunc_normal,
                                                   name=name)
        q, k, v = jnp.split(dense(3 * c, "qkv", self.qkv_bias)(windows), 3, axis=-1)
        hd = c // self.heads
        q = split_heads(q * jnp.asarray(hd ** -0.5, q.dtype), self.heads)  # (B, nW, heads, N, hd)
        k, v = split_heads(k, self.heads), split_heads(v, self.heads)

        table = self.param("relative_position_bias_table", trunc_normal,
                           (math.prod(2 * w - 1 for w in self.window), self.heads), jnp.float32)
        idx = relative_position_index(window, self.window)
        bias = jnp.take(table, jnp.asarray(idx.reshape(-1)), axis=0).reshape(n, n, self.heads)
        bias = jnp.transpose(bias, (2, 0, 1))  # (heads, N, N)
        if shifted:
            bias = bias + jnp.asarray(shift_mask(padded, window, shift))[:, None]  # (nW, heads, N, N)
        out = dense(c, "proj")(merge_heads(attend(q, k, v, bias=bias)))
        self.sow("intermediates", "windows", out)
        y = window_reverse_nd(out, window, padded)
        if shifted:
            y = jnp.roll(y, shift, axis=axes)
        return y[(slice(None),) + tuple(slice(0, n_) for n_ in grid)]


# --- focal attention (2-D) ---------------------------------------------------------------------------
def focal_kernel(focal_window: int) -> int:
    """Kernel of the level-0 pooled neighbourhood: 2 * (fw // 2) + 1."""
    return 2 * (focal_window // 2) + 1


def focal_window_index(window: int, kernel: int) -> np.ndarray:
    """(ws^2, K^2) lookup of `relative_position_bias_table_to_windows.0` (table side ws + K - 1):
    (q_y - k_y + K - 1) * (ws + K - 1) + (q_x - k_x + K - 1), q in the window, k in the K x K cells."""
    q = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    k = np.stack(np.meshgrid(np.arange(kernel), np.arange(kernel), indexing="ij")).reshape(2, -1)
    rel = q[:, :, None] - k[:, None, :] + kernel - 1
    return (rel[0] * (window + kernel - 1) + rel[1]).astype(np.int64)


class FocalAttention(nn.Module):
    """Focal Transformer window attention (focal level 2, one pooled level) on a zero-padded
    normalised map x (B, Hp, Wp, C) and its pooled map (B, nh, nw, C) (one token per ws x ws window).

    Keys of a window, in order: its ws^2 tokens; the rolled neighbour ring (expand e > 0: 4 ws^2 -
    4 (ws - e)^2 slots, wrapping cyclically, unmasked); the K x K neighbourhood of pooled windows
    (zero padded after the projection, -100 on padded cells). Biases: Swin table on the window part,
    a full (1, heads, ws^2, ring) table on the ring, a (heads, (ws + K - 1)^2) table on the pooled part.
    Returns the window outputs (B, nh, nw, ws^2, C) after proj.
    """

    dim: int
    heads: int
    window: int
    expand: int
    focal_window: int
    focal_level: int = 2
    qkv_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, pooled=None):
        b, hp, wp, c = x.shape
        ws, e = self.window, self.expand
        win = (ws, ws)
        nh, nw = hp // ws, wp // ws
        n = ws * ws
        qkv_layer = nn.Dense(3 * c, use_bias=self.qkv_bias, dtype=self.dtype, kernel_init=trunc_normal, name="qkv")
        q, k, v = jnp.split(qkv_layer(x[:, None]), 3, axis=-1)  # (B, 1, Hp, Wp, C): a time axis of one frame
        flat = lambda a: a.reshape(b, nh, nw, -1, c)  # (B, nh, nw, 1, m, C) -> (B, nh, nw, m, C)
        keys, values = [flat(window_partition(k, win))], [flat(window_partition(v, win))]
        biases = []
        table = self.param("relative_position_bias_table", trunc_normal, ((2 * ws - 1) ** 2, self.heads), jnp.float32)
        idx = relative_position_index(win)
        biases.append(jnp.transpose(jnp.take(table, jnp.asarray(idx.reshape(-1)), axis=0).reshape(n, n, -1), (2, 0, 1)))
        masks = [np.zeros((nh, nw, n), np.float32)]
        if e > 0:
            n_ring = len(rolled_ring_indices(win, (e, e)))
            keys.append(flat(rolled_tokens(k, win, (e, e))))
            values.append(flat(rolled_tokens(v, win, (e, e))))
            ring = self.param("relative_position_bias_table_to_neighbors", trunc_normal, (1, self.heads, n, n_ring),
                              jnp.float32)
            biases.append(ring[0])
            masks.append(np.zeros((nh, nw, n_ring), np.float32))
        if self.focal_level > 1:
            if pooled is None:
                raise ValueError("FocalAttention with focal_level > 1 needs the pooled map")
            kern = focal_kernel(self.focal_window)
            _, pk, pv = jnp.split(qkv_layer(pooled[:, None]), 3, axis=-1)  # (B, 1, nh, nw, C)
            keys.append(flat(neighbourhood(pk, (kern, kern))))
            values.append(flat(neighbourhood(pv, (kern, kern))))
            side = ws + kern - 1
            tw = self.param("relative_position_bias_table_to_windows_0", trunc_normal, (self.heads, side * side),
                            jnp.float32)
            biases.append(jnp.take(tw, jnp.asarray(focal_window_index(ws, kern).reshape(-1)), axis=1).reshape(
                self.heads, n, kern * kern))
            masks.append(np.where(neighbourhood_valid((nh, nw), (kern, kern)), 0.0, MASK_LOGIT).astype(np.float32))

        hd = c // self.heads
        qh = split_heads(flat(window_partition(q, win)) * jnp.asarray(hd ** -0.5, q.dtype), self.heads)
        kh = split_heads(jnp.concatenate(keys, axis=-2), self.heads)  # (B, nh, nw, heads, L, hd)
        vh = split_heads(jnp.concatenate(values, axis=-2), self.heads)
        bias = jnp.concatenate(biases, axis=-1) + jnp.asarray(np.concatenate(masks, axis=-1))[:, :, None, None, :]
        out = merge_heads(attend(qh, kh, vh, bias=bias))  # (B, nh, nw, N, C)
        return nn.Dense(c, dtype=self.dtype, kernel_init=trunc_normal, name="proj")(out)


def end_pad_to_windows(x, window, axes):
    """Zero-pad `x` at the end of `axes` to multiples of `window`; returns (padded, original sizes)."""
    pads = [(0, 0)] * x.ndim
    sizes = tuple(x.shape[a] for a in axes)
    for a, w in zip(axes, window):
        pads[a] = (0, (-x.shape[a]) % w)
    return (jnp.pad(x, pads) if any(p[1] for p in pads) else x), sizes


# --- video mixers ----------------------------------------------------------------------------------
class VideoSwinMixer(nn.Module):
    """3-D (Video-Swin) shifted-window attention on (B, T, H, W, C): windows (Wt, Wh, Ww) with the per-axis
    clamp (an axis no longer than its window uses window = extent, no shift), shift window // 2 per axis
    when `shifted`, zero padding at the end of each axis. One bias table for the configured window."""

    dim: int
    heads: int
    window: tuple = (5, 5, 9)
    shifted: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        grid = x.shape[1:-1]
        if len(self.window) != 3 or len(grid) != 3:
            raise ValueError(f"VideoSwinMixer needs a (Wt, Wh, Ww) window and (B, T, H, W, C) tokens; got window "
                             f"{tuple(self.window)} and shape {x.shape}")
        shift = tuple(w // 2 for w in self.window) if self.shifted else (0, 0, 0)
        eff_w, eff_s = effective_window(grid, self.window, shift, per_axis=True)
        return ShiftedWindowAttention(self.dim, self.heads, tuple(self.window), pad=True, dtype=self.dtype,
                                      name="attn")(x, eff_w, eff_s)


class TemporalFocalMixer(nn.Module):
    """E2FGVI's temporal focal attention ("fc" focal pooling + `TemporalFocalAttention` of layers/windows.py)
    on (B, T, H, W, C), zero-padded at the bottom / right to whole (wh, ww) windows and cropped back
    (a no-op on grids that are multiples of the window, e.g. 20x36 with (5, 9))."""

    dim: int
    heads: int
    window: tuple = (5, 9)
    focal_window: tuple = (5, 9)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        window = tuple(self.window)
        xp, (h, w) = end_pad_to_windows(x, window, (2, 3))
        pooled = FocalPool(window, self.dtype, name="pool")(xp)
        y = TemporalFocalAttention(self.dim, self.heads, window, tuple(self.focal_window), self.dtype,
                                   name="attn")(xp, pooled)
        return y[:, :, :h, :w]
