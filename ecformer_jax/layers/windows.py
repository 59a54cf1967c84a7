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

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ecformer_jax.layers.attention import attend
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
    """(B, T, H, W, C) -> (B, nh, nw, T, n_ring, C): the rolled copies' kept tokens per window, frame.
    numpy in: numpy out (index building)."""
    xp = np if isinstance(x, np.ndarray) else jnp
    eh, ew = expand
    copies = [window_partition(xp.roll(x, (sy * eh, sx * ew), axis=(2, 3)), window) for sy, sx in ROLL_SIGNS]
    stacked = xp.concatenate(copies, axis=-2)  # (B, nh, nw, T, 4 * wh * ww, C)
    return xp.take(stacked, rolled_ring_indices(window, expand), axis=-2)


# --- pooled keys ----------------------------------------------------------------------------------
def center_pad_to_windows(x, window):
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
    xp = np if isinstance(pooled, np.ndarray) else jnp  # numpy in: numpy out (index building, no tracing)
    padded = xp.pad(pooled, ((0, 0), (0, 0), (ph, ph), (pw, pw), (0, 0)))
    taps = [padded[:, :, i : i + nh, j : j + nw] for i in range(kh) for j in range(kw)]
    return xp.stack(taps, axis=-2).transpose(0, 2, 3, 1, 4, 5)


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
        xw = window_partition(center_pad_to_windows(x, self.window), self.window)  # (B, nh, nw, T, n, C)
        init = nn.initializers.constant(1.0 / (wh * ww))  # the constructor's mean pooling
        pooled = nn.Dense(1, dtype=self.dtype, kernel_init=init, name="fc")(jnp.swapaxes(xw, -1, -2))
        return pooled[..., 0].transpose(0, 3, 1, 2, 4)  # (B, T, nh, nw, C)


@functools.lru_cache(maxsize=16)
def focal_key_index(t: int, h: int, w: int, window, expand, kernel) -> np.ndarray:
    """(nh, nw, L) row indices giving every window's key set in the official order (own window T * n_win,
    rolled ring T * n_ring, pooled neighbourhood T * kh * kw, each t-major) as one gather.

    The rows index [the T*H*W tokens ; the T*nh*nw pooled tokens ; one zero row], all (t, row, col) row-major;
    padded neighbourhood entries point at the zero row (the last). Built by running `window_partition`,
    `rolled_tokens` and `neighbourhood` on maps of positions, so the order is theirs by construction.
    """
    wh, ww = window
    nh, nw = h // wh, w // ww
    n_tokens, n_pooled = t * h * w, t * nh * nw
    flat = lambda a: a.reshape(nh, nw, -1)
    pos = np.arange(n_tokens).reshape(1, t, h, w, 1)
    own, ring = window_partition(pos, window), rolled_tokens(pos, window, expand)
    pooled = 1 + n_tokens + np.arange(n_pooled).reshape(1, t, nh, nw, 1)  # +1: zero padding reads 0
    nbr = neighbourhood(pooled, kernel) - 1
    nbr = np.where(nbr < 0, n_tokens + n_pooled, nbr)
    return np.concatenate([flat(own), flat(ring), flat(nbr)], axis=-1).astype(np.int32)


class TemporalFocalAttention(nn.Module):
    """E2FGVI's WindowAttention (focal level 2, "fc" pooling, expand = window // 2, no shift).

    __call__(x, pooled): x (B, T, H, W, C) normalised tokens, pooled (B, T, nh, nw, C) the focal-pooled
    map of the same tokens. Returns (B, T, H, W, C) after the output projection. Queries and key sets are
    gathered in one `jnp.take` each (`focal_key_index`), head-major, and attended to in tiles (`attend`).
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
        nh, nw = h // window[0], w // window[1]
        if pooled.shape != (b, t, nh, nw, c):
            raise ValueError(f"TemporalFocalAttention: pooled map {pooled.shape} is not the {(b, t, nh, nw, c)} "
                             f"window grid of the {x.shape} tokens")
        qkv_layer = nn.Dense(3 * self.dim, dtype=self.dtype, kernel_init=normal_init, name="qkv")
        q, k, v = jnp.split(qkv_layer(x), 3, axis=-1)
        _, pk, pv = jnp.split(qkv_layer(pooled), 3, axis=-1)

        index = focal_key_index(t, h, w, window, expand, kernel)  # (nh, nw, L)
        n_q = t * window[0] * window[1]  # each window's own tokens come first: they are its queries
        scale = (c // self.heads) ** -0.5

        def gather(rows, idx):  # (B, N, C) -> (B, heads, nh, nw, len, d), head-major
            rows = jnp.moveaxis(rows.reshape(b, rows.shape[1], self.heads, -1), 2, 1)
            picked = jnp.take(rows, jnp.asarray(idx.reshape(-1)), axis=2)
            return picked.reshape(b, self.heads, nh, nw, -1, rows.shape[-1])

        def key_rows(full, pool):
            zero = jnp.zeros((b, 1, c), full.dtype)
            return jnp.concatenate([full.reshape(b, -1, c), pool.reshape(b, -1, c), zero], axis=1)

        qh = gather((q * jnp.asarray(scale, q.dtype)).reshape(b, -1, c), index[..., :n_q])
        kh_, vh = gather(key_rows(k, pk), index), gather(key_rows(v, pv), index)
        zero_row = t * h * w + t * nh * nw  # where padded pooled keys read (focal_key_index)
        logit_bias = np.where(index == zero_row, PAD_LOGIT, 0.0).astype(np.float32)
        # a NumPy key mask: the TPU flash kernel takes it as segment ids (layers/attention.py `attend`)
        out = attend(qh, kh_, vh, bias=logit_bias[None, None, :, :, None, :])  # (B, heads, nh, nw, Lq, d)
        out = out.transpose(0, 2, 3, 4, 1, 5).reshape(b, nh, nw, n_q, c)
        out = nn.Dense(self.dim, dtype=self.dtype, kernel_init=normal_init, name="proj")(out)
        return window_reverse(out.reshape(b, nh, nw, t, -1, c), window)
