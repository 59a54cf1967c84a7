"""Modulated deformable convolution (DCNv2) in pure JAX, and BasicVSR++'s second-order deformable
alignment as E2FGVI's feature propagation uses it.

Semantics are mmcv's `modulated_deform_conv2d` (identical to torchvision.ops.deform_conv2d with a
mask), in channels-last layout:

* x (N, H, W, Cin); kernel (kh, kw, Cin / groups, Cout) (Flax HWIO, output channels group-major);
* offset (N, Ho, Wo, deform_groups * 2 * kh * kw): channel g * 2K + 2k is the row (dy) and
  g * 2K + 2k + 1 the column (dx) displacement of tap k = i * kw + j for deformable group g
  (K = kh * kw; input channels are split into deform_groups contiguous groups);
* mask (N, Ho, Wo, deform_groups * kh * kw): channel g * K + k, a plain multiplier of the sample;
* tap (i, j) of output (oy, ox) samples at (oy * sh - ph + i * dh + dy, ox * sw - pw + j * dw + dx)
  bilinearly, corners outside the image contributing 0 (so any sample outside (-1, H) x (-1, W)
  is 0); then an ordinary (grouped) contraction with the kernel, plus the bias.

The implementation gathers the four bilinear corners of all kh * kw taps of a block of output pixels and
contracts the sampled columns with the kernel in one matmul; on the CPU the blocks (about
`layers.tiling.CPU_TILE` sampled values) run one after another, so the (pixels, taps * Cin) columns are
never allocated whole. Everything is differentiable (w.r.t. x, offset, mask, kernel and bias) with plain
JAX autodiff.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ecformer_jax.layers.checks import check_video
from ecformer_jax.layers.conv import conv2d, conv_general_dilated
from ecformer_jax.layers.tiling import default_tile


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"modulated_deform_conv2d: {what} must be an int or a pair; got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def modulated_deform_conv2d(x, offset, mask, kernel, bias=None, stride=1, padding=1, dilation=1, groups: int = 1,
                            deform_groups: int = 1, tile: int | None = None):
    """mmcv.ops.modulated_deform_conv2d on channels-last tensors (see the module docstring).

    Returns (N, Ho, Wo, Cout) with Ho = (H + 2 ph - dh (kh - 1) - 1) // sh + 1 (likewise Wo), in
    x's dtype. Sampling positions and bilinear weights are computed in at least float32. `tile`: sampled
    values per tile of output pixels (layers/tiling.py; default: tiled on the CPU only, 0 = untiled).
    """
    n, h, w, cin = check_video(x, "modulated_deform_conv2d input x", ndim=4)
    kshape = getattr(kernel, "shape", None)
    if kshape is None or len(kshape) != 4:
        raise ValueError(f"modulated_deform_conv2d: kernel must be (kh, kw, Cin/groups, Cout); got shape {kshape}")
    kh, kw, cin_g, cout = kshape
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    if groups < 1 or cin_g * groups != cin or cout % groups:
        raise ValueError(
            f"modulated_deform_conv2d: kernel {tuple(kshape)} with groups={groups} does not fit {cin} input "
            f"channels (need kernel.shape[2] * groups == Cin and Cout divisible by groups)"
        )
    dg = int(deform_groups)
    if dg < 1 or cin % dg:
        raise ValueError(f"modulated_deform_conv2d: Cin={cin} is not divisible by deform_groups={deform_groups}")
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"modulated_deform_conv2d: input {h}x{w} is too small for this kernel/padding/dilation")
    k = kh * kw
    for name, arr, ch in (("offset", offset, dg * 2 * k), ("mask", mask, dg * k)):
        if getattr(arr, "shape", None) is None or tuple(arr.shape) != (n, ho, wo, ch):
            raise ValueError(
                f"modulated_deform_conv2d: {name} must have shape (N, Ho, Wo, {ch}) = {(n, ho, wo, ch)} "
                f"for deform_groups={dg} and a {kh}x{kw} kernel; got {getattr(arr, 'shape', None)}"
            )
    dtype = x.dtype
    ctype = jnp.promote_types(offset.dtype, jnp.float32)
    cg = cin // dg
    p = ho * wo

    # undisplaced sampling positions (p, k, 2) of every output pixel and tap
    oy, ox = np.meshgrid(np.arange(ho) * sh - ph, np.arange(wo) * sw - pw, indexing="ij")
    base = np.stack([oy.reshape(p, 1) + np.repeat(np.arange(kh) * dh, kw)[None],
                     ox.reshape(p, 1) + np.tile(np.arange(kw) * dw, kh)[None]], axis=-1).astype(np.float32)
    src = x.reshape(n, h * w * dg, cg)  # row = pixel * dg + deformable group
    kern = kernel.astype(dtype).reshape(k * cin_g, cout) if groups == 1 else \
        kernel.astype(dtype).reshape(k, cin_g, groups, cout // groups)

    def columns_times_kernel(args):  # pixels (n, q) of the output -> (n, q, cout)
        off, m, pos = args  # (n, q, dg, k, 2), (n, q, dg, k), (q, k, 2)
        q = pos.shape[0]
        off, m = jnp.swapaxes(off, 2, 3), jnp.swapaxes(m, 2, 3)  # (n, q, k, dg, ...)
        py, px = pos[None, :, :, None, 0] + off[..., 0], pos[None, :, :, None, 1] + off[..., 1]
        y0f, x0f = jnp.floor(py), jnp.floor(px)
        ly, lx = py - y0f, px - x0f
        hy, hx = 1 - ly, 1 - lx
        y0, x0 = y0f.astype(jnp.int32), x0f.astype(jnp.int32)
        cols = None  # (n, q, k, dg, cg): the bilinear samples, summed over the four corners
        for cy, cx, wgt in ((0, 0, hy * hx), (0, 1, hy * lx), (1, 0, ly * hx), (1, 1, ly * lx)):
            iy, ix = y0 + cy, x0 + cx
            valid = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
            rows = (jnp.clip(iy, 0, h - 1) * w + jnp.clip(ix, 0, w - 1)) * dg + np.arange(dg, dtype=np.int32)
            # rows are clipped into range above, so the gather may skip its own bounds handling (~20 % faster)
            vals = jax.vmap(lambda f, i: f.at[i].get(mode="promise_in_bounds"))(src, rows.reshape(n, -1))
            term = vals.reshape(n, q, k, dg, cg) * jnp.where(valid, wgt * m, 0).astype(dtype)[..., None]
            cols = term if cols is None else cols + term
        if groups == 1:  # channel index within a tap = d * cg + c, the kernel's input channel
            return (cols.reshape(n * q, k * cin) @ kern).reshape(n, q, cout)
        cols = cols.reshape(n, q, k, groups, cin_g)
        return jnp.einsum("npkgc,kcgo->npgo", cols, kern).reshape(n, q, cout)

    off = offset.astype(ctype).reshape(n, p, dg, k, 2)
    m = mask.astype(ctype).reshape(n, p, dg, k)
    tile = default_tile(tile)
    per = min(p, max(1, tile // (k * cin))) if tile else p  # output pixels per tile
    if per == p:
        out = columns_times_kernel((off, m, jnp.asarray(base)))
    else:  # tiles of output pixels, one after another (the last padded, then cropped)
        chunks = -(-p // per)
        pad = lambda a, axis: jnp.pad(a, [(0, chunks * per - p) if i == axis else (0, 0) for i in range(a.ndim)])
        split = lambda a: jnp.moveaxis(a.reshape(n, chunks, per, *a.shape[2:]), 1, 0)
        out = jax.lax.map(columns_times_kernel, (split(pad(off, 1)), split(pad(m, 1)),
                                                 jnp.asarray(np.pad(base, ((0, chunks * per - p), (0, 0), (0, 0)))
                                                             ).reshape(chunks, per, k, 2)))
        out = jnp.moveaxis(out, 0, 1).reshape(n, chunks * per, cout)[:, :p]
    if bias is not None:
        out = out + bias.astype(dtype)
    return out.reshape(n, ho, wo, cout)


def _dcn_kernel_init(key, shape, dtype=jnp.float32):
    """mmcv ModulatedDeformConv2d.init_weights: U(+-1/sqrt(Cin/groups * kh * kw))."""
    kh, kw, cin_g, _ = shape
    bound = 1.0 / np.sqrt(cin_g * kh * kw)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class ModulatedDeformConv2d(nn.Module):
    """mmcv.ops.ModulatedDeformConv2d with externally given offset and mask: __call__(x, offset, mask)."""

    features: int
    kernel_size: int | tuple = 3
    stride: int | tuple = 1
    padding: int | tuple = 1
    dilation: int | tuple = 1
    groups: int = 1
    deform_groups: int = 1
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, offset, mask):
        kh, kw = _pair(self.kernel_size, "kernel_size")
        cin = x.shape[-1]
        if cin % self.groups:
            raise ValueError(f"ModulatedDeformConv2d: {cin} input channels not divisible by groups={self.groups}")
        kernel = self.param("kernel", _dcn_kernel_init, (kh, kw, cin // self.groups, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else None
        return modulated_deform_conv2d(x.astype(self.dtype), offset, mask, kernel, bias, self.stride, self.padding,
                                       self.dilation, self.groups, self.deform_groups)


class SecondOrderDeformableAlignment(nn.Module):
    """BasicVSR++'s flow-guided second-order deformable alignment (E2FGVI `deform_align.{branch}`).

    __call__(x, extra_feat, flow_1, flow_2): x (N, H, W, Cin) the features to align (E2FGVI:
    cat[feat_prop, feat_n2], 256 ch), extra_feat the condition (cat[cond_n1, feat_current, cond_n2],
    3 * features ch), flow_1 / flow_2 (N, H, W, 2) with channel 0 = x displacement.

    conv_offset (conv3x3 -> LReLU(0.1) x3 -> conv3x3 to 3 * K * deform_groups) on
    cat[extra_feat, flow_1, flow_2] gives (o1, o2, m) thirds; offset = max_residue_magnitude *
    tanh(cat[o1, o2]); its first half gets flow_1 and its second half flow_2 added as (dy, dx)
    pairs (the flow's two channels swapped) tiled over all groups and taps; mask = sigmoid(m); then
    the modulated deformable conv (stride 1, dilation 1, groups 1). Offsets are formed in float32.
    Returns the raw DCN output (N, H, W, features).

    Init as the official training code leaves it: conv_offset.{0,2,4} N(0, 0.02), conv_offset.6
    zeros, DCN weight U(+-1/sqrt(Cin * K)), biases 0.
    """

    features: int = 128
    kernel_size: int = 3
    padding: int = 1
    deform_groups: int = 16
    max_residue_magnitude: float = 10.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, extra_feat, flow_1, flow_2):
        k = self.kernel_size * self.kernel_size
        n, h, w, cin = check_video(x, "SecondOrderDeformableAlignment x", ndim=4)
        for name, a in (("extra_feat", extra_feat), ("flow_1", flow_1), ("flow_2", flow_2)):
            if getattr(a, "shape", None) is None or tuple(a.shape[:3]) != (n, h, w):
                raise ValueError(
                    f"SecondOrderDeformableAlignment: {name} must share (N, H, W) = {(n, h, w)} with x; "
                    f"got {getattr(a, 'shape', None)}"
                )
        if flow_1.shape[-1] != 2 or flow_2.shape[-1] != 2:
            raise ValueError("SecondOrderDeformableAlignment: flows must have 2 channels (x, y) in the last axis")
        if cin % self.deform_groups or self.deform_groups % 2:
            raise ValueError(
                f"SecondOrderDeformableAlignment: Cin={cin} must be divisible by deform_groups={self.deform_groups}, "
                "which must be even (half the groups follow flow_1, half flow_2)"
            )
        cond = jnp.concatenate([extra_feat.astype(self.dtype), flow_1.astype(self.dtype), flow_2.astype(self.dtype)],
                               axis=-1)
        act = lambda a: jax.nn.leaky_relu(a, 0.1)  # noqa: E731
        out = act(conv2d(self.features, 3, dtype=self.dtype, name="conv_offset_0")(cond))
        out = act(conv2d(self.features, 3, dtype=self.dtype, name="conv_offset_2")(out))
        out = act(conv2d(self.features, 3, dtype=self.dtype, name="conv_offset_4")(out))
        out = nn.Conv(3 * k * self.deform_groups, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                      kernel_init=nn.initializers.zeros, name="conv_offset_6",
                      conv_general_dilated=conv_general_dilated)(out)
        out = out.astype(jnp.float32)
        o1, o2, m = jnp.split(out, 3, axis=-1)
        offset = self.max_residue_magnitude * jnp.tanh(jnp.concatenate([o1, o2], axis=-1))
        half = offset.shape[-1] // 2
        f1 = jnp.tile(flow_1.astype(jnp.float32)[..., ::-1], (1, 1, 1, half // 2))
        f2 = jnp.tile(flow_2.astype(jnp.float32)[..., ::-1], (1, 1, 1, half // 2))
        offset = jnp.concatenate([offset[..., :half] + f1, offset[..., half:] + f2], axis=-1)
        mask = jax.nn.sigmoid(m)
        kernel = self.param("kernel", _dcn_kernel_init, (self.kernel_size, self.kernel_size, cin, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return modulated_deform_conv2d(x.astype(self.dtype), offset, mask, kernel, bias, 1, self.padding, 1, 1,
                                       self.deform_groups)


def deform_align_from_torch(sd, prefix: str) -> dict:
    """Params of `SecondOrderDeformableAlignment` from keys `{prefix}.weight/.bias` (the DCN,
    (out, in, kh, kw)) and `{prefix}.conv_offset.{0,2,4,6}.weight/.bias`."""
    out = sd.conv(prefix)
    for i in (0, 2, 4, 6):
        out[f"conv_offset_{i}"] = sd.conv(f"{prefix}.conv_offset.{i}")
    return out


def modulated_deform_conv_from_torch(sd, prefix: str, bias: bool = True) -> dict:
    """Params of `ModulatedDeformConv2d` from `{prefix}.weight` (out, in/groups, kh, kw) / `.bias`."""
    return sd.conv(prefix, bias=bias)
