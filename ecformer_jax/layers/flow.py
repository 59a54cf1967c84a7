"""Optical-flow building blocks on channels-last tensors: grid sampling, flow warping and SPyNet.

* `grid_sample` follows torch.nn.functional.grid_sample (bilinear / nearest; zeros / border /
  reflection padding; align_corners True or False) with x (N, H, W, C) and grid (N, Ho, Wo, 2),
  grid[..., 0] = x (horizontal), both normalised to [-1, 1].
* `flow_warp` is mmediting's / E2FGVI's flow_warp: sample x at (col + flow_x, row + flow_y).
* `SPyNet` is the 6-level spatial-pyramid flow network (Ranjan & Black 2017) as packaged by
  mmediting (BasicVSR) and used by E2FGVI (`update_spynet`) and VSR-Transformer.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ecformer_jax.layers.checks import check_video
from ecformer_jax.layers.conv import conv_general_dilated
from ecformer_jax.layers.resize import avg_pool2d, upsample_bilinear

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MODES = ("bilinear", "nearest")
_PADDINGS = ("zeros", "border", "reflection")


# --- grid sampling ---------------------------------------------------------------------------------
def frame_pairs(a, c):
    """Clips a, c (B, N, ...) -> (B * 2 * N, ...), rows ordered (sample, which, frame): both members of a pair set
    as one batch for a flow network while each sample's rows stay together, so a batch sharded over devices stays
    on its device (concatenating [a; c] along the batch axis made XLA exchange halves between devices)."""
    return jnp.stack([a, c], axis=1).reshape(-1, *a.shape[2:])


def _unnormalize(coord, size: int, align_corners: bool):
    if align_corners:
        return (coord + 1) / 2 * (size - 1)
    return ((coord + 1) * size - 1) / 2


def _reflect(coord, twice_low: int, twice_high: int):
    """Reflect coordinates into [twice_low / 2, twice_high / 2] (PyTorch's reflect_coordinates)."""
    if twice_low == twice_high:
        return jnp.zeros_like(coord)
    low = twice_low / 2
    span = (twice_high - twice_low) / 2
    coord = jnp.abs(coord - low)
    extra = jnp.fmod(coord, span)
    flips = jnp.floor(coord / span)
    return jnp.where(jnp.fmod(flips, 2) == 0, extra + low, span - extra + low)


def _clip(coord, size: int):
    """Clamp to [0, size - 1]; like PyTorch the gradient is 0 at and beyond the limits."""
    inside = (coord > 0) & (coord < size - 1)
    return jnp.where(inside, coord, jax.lax.stop_gradient(jnp.clip(coord, 0, size - 1)))


def _source_coord(coord, size: int, padding_mode: str, align_corners: bool):
    coord = _unnormalize(coord, size, align_corners)
    if padding_mode == "border":
        coord = _clip(coord, size)
    elif padding_mode == "reflection":
        coord = _reflect(coord, 0, 2 * (size - 1)) if align_corners else _reflect(coord, -1, 2 * size - 1)
        coord = _clip(coord, size)
    return coord


def _gather(flat, iy, ix, h: int, w: int):
    """Values of flat (N, H*W, C) at integer (iy, ix) (N, P); zero where outside the image."""
    valid = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    idx = jnp.clip(iy, 0, h - 1) * w + jnp.clip(ix, 0, w - 1)
    vals = jax.vmap(lambda f, i: jnp.take(f, i, axis=0))(flat, idx)
    return vals, valid


def grid_sample(x, grid, mode: str = "bilinear", padding_mode: str = "zeros", align_corners: bool = False):
    """torch.nn.functional.grid_sample for channels-last x (N, H, W, C) and grid (N, Ho, Wo, 2).

    grid[..., 0] is the horizontal (x / width) coordinate, grid[..., 1] the vertical one, both
    normalised to [-1, 1] (the corner pixels' centres with align_corners=True, the image's outer
    edges with align_corners=False). Coordinates are computed in at least float32; the result has
    x's dtype. Returns (N, Ho, Wo, C).
    """
    if mode not in _MODES:
        raise ValueError(f"grid_sample: mode must be one of {_MODES}; got {mode!r}")
    if padding_mode not in _PADDINGS:
        raise ValueError(f"grid_sample: padding_mode must be one of {_PADDINGS}; got {padding_mode!r}")
    n, h, w, c = check_video(x, "grid_sample input x", ndim=4)
    gshape = getattr(grid, "shape", None)
    if gshape is None or len(gshape) != 4 or gshape[-1] != 2 or gshape[0] != n:
        raise ValueError(
            f"grid_sample: grid must have shape (N, Ho, Wo, 2) with N = {n} (x has shape {tuple(x.shape)}); "
            f"got {gshape}"
        )
    _, ho, wo, _ = gshape
    grid = grid.astype(jnp.promote_types(grid.dtype, jnp.float32))
    fx = _source_coord(grid[..., 0], w, padding_mode, align_corners).reshape(n, ho * wo)
    fy = _source_coord(grid[..., 1], h, padding_mode, align_corners).reshape(n, ho * wo)
    flat = x.reshape(n, h * w, c)
    if mode == "nearest":
        ix = jnp.round(fx).astype(jnp.int32)  # round half to even, like std::nearbyint
        iy = jnp.round(fy).astype(jnp.int32)
        vals, valid = _gather(flat, iy, ix, h, w)
        out = jnp.where(valid[..., None], vals, jnp.zeros((), x.dtype))
        return out.reshape(n, ho, wo, c)
    x0 = jnp.floor(fx)
    y0 = jnp.floor(fy)
    wx = fx - x0
    wy = fy - y0
    ex, sy = 1 - wx, 1 - wy
    ix0, iy0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    out = None
    for dy, dx, weight in ((0, 0, sy * ex), (0, 1, sy * wx), (1, 0, wy * ex), (1, 1, wy * wx)):
        vals, valid = _gather(flat, iy0 + dy, ix0 + dx, h, w)
        weight = jnp.where(valid, weight, 0).astype(x.dtype)
        term = vals * weight[..., None]
        out = term if out is None else out + term
    return out.reshape(n, ho, wo, c)


def flow_warp(x, flow, interpolation: str = "bilinear", padding_mode: str = "zeros", align_corners: bool = True):
    """Warp x (N, H, W, C) by flow (N, H, W, 2): out[p] = x sampled at p + flow[p] (pixels).

    flow[..., 0] is the horizontal displacement, flow[..., 1] the vertical one. As in mmediting /
    E2FGVI, the sample position is normalised with 2 * pos / max(size - 1, 1) - 1 and handed to
    grid_sample (which, with the default align_corners=True, samples exactly at p + flow).
    """
    n, h, w, _ = check_video(x, "flow_warp input x", ndim=4)
    if getattr(flow, "shape", None) is None or tuple(flow.shape) != (n, h, w, 2):
        raise ValueError(
            f"flow_warp: flow must have shape (N, H, W, 2) = {(n, h, w, 2)} matching x {tuple(x.shape)}; "
            f"got {getattr(flow, 'shape', None)}"
        )
    flow = flow.astype(jnp.promote_types(flow.dtype, jnp.float32))
    gx = jnp.arange(w, dtype=flow.dtype)[None, None, :] + flow[..., 0]
    gy = jnp.arange(h, dtype=flow.dtype)[None, :, None] + flow[..., 1]
    grid = jnp.stack([2 * gx / max(w - 1, 1) - 1, 2 * gy / max(h - 1, 1) - 1], axis=-1)
    return grid_sample(x, grid, interpolation, padding_mode, align_corners)


# --- SPyNet ----------------------------------------------------------------------------------------
# PyTorch's default Conv2d init (kaiming_uniform with a = sqrt(5)): U(+-1/sqrt(fan_in)).
_torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

SPYNET_CHANNELS = (32, 64, 32, 16, 2)
SPYNET_LEVELS = 6


class SPyNetBasicModule(nn.Module):
    """Five 7x7 convs (8 -> 32 -> 64 -> 32 -> 16 -> 2), ReLU after the first four."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for j, features in enumerate(SPYNET_CHANNELS):
            x = nn.Conv(features, (7, 7), padding=((3, 3), (3, 3)), dtype=self.dtype,
                        kernel_init=_torch_default_init, name=f"conv{j}",
                        conv_general_dilated=conv_general_dilated)(x)
            if j < len(SPYNET_CHANNELS) - 1:
                x = jax.nn.relu(x)
        return x


class SPyNet(nn.Module):
    """SPyNet(ref, supp) -> flow (N, H, W, 2), float32, channel 0 horizontal, in pixels.

    ref, supp: (N, H, W, 3) RGB images in [0, 1] - what the official code feeds it: E2FGVI maps its
    masked [-1, 1] local frames to [0, 1] with (x + 1) / 2 (holes become 0.5) and resizes them to
    1/4 before the call (that is the caller's job); VSR-Transformer passes its [0, 1] LR frames.
    The ImageNet normalisation (x - mean) / std happens inside, as in the official module.

    The result is the flow such that supp sampled at p + flow(p) matches ref at p. Steps (official
    mmediting SPyNet): bilinear resize (align_corners=False, no antialias) of both images up to
    multiples of 32; ImageNet normalisation; a 6-level avg_pool2d(2) pyramid; from a zero flow at
    1/32, per level flow_up = 2 * bilinear x2 upsample (align_corners=True) of the coarser flow and
    flow = flow_up + basic_module(cat[ref, flow_warp(supp, flow_up, border), flow_up]); finally a
    bilinear (align_corners=False, no antialias) resize back to (H, W) and channel 0 scaled by
    W / W_up, channel 1 by H / H_up. Flows are accumulated in float32 whatever `dtype` is.

    Sows the finest level's residual (N, H_up, W_up, 2) as intermediate "basic_module.5" (the
    official `basic_module.5` output).
    """

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ref, supp):
        n, h, w, _ = check_video(ref, "SPyNet ref", 3, ndim=4)
        check_video(supp, "SPyNet supp", 3, ndim=4)
        if tuple(supp.shape) != tuple(ref.shape):
            raise ValueError(f"SPyNet: ref {tuple(ref.shape)} and supp {tuple(supp.shape)} must have the same shape")
        h_up = h if h % 32 == 0 else 32 * (h // 32 + 1)
        w_up = w if w % 32 == 0 else 32 * (w // 32 + 1)
        mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
        std = jnp.asarray(IMAGENET_STD, jnp.float32)

        def prepare(img):
            img = img.astype(jnp.promote_types(img.dtype, jnp.float32))
            img = upsample_bilinear(img, (h_up, w_up), align_corners=False)
            pyramid = [((img - mean) / std).astype(self.dtype)]
            for _ in range(SPYNET_LEVELS - 1):
                pyramid.append(avg_pool2d(pyramid[-1], 2, 2))
            return pyramid[::-1]  # coarsest first

        refs, supps = prepare(ref), prepare(supp)
        flow = jnp.zeros((n, h_up // 32, w_up // 32, 2), jnp.float32)
        for level in range(SPYNET_LEVELS):
            if level == 0:
                flow_up = flow
            else:
                fh, fw = flow.shape[1:3]
                flow_up = upsample_bilinear(flow, (2 * fh, 2 * fw), align_corners=True) * 2.0
            warped = flow_warp(supps[level], flow_up, padding_mode="border")
            inp = jnp.concatenate([refs[level], warped, flow_up.astype(self.dtype)], axis=-1)
            residual = SPyNetBasicModule(self.dtype, name=f"basic_module_{level}")(inp)
            if level == SPYNET_LEVELS - 1:
                self.sow("intermediates", f"basic_module.{level}", residual)
            flow = flow_up + residual.astype(jnp.float32)
        flow = upsample_bilinear(flow, (h, w), align_corners=False)
        scale = jnp.asarray([np.float32(w / w_up), np.float32(h / h_up)], jnp.float32)
        return flow * scale


def spynet_from_torch(sd, prefix: str = "update_spynet") -> dict:
    """Params of `SPyNet` from an official state_dict (TorchStateDict-like `sd`).

    Keys `{prefix}.basic_module.{L}.basic_module.{j}.conv.{weight,bias}` (L < 6, j < 5); the
    `{prefix}.mean` / `{prefix}.std` buffers are consumed when present and must hold the ImageNet
    values (they are constants here). prefix "" reads a bare SPyNet state_dict.
    """
    p = f"{prefix}." if prefix else ""
    for key, expected in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
        if f"{p}{key}" in sd:
            value = np.asarray(sd.raw(f"{p}{key}")).reshape(-1)
            if value.shape != (3,) or not np.allclose(value, expected, rtol=0, atol=1e-6):
                raise ValueError(
                    f"checkpoint buffer {p}{key} = {value.tolist()} differs from the ImageNet {key} "
                    f"{list(expected)} that SPyNet uses as a constant"
                )
    return {
        f"basic_module_{level}": {
            f"conv{j}": sd.conv(f"{p}basic_module.{level}.basic_module.{j}.conv") for j in range(len(SPYNET_CHANNELS))
        }
        for level in range(SPYNET_LEVELS)
    }
