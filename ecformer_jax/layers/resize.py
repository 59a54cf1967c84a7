"""PyTorch-compatible resizing on NHWC tensors (F.interpolate semantics, no antialiasing)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ecformer_jax.layers.tiling import target_platform


def _linear_taps(n_in: int, n_out: int, align_corners: bool, scale: float | None = None):
    """Source indices (i0, i1) and weights of the second tap for 1-D linear interpolation.

    Coordinates are formed in float32 as PyTorch's CPU kernels do. `scale` is the user-given
    scale_factor (PyTorch uses 1/scale_factor for the source step when it is given and
    align_corners=False).
    """
    i = np.arange(n_out, dtype=np.float32)
    if align_corners:
        step = np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0)
        src = step * i
    else:
        step = np.float32(1.0 / scale) if scale else np.float32(n_in / n_out)
        src = np.maximum((i + np.float32(0.5)) * step - np.float32(0.5), np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int32), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = (src - i0).astype(np.float32)
    return i0, i1, frac


def _lerp_axis(x, axis: int, n_out: int, align_corners: bool, scale: float | None):
    n_in = x.shape[axis]
    if n_in == n_out and (align_corners or not scale or scale == 1):
        return x
    if target_platform() == "cpu":
        return _lerp_gather_vjp(x, axis, n_out, align_corners, scale)
    return _lerp(x, axis, n_out, align_corners, scale)


def _lerp(x, axis, n_out, align_corners, scale):
    i0, i1, f = _linear_taps(x.shape[axis], n_out, align_corners, scale)
    shape = [1] * x.ndim
    shape[axis] = n_out
    f = jnp.asarray(f, dtype=x.dtype).reshape(shape)
    a = jnp.take(x, jnp.asarray(i0), axis=axis)
    b = jnp.take(x, jnp.asarray(i1), axis=axis)
    return a + (b - a) * f


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _lerp_gather_vjp(x, axis, n_out, align_corners, scale):
    return _lerp(x, axis, n_out, align_corners, scale)


def _lerp_fwd(x, axis, n_out, align_corners, scale):
    return _lerp(x, axis, n_out, align_corners, scale), x.shape[axis]


def _lerp_bwd(axis, n_out, align_corners, scale, n_in, dy):
    """The transpose of the interpolation as a gather: each input row sums its (at most a few) weighted output
    rows, listed in a fixed number of slots (weight 0 where a row has fewer). Autodiff's transpose is a
    scatter-add, which XLA's CPU backend runs 5-6x slower than the forward."""
    i0, i1, f = _linear_taps(n_in, n_out, align_corners, scale)
    sources = [[] for _ in range(n_in)]
    for i in range(n_out):
        sources[i0[i]].append((i, np.float32(1) - f[i]))
        sources[i1[i]].append((i, f[i]))
    slots = max(len(s) for s in sources)
    idx = np.zeros((slots, n_in), np.int32)
    wt = np.zeros((slots, n_in), np.float32)
    for j, s in enumerate(sources):
        for k, (i, w) in enumerate(s):
            idx[k, j], wt[k, j] = i, w
    shape = [1] * dy.ndim
    shape[axis] = n_in
    dx = sum(jnp.take(dy, jnp.asarray(idx[k]), axis=axis) * jnp.asarray(wt[k], dy.dtype).reshape(shape)
             for k in range(slots))
    return (dx,)


_lerp_gather_vjp.defvjp(_lerp_fwd, _lerp_bwd)


def upsample_bilinear(x, size: tuple[int, int], align_corners: bool, scale_factor: float | None = None):
    """F.interpolate(mode='bilinear') for x (..., H, W, C); `size` = (out_h, out_w)."""
    x = _lerp_axis(x, x.ndim - 3, size[0], align_corners, scale_factor)
    return _lerp_axis(x, x.ndim - 2, size[1], align_corners, scale_factor)


def resize_nearest(x, size: tuple[int, int], scale_factor: float | None = None):
    """F.interpolate(mode='nearest') for x (..., H, W, C): source index floor(i * in / out)."""
    h, w = x.shape[-3], x.shape[-2]
    out = []
    for n_in, n_out in ((h, size[0]), (w, size[1])):
        step = np.float32(1.0 / scale_factor) if scale_factor else np.float32(n_in / n_out)
        out.append(np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * step).astype(np.int32), n_in - 1))
    x = jnp.take(x, jnp.asarray(out[0]), axis=x.ndim - 3)
    return jnp.take(x, jnp.asarray(out[1]), axis=x.ndim - 2)


def avg_pool2d(x, kernel_size: int = 2, stride: int | None = None):
    """F.avg_pool2d(kernel_size, stride, padding=0) for x (..., H, W, C) (count_include_pad is moot
    without padding). Output size floor((in - k) / s) + 1, trailing rows/columns dropped as in PyTorch."""
    k = int(kernel_size)
    s = k if stride is None else int(stride)
    h, w = x.shape[-3], x.shape[-2]
    if h < k or w < k:
        raise ValueError(f"avg_pool2d: input {h}x{w} is smaller than the {k}x{k} kernel")
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    if k == s:
        lead = x.shape[:-3]
        x = x[..., : ho * k, : wo * k, :].reshape(*lead, ho, k, wo, k, x.shape[-1])
        return x.sum(axis=(-4, -2)) / (k * k)
    window = (1,) * (x.ndim - 3) + (k, k, 1)
    strides = (1,) * (x.ndim - 3) + (s, s, 1)
    total = jax.lax.reduce_window(x, np.array(0, x.dtype), jax.lax.add, window, strides, "VALID")
    return total / (k * k)
