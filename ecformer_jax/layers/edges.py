"""Canny edge detection (the kornia-style detector ProPainter's flow-completion trainer runs on the magnitude
of ground-truth flows to get its edge targets).

    magnitude, edges = canny(gray, low_threshold=0.1, high_threshold=0.2, sigma=2.0)

gray (N, H, W, 1) float; returns the non-maximum-suppressed gradient magnitude and the edges in {0, 1}
(N, H, W, 1). Steps: 5x5 Gaussian blur (normalised, reflect padding), Sobel gradients (replicate padding,
unnormalised), magnitude sqrt(gx^2 + gy^2 + eps), direction rounded to 45 degrees, non-maximum suppression
against both neighbours along it, double threshold (weak > low, strong > high), then hysteresis: weak pixels
8-connected to strong ones become strong, repeated until nothing changes; the weak ones left are dropped.
Not differentiable where it matters (thresholds): use it on targets.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# neighbour offsets (dy, dx) of the 8 directions k * 45 degrees (x right, y down)
_DIRECTIONS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))


def gaussian_kernel1d(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - size // 2
    k = np.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return (k / k.sum()).astype(np.float32)


def _shift(x, dy: int, dx: int, mode: str):
    """out[y, x] = x[y + dy, x + dx] on (N, H, W, C); outside: 'zeros' or 'edge' (replicate)."""
    h, w = x.shape[1:3]
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    xp = jnp.pad(x, pad, mode="constant" if mode == "zeros" else "edge")
    return xp[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def gaussian_blur(x, size: int = 5, sigma: float = 2.0):
    """Separable normalised Gaussian on (N, H, W, C) with reflect padding."""
    k = gaussian_kernel1d(size, sigma)
    r = size // 2
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (0, 0), (r, r), (0, 0)), mode="reflect")
    x = sum(float(k[i]) * xp[:, :, i:i + w] for i in range(size))
    xp = jnp.pad(x, ((0, 0), (r, r), (0, 0), (0, 0)), mode="reflect")
    return sum(float(k[i]) * xp[:, i:i + h] for i in range(size))


def sobel(x):
    """Unnormalised Sobel (gx: right minus left, gy: down minus up) with replicate padding."""
    s = {(dy, dx): _shift(x, dy, dx, "edge") for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    gx = (s[(-1, 1)] + 2 * s[(0, 1)] + s[(1, 1)]) - (s[(-1, -1)] + 2 * s[(0, -1)] + s[(1, -1)])
    gy = (s[(1, -1)] + 2 * s[(1, 0)] + s[(1, 1)]) - (s[(-1, -1)] + 2 * s[(-1, 0)] + s[(-1, 1)])
    return gx, gy


def canny(gray, low_threshold: float = 0.1, high_threshold: float = 0.2, kernel_size: int = 5,
          sigma: float = 1.0, hysteresis: bool = True, eps: float = 1e-6):
    """(magnitude, edges) of gray (N, H, W, 1); see the module docstring."""
    if gray.ndim != 4 or gray.shape[-1] != 1:
        raise ValueError(f"canny: expected gray images (N, H, W, 1); got {gray.shape}")
    if not 0 <= low_threshold <= high_threshold <= 1:
        raise ValueError(f"canny: need 0 <= low_threshold <= high_threshold <= 1; got {low_threshold}, "
                         f"{high_threshold}")
    x = gaussian_blur(gray.astype(jnp.float32), kernel_size, sigma)
    gx, gy = sobel(x)
    magnitude = jnp.sqrt(gx * gx + gy * gy + eps)
    angle = jnp.round(jnp.arctan2(gy, gx) * (180.0 / math.pi) / 45.0)  # -4..4 (half to even)
    pos = (angle % 8).astype(jnp.int32)
    neg = ((angle + 4) % 8).astype(jnp.int32)
    # magnitude minus each neighbour's (zero outside), per direction
    diffs = jnp.stack([magnitude - _shift(magnitude, dy, dx, "zeros") for dy, dx in _DIRECTIONS], axis=-1)
    d_pos = jnp.take_along_axis(diffs, pos[..., None], axis=-1)[..., 0]
    d_neg = jnp.take_along_axis(diffs, neg[..., None], axis=-1)[..., 0]
    magnitude = magnitude * (jnp.minimum(d_pos, d_neg) > 0)
    weak = magnitude > low_threshold
    strong = magnitude > high_threshold
    if not hysteresis:
        return magnitude, 0.5 * weak.astype(jnp.float32) + 0.5 * strong.astype(jnp.float32)

    def grow(state):
        s, _ = state
        near = jnp.zeros_like(s)
        for dy, dx in _DIRECTIONS:
            near = near | _shift(s, dy, dx, "zeros")
        new = s | (weak & near)
        return new, jnp.any(new != s)

    strong, _ = jax.lax.while_loop(lambda st: st[1], grow, (strong, jnp.array(True)))
    return magnitude, strong.astype(jnp.float32)
