"""Fixed sinusoidal spatio-temporal positional encoding (no parameters: any clip length and resolution).

The C channels are split into a time part, a row part and a column part (rows and columns get
2 * (C // 6) channels each, time the rest). Each part encodes its integer coordinate p (frame index,
token row, token column) as [sin(p w_0), ..., sin(p w_{m-1}), cos(p w_0), ...] with w_i =
10000^(-i / m) (the Transformer's frequencies), truncated to the part's width.
Coordinates are absolute token indices, so the code of token (t, y, x) is the same for every clip
length and grid size: a larger grid only adds positions.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def sinusoid_1d(positions, dim: int, base: float = 10000.0) -> np.ndarray:
    """(n,) positions -> (n, dim) [sin(p w_i) for i < ceil(dim/2)] + [cos(p w_i) ...] cut to dim."""
    m = (dim + 1) // 2
    if m == 0:
        return np.zeros((len(positions), 0), np.float32)
    freq = base ** (-np.arange(m, dtype=np.float64) / m)
    ang = np.asarray(positions, np.float64)[:, None] * freq[None]
    return np.concatenate([np.sin(ang), np.cos(ang)], axis=-1)[:, :dim].astype(np.float32)


def split_channels(dim: int) -> tuple[int, int, int]:
    """(time, row, column) channel counts for a dim-channel encoding."""
    if dim < 3:
        raise ValueError(f"a spatio-temporal positional encoding needs at least 3 channels; got {dim}")
    spatial = 2 * (dim // 6) if dim >= 6 else 1
    return dim - 2 * spatial, spatial, spatial


def sinusoidal_encoding(frames: int, height: int, width: int, dim: int) -> np.ndarray:
    """(frames, height, width, dim) float32 numpy array: channels [time | row | column]."""
    if min(frames, height, width) < 1:
        raise ValueError(f"positional encoding: frames, height, width must be >= 1; got {(frames, height, width)}")
    dt, dy, dx = split_channels(dim)
    t = np.broadcast_to(sinusoid_1d(np.arange(frames), dt)[:, None, None], (frames, height, width, dt))
    y = np.broadcast_to(sinusoid_1d(np.arange(height), dy)[None, :, None], (frames, height, width, dy))
    x = np.broadcast_to(sinusoid_1d(np.arange(width), dx)[None, None, :], (frames, height, width, dx))
    return np.concatenate([t, y, x], axis=-1)


class PositionalEncoding(nn.Module):
    """Adds the fixed encoding to tokens (B, T, H, W, C); no parameters."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        if x.ndim != 5:
            raise ValueError(f"PositionalEncoding needs tokens (B, T, H, W, C); got shape {x.shape}")
        _, t, h, w, c = x.shape
        return x + jnp.asarray(sinusoidal_encoding(t, h, w, c), self.dtype)
