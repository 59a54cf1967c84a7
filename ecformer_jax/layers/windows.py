"""Window partition / reverse and temporal focal window attention, channels-last.

Token maps are (B, T, H, W, C). A window grid of (wh, ww) windows splits H x W into nh x nw windows;
`window_partition` returns (B, nh, nw, T, wh * ww, C) with the tokens of one window ordered (t, r, c),
the order of Focal Transformer / E2FGVI's `window_partition` (windows b-major, then window row, window
column). `window_reverse` is its inverse.

Temporal focal attention (E2FGVI's `WindowAttention` with focal level 2, no shift) lets the T*wh*ww
queries of a window attend to, for every frame t:
  1. the window's own wh*ww tokens;
  2. "rolled" tokens: four cyclically rolled copies of the key map (torch.roll semantics, wrapping
     around the whole token grid, no masking of wrapped tokens) by (-eh, -ew), (-eh, +ew), (+eh, -ew),
     (+eh, +ew), each window-partitioned and restricted to the positions of `rolled_ring_indices`:
     geometrically the ring of width (eh, ew) around the window, with the ring's middle-row / middle-
     column extensions present twice;
  3. pooled tokens: the focal-pooled map (one token per window and frame), projected by the same qkv,
     gathered over the kh x kw neighbourhood of windows (nn.Unfold with zero padding: padded keys are 0
     and get `PAD_LOGIT` added to their logits, not -inf).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ecformer_jax.layers.attention import merge_heads, split_heads
from ecformer_jax.layers.conv import normal_init

PAD_LOGIT = -100.0  # what the official code adds to the logits of zero-padded pooled keys


def _check_grid(h: int, w: int, window, what: str = "token grid"):
    wh, ww = window
    if h % wh or w % ww:
        raise ValueError(
            f"window attention: the {h}x{w} {what} must be a whole number of {wh}x{ww} windows "
            f"(multiples of {wh} rows and {ww} columns)"
        )


def window_partition(x, window):
    """(B, T, H, W, C) -> (B, nh, nw, T, wh * ww, C); tokens of a window ordered (t, r, c)."""
    b, t, h, w, c = x.shape
    wh, ww = window
    _check_grid(h, w, window)
    x = x.reshape(b, t, h // wh, wh, w // ww, ww, c)
    return x.transpose(0, 2, 4, 1, 3, 5, 6).reshape(b, h // wh, w // ww, t, wh * ww, c)


def window_reverse(windows, window):
    """(B, nh, nw, T, wh * ww, C) -> (B, T, nh * wh, nw * ww, C), the inverse of `window_partition`."""
    b, nh, nw, t, n, c = windows.shape
    wh, ww = window
    if n != wh * ww:
        raise ValueError(f"window_reverse: {n} tokens per window and frame do not form a {wh}x{ww} window")
    x = windows.reshape(b, nh, nw, t, wh, ww, c).transpose(0, 3, 1, 4, 2, 5, 6)
    return x.reshape(b, t, nh * wh, nw * ww, c)


# --- rolled (ring) keys ---------------------------------------------------------------------------
ROLL_SIGNS = ((-1, -1), (-1, 1), (1, -1), (1, 1))  # (rows, cols) shift directions of the four copies


def rolled_ring_indices(window, expand) -> np.ndarray:
    """Positions kept from the four rolled, window-partitioned copies stacked as 4 x (wh * ww).

    Copy 1 (shift (-eh, -ew)) drops rows [0, wh-eh) x cols [0, ww-ew), copy 2 (shift (-eh, +ew)) rows
    [0, wh-eh) x cols [ew, ww), copy 3 (+eh, -ew) rows [eh, wh) x cols [0, ww-ew), copy 4 (+eh, +ew)
    rows [eh, wh) x cols [ew, ww): what is left lies outside the window (the official
    `valid_ind_rolled` buffer, 120 entries for window (5, 9), expand (2, 4)).
    """
    wh, ww = window
    eh, ew = expand
    keep = np.ones((4, wh, ww), bool)
    keep[0, : wh - eh, : ww - ew] = False
    keep[1, : wh - eh, ew:] = False
    keep[2, eh:, : ww - ew] = False
    keep[3, eh:, ew:] = False
    return np.flatnonzero(keep.reshape(-1))


def rolled_tokens(x, window, expand):
    """(B, T, H, W, C) -> (B, nh, nw, T, n_ring, C): the rolled copies' kept tokens per window, frame."""
    eh, ew = expand
    copies = [window_partition(jnp.roll(x, (sy * eh, sx * ew), axis=(2, 3)), window) for sy, sx in ROLL_SIGNS]
    stacked = jnp.concatenate(copies, axis=-2)  # (B, nh, nw, T, 4 * wh * ww, C)
    return jnp.take(stacked, jnp.asarray(rolled_ring_indices(window, expand)), axis=-2)


# --- pooled keys ----------------------------------------------------------------------------------
def pad_to_windows(x, window):
    """Centre-pad (zeros) the token map (B, T, H, W, C) to whole windows, as the official pooled level
    does before pooling (a no-op when H, W are multiples of the window; the official trim branch can
    not trigger at this level, its target size ceil(H / wh) * wh is never smaller than H)."""
    _, _, h, w, _ = x.shape
    for axis, n, k in ((2, h, window[0]), (3, w, window[1])):
        target = -(-n // k) * k
        if target > n:
            pad = [(0, 0)] * x.ndim
            pad[axis] = ((target - n) // 2, target - n - (target - n) // 2)
            x = jnp.pad(x, pad)
    return x


def neighbourhood(pooled, kernel):
    """Gather the kh x kw neighbourhood (zero padded, stride 1, centred) of every window.

    pooled (B, T, nh, nw, C) -> (B, nh, nw, T, kh * kw, C) ordered (t, kr, kc): nn.Unfold semantics with
    kernel (kh, kw) and padding (kh // 2, kw // 2); the kernel must be odd. `neighbourhood_valid` tells
    which entries are real.
    """
    b, t, nh, nw, c = pooled.shape
    kh, kw = _odd(kernel)
    ph, pw = kh // 2, kw // 2
    padded = jnp.pad(pooled, ((0, 0), (0, 0), (ph, ph), (pw, pw), (0, 0)))
    taps = [padded[:, :, i : i + nh, j : j + nw] for i in range(kh) for j in range(kw)]
    return jnp.stack(taps, axis=-2).transpose(0, 2, 3, 1, 4, 5)


def neighbourhood_valid(grid, kernel) -> np.ndarray:
    """(nh, nw, kh * kw) booleans: False where `neighbourhood` read zero padding."""
    nh, nw = grid
    kh, kw = _odd(kernel)
    valid = np.pad(np.ones((nh, nw), bool), ((kh // 2, kh // 2), (kw // 2, kw // 2)))
    return np.stack([valid[i : i + nh, j : j + nw] for i in range(kh) for j in range(kw)], axis=-1)


def _odd(kernel):
    kh, kw = kernel
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"neighbourhood: the kernel {tuple(kernel)} must be odd in both directions")
    return kh, kw


class FocalPool(nn.Module):
    """The "fc" focal pooling: every (window, frame, channel) is reduced by a learned Linear(wh*ww -> 1)
    over its window positions (row-major). (B, T, H, W, C) -> (B, T, nh, nw, C)."""

    window: tuple
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        wh, ww = self.window
        xw = window_partition(pad_to_windows(x, self.window), self.window)  # (B, nh, nw, T, n, C)
        init = nn.initializers.constant(1.0 / (wh * ww))  # the constructor's mean pooling
        pooled = nn.Dense(1, dtype=self.dtype, kernel_init=init, name="fc")(jnp.swapaxes(xw, -1, -2))
        return pooled[..., 0].transpose(0, 3, 1, 2, 4)  # (B, T, nh, nw, C)


class TemporalFocalAttention(nn.Module):
    """E2FGVI's WindowAttention (focal level 2, "fc" pooling, expand = window // 2, no shift).

    __call__(x, pooled): x (B, T, H, W, C) normalised tokens, pooled (B, T, nh, nw, C) the focal-pooled
    map of the same tokens. Returns (B, T, H, W, C) after the output projection.
    """

    dim: int
    heads: int
    window: tuple = (5, 9)
    focal_window: tuple = (5, 9)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, pooled):
        b, t, h, w, c = x.shape
        _check_grid(h, w, self.window)
        window = tuple(self.window)
        expand = (window[0] // 2, window[1] // 2)
        kernel = (2 * (self.focal_window[0] // 2) + 1, 2 * (self.focal_window[1] // 2) + 1)
        qkv_layer = nn.Dense(3 * self.dim, dtype=self.dtype, kernel_init=normal_init, name="qkv")
        q, k, v = jnp.split(qkv_layer(x), 3, axis=-1)
        _, pk, pv = jnp.split(qkv_layer(pooled), 3, axis=-1)

        nh, nw = h // window[0], w // window[1]
        n_win = window[0] * window[1]
        flat = lambda a: a.reshape(b, nh, nw, -1, c)  # (B, nh, nw, T, n, C) -> (B, nh, nw, T * n, C)
        qw = flat(window_partition(q, window))

        def key_set(full, pool):
            # official order: own window (T * n_win), rolled ring (T * n_ring), pooled (T * kh * kw)
            return jnp.concatenate([flat(window_partition(full, window)), flat(rolled_tokens(full, window, expand)),
                                    flat(neighbourhood(pool, kernel))], axis=-2)

        keys, values = key_set(k, pk), key_set(v, pv)
        valid = neighbourhood_valid((nh, nw), kernel)
        n_ring = len(rolled_ring_indices(window, expand))
        pooled_bias = np.where(valid, 0.0, PAD_LOGIT).astype(np.float32)  # (nh, nw, kh * kw)
        logit_bias = np.concatenate(
            [np.zeros((nh, nw, t * (n_win + n_ring)), np.float32), np.tile(pooled_bias, (1, 1, t))], axis=-1)

        scale = (c // self.heads) ** -0.5
        qh = split_heads(qw * jnp.asarray(scale, qw.dtype), self.heads)  # (B, nh, nw, heads, Lq, d)
        kh_, vh = split_heads(keys, self.heads), split_heads(values, self.heads)
        scores = jnp.einsum("...qd,...kd->...qk", qh, kh_, preferred_element_type=jnp.float32)
        scores = scores + jnp.asarray(logit_bias)[None, :, :, None, None, :]
        probs = jax.nn.softmax(scores, axis=-1).astype(vh.dtype)
        out = merge_heads(jnp.einsum("...qk,...kd->...qd", probs, vh))  # (B, nh, nw, T * n_win, C)
        out = nn.Dense(self.dim, dtype=self.dtype, kernel_init=normal_init, name="proj")(out)
        return window_reverse(out.reshape(b, nh, nw, t, n_win, c), window)
