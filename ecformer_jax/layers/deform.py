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
never allocated whole. Everything is differentiable w.r.t. x, offset, mask, kernel and bias. GPUs and TPUs
use XLA's autodiff; the CPU target has a custom backward that recomputes each tile's samples instead of saving
them and gets all gradients in one pass over the four corners (E2FGVI's alignment, 60x108, 256 -> 128 channels,
16 deformable groups: forward + backward 0.95 -> 0.50 s, XLA's planned temporaries of E2FGVI's training step
-0.77 GB); it equals autodiff (tests/layers/test_deform.py).
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ecformer_jax.layers.checks import check_video
from ecformer_jax.layers.conv import conv2d, conv_general_dilated
from ecformer_jax.layers.tiling import default_tile, target_platform


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
    g = _Geometry(h, w, ho, wo, kh, kw, (sh, sw), (ph, pw), (dh, dw), dg, groups, cout)
    src = x.reshape(n, h * w * dg, cin // dg)  # row = pixel * dg + deformable group
    kern = kernel.astype(dtype).reshape(k * cin_g, cout) if groups == 1 else \
        kernel.astype(dtype).reshape(k, cin_g, groups, cout // groups)
    # offsets (n, p, k, dg, 2) and masks (n, p, k, dg): tap-major, as the columns are
    off = jnp.swapaxes(offset.astype(ctype).reshape(n, ho * wo, dg, k, 2), 2, 3)
    m = jnp.swapaxes(mask.astype(ctype).reshape(n, ho * wo, dg, k), 2, 3)
    tile = default_tile(tile)
    per = max(1, tile // (k * cin)) if tile else ho * wo  # output pixels per tile
    # the CPU gets the backward that recomputes each tile's samples; GPUs and TPUs XLA's autodiff
    out = (_dcn_tiled if target_platform() == "cpu" else _dcn_forward)(g, per, src, off, m, kern)
    if bias is not None:
        out = out + bias.astype(dtype)
    return out.reshape(n, ho, wo, cout)


class _Geometry(NamedTuple):
    h: int
    w: int
    ho: int
    wo: int
    kh: int
    kw: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    dg: int  # deformable groups
    groups: int
    cout: int

    def positions(self) -> np.ndarray:
        """The undisplaced sampling positions (ho * wo, kh * kw, 2) of every output pixel and tap."""
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        oy, ox = np.meshgrid(np.arange(self.ho) * sh - ph, np.arange(self.wo) * sw - pw, indexing="ij")
        p = self.ho * self.wo
        return np.stack([oy.reshape(p, 1) + np.repeat(np.arange(self.kh) * dh, self.kw)[None],
                         ox.reshape(p, 1) + np.tile(np.arange(self.kw) * dw, self.kh)[None]], -1).astype(np.float32)


def _corners(g: _Geometry, off, pos):
    """The four bilinear corners of a tile's samples (offsets (n, q, k, dg, 2), positions (q, k, 2)):
    [(rows (n, q * k * dg) into the (n, h * w * dg, cg) source, inside-the-image (n, q, k, dg), bilinear
    weight, its derivatives by the fractional offsets (d/d ly, d/d lx))]."""
    n = off.shape[0]
    py, px = pos[None, :, :, None, 0] + off[..., 0], pos[None, :, :, None, 1] + off[..., 1]
    y0f, x0f = jnp.floor(py), jnp.floor(px)
    ly, lx = py - y0f, px - x0f
    hy, hx = 1 - ly, 1 - lx
    y0, x0 = y0f.astype(jnp.int32), x0f.astype(jnp.int32)
    out = []
    for cy, cx, wgt, dwgt in ((0, 0, hy * hx, (-hx, -hy)), (0, 1, hy * lx, (-lx, hy)),
                              (1, 0, ly * hx, (hx, -ly)), (1, 1, ly * lx, (lx, ly))):
        iy, ix = y0 + cy, x0 + cx
        valid = (iy >= 0) & (iy < g.h) & (ix >= 0) & (ix < g.w)
        rows = (jnp.clip(iy, 0, g.h - 1) * g.w + jnp.clip(ix, 0, g.w - 1)) * g.dg + np.arange(g.dg, dtype=np.int32)
        out.append((rows.reshape(n, -1), valid, wgt, dwgt))
    return out


def _samples(g: _Geometry, off, m, pos):
    """All four corners of every sample at once, for the CPU backward: rows into the batch-flattened source
    (n * h * w * dg, cg) and coefficients (bilinear weight x mask, 0 outside the image), (n, p, 4, k, dg) each.
    Computed inside a tile, XLA's CPU fusions recompute them (floors, compares, products) for every one of the
    cg channels they gather and multiply (E2FGVI's alignment, forward + backward on one core: 600 -> 415 ms)."""
    n = off.shape[0]
    first = (np.arange(n, dtype=np.int32) * (g.h * g.w * g.dg)).reshape(n, 1, 1, 1)  # each image's first row
    corners = _corners(g, off, pos)
    rows = jnp.stack([r.reshape(m.shape) + first for r, *_ in corners], axis=2)
    return rows, jnp.stack([jnp.where(valid, wgt * m, 0) for _, valid, wgt, _ in corners], axis=2)


def _gather(src, rows, shape):
    # rows are clipped into range, so the gather may skip its own bounds handling (~20 % faster)
    return jax.vmap(lambda f, i: f.at[i].get(mode="promise_in_bounds"))(src, rows).reshape(shape)


def _tiles(per: int, fn, acc, *arrays):
    """fn over tiles of `per` output pixels, one after another: fn(acc, *tile) -> (acc, outputs), the arrays'
    axis 1 (the last array, the positions: axis 0) the pixels; the last tile padded, the outputs cropped back."""
    p = arrays[-1].shape[0]
    if per >= p:
        return fn(acc, *arrays)
    chunks = -(-p // per)
    pad = lambda a, axis: jnp.pad(a, [(0, chunks * per - p) if i == axis else (0, 0) for i in range(a.ndim)])
    split = lambda a: jnp.moveaxis(a.reshape(a.shape[0], chunks, per, *a.shape[2:]), 1, 0)
    pos = arrays[-1]
    tiled = [split(pad(a, 1)) for a in arrays[:-1]] + [pad(pos, 0).reshape(chunks, per, *pos.shape[1:])]
    acc, outs = jax.lax.scan(lambda c, t: fn(c, *t), acc, tiled)
    crop = lambda o: jnp.moveaxis(o, 0, 1).reshape(o.shape[1], chunks * per, *o.shape[3:])[:, :p]
    return acc, jax.tree.map(crop, outs)


def _dcn_forward(g: _Geometry, per: int, src, off, m, kern):
    """(n, p, cout) from the source rows (n, h * w * dg, cg), offsets (n, p, k, dg, 2), masks (n, p, k, dg)
    and the kernel; differentiable by autodiff (the TPU / GPU path)."""
    n, cg = src.shape[0], src.shape[-1]

    def tile(acc, o, mk, pos):
        q = o.shape[1]
        cols = None  # (n, q, k, dg, cg): the bilinear samples, summed over the four corners
        for rows, valid, wgt, _ in _corners(g, o, pos):
            term = _gather(src, rows, (n, q, g.kh * g.kw, g.dg, cg)) * jnp.where(valid, wgt * mk, 0).astype(
                src.dtype)[..., None]
            cols = term if cols is None else cols + term
        if g.groups == 1:  # channel index within a tap = d * cg + c, the kernel's input channel
            return acc, (cols.reshape(n * q, -1) @ kern).reshape(n, q, g.cout)
        return acc, jnp.einsum("npkgc,kcgo->npgo", cols.reshape(n, q, g.kh * g.kw, g.groups, -1), kern
                               ).reshape(n, q, g.cout)

    return _tiles(per, tile, (), off, m, jnp.asarray(g.positions()))[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _dcn_tiled(g: _Geometry, per: int, src, off, m, kern):
    """`_dcn_forward` whose backward recomputes each tile's samples instead of saving them and gets all the
    gradients of a tile from one pass over its four corners (the CPU path): XLA's autodiff of the tiled
    forward saved every corner's samples and took 3-5x as long (docs/benchmarks.md)."""
    return _dcn_forward(g, per, src, off, m, kern)


def _dcn_tiled_fwd(g, per, src, off, m, kern):
    return _dcn_forward(g, per, src, off, m, kern), (src, off, m, kern)


def _dcn_tiled_bwd(g, per, residuals, dout):
    src, off, m, kern = residuals
    n, cg, ctype = src.shape[0], src.shape[-1], off.dtype
    k = g.kh * g.kw

    def tile(acc, o, mk, rows4, coefs, dy, pos):
        dsrc, dkern = acc
        q = o.shape[1]
        if g.groups == 1:
            dcols = (dy.reshape(n * q, g.cout) @ kern.T).reshape(n, q, k, g.dg, cg)
        else:
            dcols = jnp.einsum("npgo,kcgo->npkgc", dy.reshape(n, q, g.groups, -1), kern).reshape(n, q, k, g.dg, cg)
        cols, dm, dly, dlx = None, 0, 0, 0
        block_sum = jnp.asarray(np.repeat(np.eye(g.dg, dtype=np.float32), cg, axis=0), ctype)  # (dg cg, dg)
        for i, (_, valid, wgt, (dwy, dwx)) in enumerate(_corners(g, o, pos)):
            rows, coef = rows4[:, :, i].reshape(-1), coefs[:, :, i]
            vals = flat.at[rows].get(mode="promise_in_bounds").reshape(n, q, k, g.dg, cg)
            term = vals * coef.astype(src.dtype)[..., None]
            cols = term if cols is None else cols + term
            # d coefficient = the sample . its column gradient, summed per deformable group: as a matmul with a
            # 0/1 block matrix, 2x faster than XLA CPU's reduction over the minor cg axis
            prod = (vals.astype(ctype) * dcols.astype(ctype)).reshape(-1, g.dg * cg)
            dcoef = jnp.where(valid, (prod @ block_sum).reshape(coef.shape), 0)
            dm, dly, dlx = dm + wgt * dcoef, dly + mk * dcoef * dwy, dlx + mk * dcoef * dwx
            upd = (dcols * coef.astype(dcols.dtype)[..., None]).reshape(-1, cg)
            dsrc = dsrc.at[rows].add(upd, mode="promise_in_bounds")
        if g.groups == 1:
            dkern = dkern + jnp.dot(cols.reshape(n * q, -1).T, dy.reshape(n * q, g.cout),
                                    preferred_element_type=ctype)
        else:
            dkern = dkern + jnp.einsum("npkgc,npgo->kcgo", cols.reshape(n, q, k, g.groups, -1),
                                       dy.reshape(n, q, g.groups, -1), preferred_element_type=ctype)
        return (dsrc, dkern), (jnp.stack([dly, dlx], axis=-1), dm)

    flat = src.reshape(-1, cg)  # one row index per sample (no batch index to build for every gather / scatter)
    acc = (jnp.zeros_like(flat), jnp.zeros(kern.shape, ctype))
    pos = jnp.asarray(g.positions())
    (dsrc, dkern), (doff, dm) = _tiles(per, tile, acc, off, m, *_samples(g, off, m, pos), dout, pos)
    return dsrc.reshape(src.shape), doff.astype(off.dtype), dm.astype(m.dtype), dkern.astype(kern.dtype)


_dcn_tiled.defvjp(_dcn_tiled_fwd, _dcn_tiled_bwd)


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
