"""Channels-last convolutions with PyTorch-style explicit padding and the official init."""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ecformer_jax.layers import winograd
from ecformer_jax.layers.resize import upsample_bilinear
from ecformer_jax.layers.tiling import target_platform

# BaseNetwork.init_weights('normal', 0.02) of the official repositories.
normal_init = nn.initializers.normal(0.02)


def leaky_relu(x):
    return jax.nn.leaky_relu(x, 0.2)


def conv2d(features: int, kernel: int = 3, stride: int = 1, padding: int | None = None, dilation: int = 1,
           groups: int = 1, use_bias: bool = True, dtype: Any = jnp.float32, name: str | None = None) -> nn.Conv:
    """nn.Conv2d(in, features, kernel, stride, padding, dilation, groups) for NHWC input.

    padding defaults to kernel // 2 * dilation (size preserving at stride 1); weights use the
    official N(0, 0.02) init.
    """
    p = kernel // 2 * dilation if padding is None else padding
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((p, p), (p, p)),
                   kernel_dilation=(dilation, dilation), feature_group_count=groups, use_bias=use_bias,
                   dtype=dtype, kernel_init=normal_init, name=name,
                   conv_general_dilated=split_group_conv)


_NHWC = ("NHWC", "HWIO", "NHWC")
PHASE_ROWS_MIN_CIN = 64  # a strided 5x5 conv's kernel gradient by phase and kernel row from this many input channels
CHUNK_BYTES = 3 << 19  # input per row chunk of a stride-1 kernel gradient (1.5 MiB: in the cache, not memory)
MAX_TAPS = 9  # strided kernels with more taps (RAFT's 7x7 stem) keep XLA's kernel gradient: 49 products compile slowly
# a stride-1 kernel with more taps takes the row products only from this many multiply-adds (5 of SPyNet's 30 convs:
# its gradient compiles in 6.3 s, 4.8 with XLA's everywhere, 10.3 with the row products everywhere)
LARGE_KERNEL_MIN_MACS = 1 << 28
SHIFTED_MAX_COUT = 16  # a stride-1 kernel gradient shifts the output gradient to every tap up to this many outputs
# a stride-1 3x3 conv takes Winograd's F(2x2, 3x3) (layers/winograd.py) for its gradient from this many input x output
# channels, and for its forward too from WINOGRAD_FORWARD_MIN (below it the transforms cost more than they save)
WINOGRAD_GRAD_MIN = 64 * 128
WINOGRAD_FORWARD_MIN = 128 * 256
# ... and only from this many multiply-adds: smaller convs take a few ms, less than the ~0.6 s its transforms add to
# the compile (the tests' tiny configs stay on the direct conv; every encoder conv of a 432x240 clip takes it)
WINOGRAD_MIN_MACS = 1 << 30


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None):
    """jax.lax.conv_general_dilated; for the CPU target a plain 2-D NHWC / HWIO conv (explicit padding, any
    stride and dilation, no groups) gets a gradient that XLA's CPU backend runs faster than its own:

    - a stride-1 3x3 float conv (undilated, or dilated alike in both directions: by phase) with at least
      WINOGRAD_GRAD_MIN input x output channels: Winograd's
      F(2x2, 3x3) for both gradients (layers/winograd.py: 2.25x fewer multiplications; forward + backward
      1.0-1.7x faster from 64 x 128 channels, slower at 64 x 64), from WINOGRAD_FORWARD_MIN for the forward too,
      and only from WINOGRAD_MIN_MACS multiply-adds.
    - kernel gradient: at stride 1 one matrix product per kernel row, the input's row window times the output
      gradient shifted to every column tap, a few output rows at a time so that the copies stay in the cache
      (CHUNK_BYTES; at most MAX_TAPS taps, at most SHIFTED_MAX_COUT output channels and 4x as many inputs: one
      product with the output gradient shifted to every tap; more than MAX_TAPS taps only from
      LARGE_KERNEL_MIN_MACS multiply-adds, SPyNet's forward + backward at E2FGVI's shapes 192 -> 170 ms);
      strided (at most MAX_TAPS taps), one product per tap, the strided shifted input transposed times the output
      gradient. A strided kernel with more taps (the discriminators' 5x5, stride 2)
      and at least PHASE_ROWS_MIN_CIN input channels: per input phase, one product per kernel row as at stride 1
      (10 products, not 25). XLA's costs 2-9x the conv itself, and inside a loop (the scans of
      ProPainter's propagation, E2FGVI's and RAFT's recurrences) up to 40x: a 3x3 conv of 16x16x261 -> 128 takes
      2.7 ms outside a scan and 105 ms inside one.
    - input gradient of a strided conv (no dilation): one stride-1 conv per output phase with the kernel's taps
      of that phase, interleaved, instead of a conv of the zero-dilated output gradient, three quarters of whose
      products are with zeros at stride 2 (the discriminators' 5x5 stride-2 convs: 2.5-3.4x faster).

    Values equal the native gradient within float32 summation order. GPUs and TPUs (and an ahead-of-time
    compile for them) keep the native gradient.
    """
    args = dict(window_strides=window_strides, padding=padding, lhs_dilation=lhs_dilation,
                rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                feature_group_count=feature_group_count, batch_group_count=batch_group_count, precision=precision,
                preferred_element_type=preferred_element_type)
    strided = tuple(window_strides) != (1, 1) and tuple(rhs_dilation or (1, 1)) == (1, 1)
    large_by_rows = tuple(window_strides) == (1, 1) and lhs.ndim == 4 and rhs.ndim == 4 and (
        np.prod(lhs.shape[:-1]) * np.prod(rhs.shape) >= LARGE_KERNEL_MIN_MACS)  # stride 1: output ~ input pixels
    plain = (target_platform() == "cpu" and lhs.ndim == 4 and not isinstance(padding, str)
             and tuple(lhs_dilation or (1, 1)) == (1, 1) and feature_group_count == 1 and batch_group_count == 1
             and preferred_element_type is None
             and (rhs.shape[0] * rhs.shape[1] <= MAX_TAPS or strided or large_by_rows)
             and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
             == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
    if not plain:
        return jax.lax.conv_general_dilated(lhs, rhs, **args)
    channels = rhs.shape[2] * rhs.shape[3]
    dh, dw = rhs_dilation or (1, 1)
    if (tuple(window_strides) == (1, 1) and dh == dw and channels >= WINOGRAD_GRAD_MIN
            and np.prod(lhs.shape[:-1]) * np.prod(rhs.shape) >= WINOGRAD_MIN_MACS
            and lhs.dtype in (jnp.float32, jnp.float64) and rhs.dtype == lhs.dtype
            and winograd.supported(lhs.shape, rhs.shape, padding, dh)):
        pads = tuple(tuple(p) for p in padding)
        if dh == 1:
            return winograd.conv3x3(lhs, rhs, pads, precision, channels >= WINOGRAD_FORWARD_MIN)
        return winograd.dilated(lhs, rhs, pads, dh, precision, channels >= WINOGRAD_FORWARD_MIN)
    return _conv_nhwc(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding),
                      tuple(rhs_dilation or (1, 1)), precision)


def _accumulator(dtype):
    """The kernel gradients' product type: float32 for bfloat16 / float32 operands, float64 for float64."""
    return jnp.promote_types(dtype, jnp.float32)


def _native_nhwc(x, k, strides, padding, dilation, precision):
    return jax.lax.conv_general_dilated(x, k, strides, padding, rhs_dilation=dilation, dimension_numbers=_NHWC,
                                        precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_nhwc(x, k, strides, padding, dilation, precision):
    return _native_nhwc(x, k, strides, padding, dilation, precision)


def _conv_nhwc_fwd(x, k, strides, padding, dilation, precision):
    return _native_nhwc(x, k, strides, padding, dilation, precision), (x, k)


def _input_grad_by_phase(x_shape, k, dy, strides, padding, precision):
    """The input gradient of a strided, undilated conv. Padded input row r = s * m + p only meets the taps
    i = p, p + s, ...: per phase (p, q), a full stride-1 correlation of dy with those taps (flipped, in and out
    swapped) gives rows m; the phases are interleaved and the padding cropped."""
    n, h, w, cin = x_shape
    (sh, sw), ((lo_h, hi_h), (lo_w, hi_w)) = strides, padding
    hp, wp = h + lo_h + hi_h, w + lo_w + hi_w
    mh, mw = -(-hp // sh), -(-wp // sw)
    phases = []
    for p in range(sh):
        row = []
        for q in range(sw):
            sub = k[p::sh, q::sw]
            if sub.size == 0:  # a kernel smaller than the stride: this phase never meets a tap
                row.append(jnp.zeros((n, mh, mw, cin), dy.dtype))
                continue
            uh, uw = sub.shape[:2]
            g = jax.lax.conv_general_dilated(dy, jnp.flip(sub, (0, 1)).swapaxes(2, 3), (1, 1),
                                             ((uh - 1, uh - 1), (uw - 1, uw - 1)), dimension_numbers=_NHWC,
                                             precision=precision)
            row.append(jax.lax.pad(g, jnp.zeros((), g.dtype),
                                   ((0, 0, 0), (0, mh - g.shape[1], 0), (0, mw - g.shape[2], 0), (0, 0, 0))))
        phases.append(jnp.stack(row, axis=3))  # (n, mh, mw, sw, cin)
    dxp = jnp.stack(phases, axis=2).reshape(n, mh * sh, mw * sw, cin)[:, :hp, :wp]
    return jax.lax.pad(dxp, jnp.zeros((), dxp.dtype), ((0, 0, 0), (-lo_h, -hi_h, 0), (-lo_w, -hi_w, 0), (0, 0, 0)))


def _at_column_offsets(dy, offsets, width):
    """dy placed at each column offset of a row `width` wide, the copies side by side in channels, flattened to
    (pixels, len(offsets) * C): the right-hand side of the kernel gradients' one-product-per-kernel-row form."""
    zero = jnp.zeros((), dy.dtype)
    wo = dy.shape[2]
    cols = [jax.lax.pad(dy, zero, ((0, 0, 0), (0, 0, 0), (o, width - wo - o, 0), (0, 0, 0))) for o in offsets]
    return jnp.concatenate(cols, axis=-1).reshape(-1, len(offsets) * dy.shape[-1])


def _kernel_grad_by_rows(xp, dy, kh, kw, dh, dw, precision):
    """The kernel gradient of a stride-1 conv of the padded input xp, as (kh, cin, kw * cout). Tap (i, j) contracts
    xp[a + i * dh, b + j * dw] with dy[a, b] over the pixels: per kernel row i, the input's row window over the whole
    padded width times dy placed at the column offsets j * dw of that width (the kw copies side by side in
    channels): kh copies of the input and kw of dy instead of kh * kw of the input.

    A few output rows at a time: a scan over chunks of r output rows, r the largest divisor of the output height
    whose input rows (all images together) fit in CHUNK_BYTES, so that a chunk's copies and products stay in the
    cache instead of whole images going through memory. Kernel gradients, seconds (2 cores), whole images -> row
    chunks: 64 -> 64 at 2 x 240x432 0.18 -> 0.11, at 3 x 120x216 0.080 -> 0.035; 128 -> 128 at 2 x 120x216 0.114 ->
    0.075; 256 -> 256 at 2 x 60x108 0.077 -> 0.057; 320 -> 256 at 3 x 60x108 0.144 -> 0.105. (The other forms below
    are not chunked: the shifted output gradient is one long product already and got slower in chunks; the strided
    forms gained nothing.)"""
    n, ho, wo, cout = dy.shape
    wp, cin = xp.shape[2], xp.shape[3]
    halo = (kh - 1) * dh
    acc = _accumulator(xp.dtype)

    def product(xc, dc):  # xc (n, r + halo, wp, cin), dc (n, r, wo, cout) -> (kh, cin, kw * cout)
        r = dc.shape[1]
        cols = _at_column_offsets(dc, [j * dw for j in range(kw)], wp)
        return jnp.stack([jnp.dot(jax.lax.slice_in_dim(xc, i * dh, i * dh + r, axis=1).reshape(-1, cin).T, cols,
                                  precision=precision, preferred_element_type=acc) for i in range(kh)])

    row_bytes = n * wp * cin * xp.dtype.itemsize
    r = max([r for r in range(1, ho + 1) if ho % r == 0 and (r + halo) * row_bytes <= CHUNK_BYTES], default=1)
    if r >= ho:
        return product(xp, dy)

    def chunk(total, i):
        xc = jax.lax.dynamic_slice_in_dim(xp, i * r, r + halo, axis=1)
        return total + product(xc, jax.lax.dynamic_slice_in_dim(dy, i * r, r, axis=1)), None

    return jax.lax.scan(chunk, jnp.zeros((kh, cin, kw * cout), acc), jnp.arange(ho // r))[0]


def _kernel_grad_by_phase_rows(x, dy, k_shape, strides, padding, precision):
    """The kernel gradient of a strided, undilated conv. With kernel row i = s * l + p and column j = s * m + q,
    tap (i, j) contracts the input's phase image xp[p::s, q::s] shifted by (l, m) with dy: a stride-1 kernel
    gradient per phase, done as in the stride-1 case, one product per (phase, kernel row) with dy placed at the
    column offsets m side by side in channels (5x5, stride 2: 10 products instead of 25, each input element
    copied 2.5 times instead of 6.25; the T-PatchGAN's 192 -> 128 at 2 x 119x215: 203 -> 125 ms)."""
    kh, kw, cin, cout = k_shape
    (sh, sw), ((lo_h, hi_h), (lo_w, hi_w)) = strides, padding
    n, ho, wo, _ = dy.shape
    w = x.shape[2]
    cols = -(-kw // sw)
    wq = wo + cols - 1  # every phase image's width (zero columns beyond the input only meet zero dy)
    xp = jax.lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (lo_h, hi_h, 0),
                                                  (lo_w, max(hi_w, sw * wq - w - lo_w), 0), (0, 0, 0)))
    taps = {}
    for q in range(min(sw, kw)):
        mq = len(range(q, kw, sw))
        dy_cols = _at_column_offsets(dy, range(mq), wq)
        for i in range(kh):
            window = jax.lax.slice(xp, (0, i, q, 0), (n, i + sh * (ho - 1) + 1, q + sw * (wq - 1) + 1, cin),
                                   (1, sh, sw, 1))
            g = jnp.dot(window.reshape(-1, cin).T, dy_cols, precision=precision,
                        preferred_element_type=_accumulator(x.dtype))
            for m in range(mq):
                taps[i, q + sw * m] = g[:, m * cout:(m + 1) * cout]
    return jnp.stack([jnp.stack([taps[i, j] for j in range(kw)]) for i in range(kh)])


def _conv_nhwc_bwd(strides, padding, dilation, precision, residuals, dy):
    x, k = residuals
    native = lambda a, b: _native_nhwc(a, b, strides, padding, dilation, precision)  # noqa: E731
    if strides != (1, 1) and dilation == (1, 1):
        dx = _input_grad_by_phase(x.shape, k, dy, strides, padding, precision).astype(x.dtype)
    else:
        dx = jax.vjp(lambda a: native(a, k), x)[1](dy)[0]
    kh, kw, cin, cout = k.shape
    if kh * kw > MAX_TAPS and strides != (1, 1):
        if (dilation == (1, 1) and cin >= PHASE_ROWS_MIN_CIN
                and -(-kh // strides[0]) * -(-kw // strides[1]) <= MAX_TAPS):
            return dx, _kernel_grad_by_phase_rows(x, dy, k.shape, strides, padding, precision).astype(k.dtype)
        return dx, jax.vjp(lambda b: native(x, b), k)[1](dy)[0]
    n, ho, wo, _ = dy.shape
    (sh, sw), (dh, dw) = strides, dilation
    xp = jax.lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))
    if (sh, sw) == (1, 1) and cout <= SHIFTED_MAX_COUT and 4 * cout <= cin and kh * kw <= MAX_TAPS:
        # Few output channels (a decoder's last conv, 64 -> 3): shift the small output gradient to every tap
        # instead of copying the wide input nine times, and contract once. (64 -> 3 at 3 x 240x432: 0.47 -> 0.12 s;
        # against the row chunks, ms: 64 -> 3 at 2 x 240x432 44 vs 50, 256 -> 16 at 2 x 60x108 6.9 vs 12.5, but
        # 512 -> 128 at 2 x 60x108 82-101 vs 68, 256 -> 24 21 vs 15, 64 -> 16 at 2 x 120x216 28 vs 14)
        hp, wp = xp.shape[1:3]
        zero = jnp.zeros((), dy.dtype)
        shifted = [jax.lax.pad(dy, zero, ((0, 0, 0), (i * dh, hp - ho - i * dh, 0), (j * dw, wp - wo - j * dw, 0),
                                          (0, 0, 0))) for i in range(kh) for j in range(kw)]
        g = jnp.dot(xp.reshape(-1, cin).T, jnp.concatenate(shifted, axis=-1).reshape(-1, kh * kw * cout),
                    precision=precision, preferred_element_type=_accumulator(x.dtype))
        return dx, g.reshape(cin, kh, kw, cout).transpose(1, 2, 0, 3).astype(k.dtype)
    if (sh, sw) == (1, 1):
        g = _kernel_grad_by_rows(xp, dy, kh, kw, dh, dw, precision)
        return dx, g.reshape(kh, cin, kw, cout).transpose(0, 2, 1, 3).astype(k.dtype)
    dy_rows = dy.reshape(n * ho * wo, cout)
    taps = []
    for i in range(kh):
        for j in range(kw):
            shifted = jax.lax.slice(xp, (0, i * dh, j * dw, 0), (n, i * dh + (ho - 1) * sh + 1,
                                                                 j * dw + (wo - 1) * sw + 1, cin), (1, sh, sw, 1))
            taps.append(jnp.dot(shifted.reshape(n * ho * wo, cin).T, dy_rows, precision=precision,
                                preferred_element_type=_accumulator(x.dtype)))
    return dx, jnp.stack(taps).reshape(k.shape).astype(k.dtype)


_conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def split_group_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                     dimension_numbers=None, feature_group_count: int = 1, precision=None, **kwargs):
    """lax.conv_general_dilated where feature groups run as one dense conv per group, concatenated.

    The same result (the same products and sums per output) with the same parameters; XLA's CPU backend
    runs a grouped conv several times slower and with gigabytes of scratch (17 x 60 x 108 x 640 -> 384
    channels in 4 groups: 5.5 s and ~5.7 GB, split: 1.6 s and no scratch), which made the FuseFormer /
    E2FGVI / DSTT encoders dominate inference time and memory on CPU.
    """
    g = int(feature_group_count)
    conv = functools.partial(conv_general_dilated, window_strides=window_strides, padding=padding,
                             lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                             dimension_numbers=dimension_numbers, precision=precision, **kwargs)
    if g == 1:
        return conv(lhs, rhs)
    dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    lhs_parts = jnp.split(lhs, g, axis=dn.lhs_spec[1])
    rhs_parts = jnp.split(rhs, g, axis=dn.rhs_spec[0])
    return jnp.concatenate([conv(a, b) for a, b in zip(lhs_parts, rhs_parts)], axis=dn.out_spec[1])


class Deconv(nn.Module):
    """The official "deconv": bilinear x2 upsampling (align_corners=True), then a 3x3 conv."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        n, h, w, _ = x.shape
        x = upsample_bilinear(x, (2 * h, 2 * w), align_corners=True)
        return conv2d(self.features, 3, dtype=self.dtype, name="conv")(x)


def grouped_concat(x0, a, groups: int):
    """Interleave two NHWC tensors group by group: [x0_g0, a_g0, x0_g1, a_g1, ...] on channels.

    This is FuseFormer's hierarchical encoder input: a grouped conv with `groups` groups then sees
    one (x0 slice, a slice) pair per group.
    """
    *lead, c0 = x0.shape
    ca = a.shape[-1]
    if c0 % groups or ca % groups:
        raise ValueError(f"grouped_concat: channels {c0} and {ca} must be divisible by groups={groups}")
    x0 = x0.reshape(*lead, groups, c0 // groups)
    a = a.reshape(*lead, groups, ca // groups).astype(x0.dtype)
    return jnp.concatenate([x0, a], axis=-1).reshape(*lead, c0 + ca)



class Encoder(nn.Module):
    """FuseFormer's encoder, shared by E2FGVI, ProPainter and the token-mixer generators: four plain convs
    (x4 down, 256 channels = x0), then four convs whose input is x0 and the current
    activation interleaved group by group (groups 2, 4, 8, 1). Output 128 channels."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i, (features, stride) in enumerate(((64, 2), (64, 1), (128, 2), (256, 1), (384, 1))):
            x = leaky_relu(conv2d(features, 3, stride, dtype=self.dtype, name=f"conv{i}")(x))
            if i == 3:
                x0 = x
        for i, (features, groups) in enumerate(((512, 2), (384, 4), (256, 8), (128, 1)), start=5):
            x = grouped_concat(x0, x, groups)
            x = leaky_relu(conv2d(features, 3, groups=groups, dtype=self.dtype, name=f"conv{i}")(x))
        return x


def encoder_from_torch(sd, prefix: str = "encoder") -> dict:
    """Key mapping of the official `Encoder` (its nn.ModuleList `layers`: conv, LReLU, conv, ...)."""
    return {f"conv{i}": sd.conv(f"{prefix}.layers.{2 * i}") for i in range(9)}


class Decoder(nn.Module):
    """The inpainting decoder of STTN / FuseFormer / DSTT / E2FGVI: two (bilinear x2 + conv) stages
    back to RGB at 4x the feature resolution. Returns pre-tanh values."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = leaky_relu(Deconv(128, self.dtype, name="up0")(x))
        x = leaky_relu(conv2d(64, 3, dtype=self.dtype, name="conv0")(x))
        x = leaky_relu(Deconv(64, self.dtype, name="up1")(x))
        return conv2d(3, 3, dtype=self.dtype, name="conv1")(x)


def decoder_from_torch(sd, prefix: str = "decoder") -> dict:
    """Key mapping of the official nn.Sequential decoder (deconv, LReLU, conv, LReLU, deconv, LReLU, conv)."""
    return {
        "up0": {"conv": sd.conv(f"{prefix}.0.conv")},
        "conv0": sd.conv(f"{prefix}.2"),
        "up1": {"conv": sd.conv(f"{prefix}.4.conv")},
        "conv1": sd.conv(f"{prefix}.6"),
    }


def pixel_shuffle(x, r: int):
    """torch.nn.PixelShuffle(r) for channels-last x (..., H, W, C * r * r) -> (..., H * r, W * r, C).

    PyTorch's channel order: input channel c * r * r + i * r + j lands in output channel c at
    (h * r + i, w * r + j). (jax / TF depth_to_space in NHWC reads channel (i * r + j) * C + c
    instead, so it is NOT a drop-in replacement.)
    """
    *lead, h, w, crr = x.shape
    if r < 1 or crr % (r * r):
        raise ValueError(f"pixel_shuffle: channels ({crr}) must be divisible by r * r = {r * r} (r = {r})")
    c = crr // (r * r)
    n = len(lead)
    x = x.reshape(*lead, h, w, c, r, r)
    x = x.transpose(*range(n), n, n + 3, n + 1, n + 4, n + 2)  # (..., h, i, w, j, c)
    return x.reshape(*lead, h * r, w * r, c)


def _time_groups(t, kt, pt0, pt1):
    """The output frames of a stride-1 time convolution grouped by the time taps that meet real frames rather than
    the zero padding: [(first, end, first tap, end tap)], output frame o reading input frame o + tap - pt0."""
    groups = []
    for o in range(t + pt0 + pt1 - kt + 1):
        taps = (max(0, pt0 - o), min(kt, t + pt0 - o))
        if groups and groups[-1][2:] == taps:
            groups[-1] = (groups[-1][0], o + 1, *taps)
        else:
            groups.append((o, o + 1, *taps))
    return groups


def conv3d(x, kernel, strides=(1, 1, 1), padding=((0, 0), (0, 0), (0, 0))):
    """3-D convolution of x (N, T, H, W, Cin) with kernel (kt, kh, kw, Cin, Cout).

    With temporal stride 1 it runs as 2-D convs over all frames, the same numbers as a Conv3d: on the CPU the kt
    time taps are stacked into the channel axis for one 2-D conv per group of output frames that meet the same
    real frames (XLA's CPU backend differentiates 2-D convs ~20x faster than 3-D ones; the taps that would only
    meet the zero time padding are left out, as PyTorch's oneDNN does: a T-PatchGAN layer on a 2-frame clip does
    2/3 of the products); on a TPU or GPU each time tap is a 2-D conv of the time-shifted frames and the kt
    results are summed (the stacked kt * Cin channels of a discriminator's RGB input took 9 of a TPU's 128 lanes:
    its gradient on a 16 x 240x432 clip needed 1752 MiB of temporaries; summed per tap 608; the native 3-D conv
    1895).
    """
    kt = kernel.shape[0]
    (pt0, pt1), sp = padding[0], tuple(padding[1:])
    if strides[0] != 1:
        return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    n, t, h, w, c = x.shape
    if target_platform() != "cpu":
        xp = jnp.pad(x, ((0, 0), (pt0, pt1), (0, 0), (0, 0), (0, 0)))
        t_out = t + pt0 + pt1 - kt + 1
        y = sum(conv_general_dilated(xp[:, i:i + t_out].reshape(n * t_out, h, w, c), kernel[i], strides[1:], sp,
                                     dimension_numbers=_NHWC) for i in range(kt))
        return y.reshape(n, t_out, *y.shape[1:])
    (kh, kw), cout = kernel.shape[1:3], kernel.shape[-1]
    ho, wo = (h + sum(sp[0]) - kh) // strides[1] + 1, (w + sum(sp[1]) - kw) // strides[2] + 1
    parts = []
    for o0, o1, i0, i1 in _time_groups(t, kt, pt0, pt1):
        if i1 <= i0:  # only zero padding in reach (a time padding of kt or more)
            parts.append(jnp.zeros((n, o1 - o0, ho, wo, cout), jnp.result_type(x, kernel)))
            continue
        stacked = jnp.concatenate([x[:, o0 + i - pt0:o1 + i - pt0] for i in range(i0, i1)], axis=-1)
        k2 = jnp.transpose(kernel[i0:i1], (1, 2, 0, 3, 4)).reshape(kh, kw, (i1 - i0) * c, cout)
        y = conv_general_dilated(stacked.reshape(n * (o1 - o0), h, w, (i1 - i0) * c), k2, strides[1:], sp,
                                 dimension_numbers=_NHWC)
        parts.append(y.reshape(n, o1 - o0, ho, wo, cout))
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)


class Conv3d(nn.Module):
    """nn.Conv3d for (N, T, H, W, C) input, built on `conv3d`."""

    features: int
    kernel: tuple = (3, 5, 5)
    strides: tuple = (1, 2, 2)
    padding: tuple = (1, 2, 2)
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", normal_init, (*self.kernel, x.shape[-1], self.features), jnp.float32)
        y = conv3d(x.astype(self.dtype), kernel.astype(self.dtype), self.strides, [(p, p) for p in self.padding])
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
        return y
