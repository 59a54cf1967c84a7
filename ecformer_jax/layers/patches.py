"""Unfold / fold (nn.Unfold / nn.Fold) on NHWC maps, tap-major, and the Linear layer beside them.

`unfold(x, k, s, p)` turns (N, H, W, C) into (N, nh, nw, k * k * C) where the feature index is
(ky * k + kx) * C + c: each tap's C channels side by side, so building it is k * k contiguous copies.
PyTorch's nn.Unfold orders the same features channel-major (c * k * k + ky * k + kx), a k * k-way interleave
(7x slower on the CPU, and on a TPU a k * k-wide minor axis before the reshape). `fold` is unfold's adjoint: it
sums the overlapping contributions of tap-major patches back onto the (N, H, W, C) map (nn.Fold).
`PatchDense` is the official Linear that reads or writes such patches: its parameters keep PyTorch's
channel-major order (checkpoints convert unchanged) and are permuted to the tap-major order where they are used.
unfold and fold are built from strided slices / padding only, so they are exact and cheap. Each one's VJP is the
other one (they are adjoint linear maps), given explicitly through `jax.custom_vjp`: XLA's CPU backend
otherwise differentiates the 49 strided slices / interior pads into 49 full-size strided copies, which
made their backward ~8x slower than their forward (FuseFormer / DSTT training steps).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ecformer_jax.layers.conv import normal_init
from ecformer_jax.layers.resize import upsample_bilinear


def grid_size(h: int, w: int, kernel: int, stride: int, padding: int) -> tuple[int, int]:
    return (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1


def unfold(x, kernel: int, stride: int, padding: int):
    return _unfold_vjp(x, (int(x.shape[1]), int(x.shape[2])), kernel, stride, padding)


def fold(patches, output_size: tuple[int, int], kernel: int, stride: int, padding: int):
    """patches (N, nh, nw, k * k * C) tap-major -> (N, H, W, C), overlaps summed."""
    n, nh, nw, f = patches.shape
    h, w = output_size
    if (nh, nw) != grid_size(h, w, kernel, stride, padding):
        raise ValueError(
            f"fold: a {nh}x{nw} patch grid does not fit output {h}x{w} (kernel {kernel}, stride {stride}, "
            f"padding {padding})"
        )
    return _fold_vjp(patches, (int(h), int(w)), kernel, stride, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _unfold_vjp(x, size, kernel, stride, padding):
    return _unfold(x, kernel, stride, padding)


def _unfold_fwd(x, size, kernel, stride, padding):
    return _unfold(x, kernel, stride, padding), None


def _unfold_bwd(size, kernel, stride, padding, _, g):
    return (_fold_vjp(g, size, kernel, stride, padding),)


_unfold_vjp.defvjp(_unfold_fwd, _unfold_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _fold_vjp(patches, output_size, kernel, stride, padding):
    return _fold(patches, output_size, kernel, stride, padding)


def _fold_fwd(patches, output_size, kernel, stride, padding):
    return _fold(patches, output_size, kernel, stride, padding), None


def _fold_bwd(output_size, kernel, stride, padding, _, g):
    return (_unfold_vjp(g, output_size, kernel, stride, padding),)


_fold_vjp.defvjp(_fold_fwd, _fold_bwd)


def _unfold(x, kernel: int, stride: int, padding: int):
    n, h, w, c = x.shape
    nh, nw = grid_size(h, w, kernel, stride, padding)
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    taps = []
    for ky in range(kernel):
        for kx in range(kernel):
            taps.append(
                lax.slice(
                    xp,
                    (0, ky, kx, 0),
                    (n, ky + stride * (nh - 1) + 1, kx + stride * (nw - 1) + 1, c),
                    (1, stride, stride, 1),
                )
            )
    return jnp.concatenate(taps, axis=-1)  # (n, nh, nw, k*k * c): tap-major


def _fold(patches, output_size: tuple[int, int], kernel: int, stride: int, padding: int):
    """Tap (ky, kx) of patch (i, j) lands on padded pixel (ky + s*i, kx + s*j); with ky = s*a + r that is row phase r
    of grid row i + a. So each of the s x s phases is a sum of grid-sized taps shifted by (a, b), and the phases
    interleave into the map: every pixel gets its taps added in (ky, kx) order. Padding every one of the k*k taps to
    the whole map instead (the form before) wrote k*k map-sized arrays: on a TPU each tap a 1-wide slice of the
    patches' minor axis padded to 128 lanes, many of them live (FuseFormer's paper step on v5e: 4.53 -> 3.76 GiB per
    chip, FSDP 7.27 -> 4.18; docs/scaling.md); on the CPU 49 pads of 7.7 MB and their 49-way sum for DSTT's
    composition (FuseFormer's training step 4.0 -> 3.5 s, DSTT's inference on 8 frames 3.73 -> 3.17 s)."""
    n, nh, nw, f = patches.shape
    h, w = output_size
    s, k = stride, kernel
    c = f // (k * k)
    taps = patches.reshape(n, nh, nw, k * k, c)  # tap-major: each tap's channels contiguous (lane-dense on a TPU)
    shifts = -(-k // s)
    gh, gw = nh + shifts - 1, nw + shifts - 1
    zero = jnp.zeros((), patches.dtype)
    rows = []
    for ry in range(s):
        phases = []
        for rx in range(s):
            acc = None
            for ky in range(ry, k, s):
                for kx in range(rx, k, s):
                    a, b = ky // s, kx // s
                    cfg = ((0, 0, 0), (a, gh - nh - a, 0), (b, gw - nw - b, 0), (0, 0, 0))
                    tap = lax.pad(taps[:, :, :, ky * k + kx], zero, cfg)
                    acc = tap if acc is None else acc + tap
            phases.append(acc if acc is not None else jnp.zeros((n, gh, gw, c), patches.dtype))
        rows.append(jnp.stack(phases, axis=3))  # (n, gh, gw, s, c)
    out = jnp.stack(rows, axis=2).reshape(n, gh * s, gw * s, c)  # (n, gh, s, gw, s, c) interleaved
    hp, wp = h + 2 * padding, w + 2 * padding
    out = jnp.pad(out[:, :hp, :wp], ((0, 0), (0, max(0, hp - gh * s)), (0, max(0, wp - gw * s)), (0, 0)))
    return out[:, padding : padding + h, padding : padding + w, :]


def overlap_count(output_size: tuple[int, int], kernel: int, stride: int, padding: int) -> np.ndarray:
    """How many patches cover each pixel: fold of an all-ones tensor, as a (H, W, 1) numpy constant."""
    h, w = output_size
    nh, nw = grid_size(h, w, kernel, stride, padding)
    count = np.zeros((h + 2 * padding, w + 2 * padding), np.float32)
    for i in range(nh):
        for j in range(nw):
            count[i * stride : i * stride + kernel, j * stride : j * stride + kernel] += 1
    return count[padding : padding + h, padding : padding + w, None]


class PatchDense(nn.Module):
    """nn.Dense (the same parameters: "kernel" (in, out), "bias" (out,), the official init) whose input
    (`patches="in"`) or output (`patches="out"`) features are `taps` = k * k patches: the parameters keep PyTorch's
    channel-major feature order (c * taps + tap), in which the converter writes them, and are permuted at use to
    the tap-major order (tap * C + c) of `unfold` / `fold`."""

    features: int
    taps: int
    patches: str  # "in" | "out"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.patches not in ("in", "out"):
            raise ValueError(f"PatchDense: patches must be 'in' or 'out'; got {self.patches!r}")
        width = x.shape[-1] if self.patches == "in" else self.features
        if width % self.taps:
            raise ValueError(f"PatchDense: {self.patches}put features ({width}) must be a multiple of taps = "
                             f"{self.taps} (C channels x k * k taps)")
        kernel = self.param("kernel", normal_init, (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        kk = self.taps
        if self.patches == "in":
            kernel = kernel.reshape(-1, kk, self.features).swapaxes(0, 1).reshape(x.shape[-1], self.features)
        else:
            kernel = kernel.reshape(x.shape[-1], -1, kk).swapaxes(1, 2).reshape(x.shape[-1], self.features)
            bias = bias.reshape(-1, kk).T.reshape(self.features)
        y = lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), (((x.ndim - 1,), (0,)), ((), ())))
        return y + bias.astype(self.dtype)


# --- FuseFormer's soft split / soft composition (tokens <-> feature maps, learned) ----------------------------
def soft_split(module: nn.Module, features, hidden: int, base_size, k: int, s: int, p: int, dtype):
    """Soft split inside `module`'s compact call: overlapping k x k patches of features (N, h, w, C) ->
    linear "ss" -> + "pos_emb" (learned for `base_size` frames, bilinearly resized for other sizes).
    Returns tokens (N, nh, nw, hidden). FuseFormer's; shared with the token-mixer generators."""
    nh, nw = grid_size(features.shape[1], features.shape[2], k, s, p)
    nh0, nw0 = grid_size(base_size[0] // 4, base_size[1] // 4, k, s, p)
    tokens = PatchDense(hidden, k * k, "in", dtype, name="ss")(unfold(features, k, s, p))
    pos = module.param("pos_emb", normal_init, (nh0, nw0, hidden), jnp.float32)
    if (nh, nw) != (nh0, nw0):
        pos = upsample_bilinear(pos, (nh, nw), align_corners=False)
    return tokens + pos.astype(dtype)


def soft_composition(module: nn.Module, tokens, size, channels: int, base_size, k: int, s: int, p: int, dtype):
    """Soft composition inside `module`'s compact call: tokens (N, nh, nw, hidden) -> linear "sc" to k x k
    patches -> fold onto the (h, w) = `size` feature map with the overlaps SUMMED -> + per-pixel "sc_bias"
    (learned for `base_size` frames, bilinearly resized for other sizes). Returns (N, h, w, channels)."""
    h, w = size
    bh, bw = base_size[0] // 4, base_size[1] // 4
    patches = PatchDense(channels * k * k, k * k, "out", dtype, name="sc")(tokens)
    sc = fold(patches, (h, w), k, s, p)
    bias = module.param("sc_bias", nn.initializers.zeros, (bh, bw, channels), jnp.float32)
    if (h, w) != (bh, bw):
        bias = upsample_bilinear(bias, (h, w), align_corners=False)
    return sc + bias.astype(dtype)
