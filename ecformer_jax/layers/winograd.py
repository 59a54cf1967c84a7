"""A 3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3), with its own gradient.

Each 2x2 block of outputs is computed from the 4x4 input tile around it as A^T [(G k G^T) * (B^T d B)] A:
16 matrix products over the tiles (each tile's 16 transformed inputs times the 16 transformed kernels)
instead of the 9 taps over every pixel, 2.25x fewer multiplications. The transforms' coefficients are
0, +-1 and 1/2, so the rounding is that of the direct convolution (float32 against float64: 0.4-2.1x the
direct conv's error at three shapes; the larger F(4x4, 3x3) is 20-40x, too close to the parity tolerance).
The tiles are read by stride phase: padded input row 2t + a is row t (+ 1 for a >= 2) of phase a mod 2, so
every transform is a shifted add of four phase arrays.

The gradient is the same algorithm transposed: the output gradient's transform dM, then per transformed tap
dU = V^T dM (the kernel gradient, G^T dU G) and dV = dM U^T, scattered back to the overlapping input tiles
(each padded input row belongs to two tiles). The transformed input V is recomputed in the backward rather than
kept (4x the input). A dilated kernel runs as the undilated conv of the input's phase images (`dilated`).
Used by layers/conv.py on the CPU (docs/benchmarks.md: forward + backward 1.1-1.7x).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# G of F(2, 3): the kernel transform (4 x 3)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


def _phases(x, axis):
    """x with an even length along axis -> its even and odd rows (each half as long)."""
    shape = x.shape[:axis] + (x.shape[axis] // 2, 2) + x.shape[axis + 1:]
    x = x.reshape(shape)
    return (jax.lax.index_in_dim(x, 0, axis + 1, keepdims=False),
            jax.lax.index_in_dim(x, 1, axis + 1, keepdims=False))


def _interleave(even, odd, axis):
    """The inverse of _phases: rows of even and odd alternating along axis."""
    y = jnp.stack([even, odd], axis=axis + 1)
    return y.reshape(y.shape[:axis] + (-1,) + y.shape[axis + 2:])


def _pad_rows(v, axis, lo, hi):
    config = [(0, 0, 0)] * v.ndim
    config[axis] = (lo, hi, 0)
    return jax.lax.pad(v, jnp.zeros((), v.dtype), config)


def _input_transform_1d(x, axis, tiles):
    """B^T d along axis: x holds 2 * tiles + 2 rows; -> 4 arrays of `tiles` rows (the tiles' d0 - d2,
    d1 + d2, d2 - d1, d1 - d3 with d_a = row 2t + a)."""
    e, o = _phases(x, axis)
    e0, e1 = (jax.lax.slice_in_dim(e, s, s + tiles, axis=axis) for s in (0, 1))
    o0, o1 = (jax.lax.slice_in_dim(o, s, s + tiles, axis=axis) for s in (0, 1))
    return [e0 - e1, o0 + e1, e1 - o0, o0 - o1]


def _input_transform_1d_t(d, axis):
    """The transpose of _input_transform_1d: 4 arrays of `tiles` rows -> 2 * tiles + 2 rows."""
    d0, d1, d2, d3 = d
    e = _pad_rows(d0, axis, 0, 1) + _pad_rows(d1 + d2 - d0, axis, 1, 0)
    o = _pad_rows(d1 - d2 + d3, axis, 0, 1) - _pad_rows(d3, axis, 1, 0)
    return _interleave(e, o, axis)


def _output_transform_1d(m, axis):
    """A^T m along the 4-long list m -> the 2 output rows per tile, interleaved along axis."""
    return _interleave(m[0] + m[1] + m[2], m[1] - m[2] - m[3], axis)


def _output_transform_1d_t(dy, axis):
    """The transpose of _output_transform_1d: (2 * tiles rows) -> the 4 per-tile gradients."""
    y0, y1 = _phases(dy, axis)
    return [y0, y0 + y1, y0 - y1, -y1]


def _transformed_input(xp, th, tw):
    """(n, 2 th + 2, 2 tw + 2, c) padded input -> V (16, n * th * tw, c)."""
    rows = _input_transform_1d(xp, 1, th)
    v = [col for r in rows for col in _input_transform_1d(r, 2, tw)]
    return jnp.stack(v).reshape(16, -1, xp.shape[-1])


def _transformed_kernel(k):
    g = jnp.asarray(_G, k.dtype)
    return jnp.einsum("ia,jb,abcd->ijcd", g, g, k).reshape(16, k.shape[2], k.shape[3])


def _geometry(x_shape, padding):
    (p0, p1), (q0, q1) = padding
    n, h, w, _ = x_shape
    ho, wo = h + p0 + p1 - 2, w + q0 + q1 - 2
    th, tw = -(-ho // 2), -(-wo // 2)
    # pad to whole tiles: the extra rows / columns past the conv's own padding only feed outputs that are cut
    return ho, wo, th, tw, ((0, 0), (p0, 2 * th + 2 - h - p0), (q0, 2 * tw + 2 - w - q0), (0, 0))


def supported(x_shape, k_shape, padding, dilation: int = 1) -> bool:
    """A 3x3 kernel with non-negative padding and at least one output (per phase, when dilated)."""
    (p0, p1), (q0, q1) = padding
    return (tuple(k_shape[:2]) == (3, 3) and min(p0, p1, q0, q1) >= 0
            and x_shape[1] + p0 + p1 > 2 * dilation and x_shape[2] + q0 + q1 > 2 * dilation)


def _forward(x, k, padding, precision):
    n, cout = x.shape[0], k.shape[-1]
    ho, wo, th, tw, pads = _geometry(x.shape, padding)
    v = _transformed_input(jnp.pad(x, pads), th, tw)
    m = jnp.einsum("ptc,pcd->ptd", v, _transformed_kernel(k), precision=precision)
    m = m.reshape(4, 4, n, th, tw, cout)
    rows = [_output_transform_1d([m[i, j] for j in range(4)], 2) for i in range(4)]  # each (n, th, 2 tw, cout)
    return _output_transform_1d(rows, 1)[:, :ho, :wo]


def _direct(x, k, padding, precision):
    return jax.lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv3x3(x, k, padding, precision=None, winograd_forward: bool = True):
    """The stride-1, undilated 3x3 conv of NHWC x with the HWIO kernel k and explicit ((top, bottom), (left,
    right)) padding: lax.conv_general_dilated's result within float32 rounding (see the module docstring).
    The gradient is always Winograd's; the forward only with winograd_forward (else XLA's direct conv)."""
    return (_forward if winograd_forward else _direct)(x, k, padding, precision)


def _conv3x3_fwd(x, k, padding, precision, winograd_forward):
    return conv3x3(x, k, padding, precision, winograd_forward), (x, k)


def _conv3x3_bwd(padding, precision, winograd_forward, residuals, dy):
    x, k = residuals
    n, h, w, cin = x.shape
    cout = k.shape[-1]
    ho, wo, th, tw, pads = _geometry(x.shape, padding)
    dy = jnp.pad(dy, ((0, 0), (0, 2 * th - ho), (0, 2 * tw - wo), (0, 0)))
    dm = [c for r in _output_transform_1d_t(dy, 1) for c in _output_transform_1d_t(r, 2)]
    dm = jnp.stack(dm).reshape(16, -1, cout)
    v = _transformed_input(jnp.pad(x, pads), th, tw)
    acc = jnp.promote_types(x.dtype, jnp.float32)
    du = jnp.einsum("ptc,ptd->pcd", v, dm, precision=precision, preferred_element_type=acc)
    g = jnp.asarray(_G, acc)
    dk = jnp.einsum("ia,jb,ijcd->abcd", g, g, du.reshape(4, 4, cin, cout)).astype(k.dtype)
    dv = jnp.einsum("ptd,pcd->ptc", dm, _transformed_kernel(k), precision=precision)
    dv = dv.reshape(4, 4, n, th, tw, cin)
    rows = [_input_transform_1d_t([dv[i, j] for j in range(4)], 2) for i in range(4)]
    dxp = _input_transform_1d_t(rows, 1)
    (p0, _), (q0, _) = padding
    return dxp[:, p0:p0 + h, q0:q0 + w], dk


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def dilated(x, k, padding, dilation: int, precision=None, winograd_forward: bool = True):
    """conv3x3 with the kernel dilated by `dilation` (STTN's feed-forward conv): output row d * m + p reads only
    the padded input's rows of phase p (d * (m + i) + p for tap i), so each of the d x d phase images, taken as a
    batch, is an undilated 3x3 conv without padding, and its outputs are the output's phase (p, q)."""
    d = dilation
    (p0, p1), (q0, q1) = padding
    n, h, w, cin = x.shape
    ho, wo = h + p0 + p1 - 2 * d, w + q0 + q1 - 2 * d
    hd, wd = -(-(h + p0 + p1) // d), -(-(w + q0 + q1) // d)  # phase image size (the padding rounded up to d)
    xp = jnp.pad(x, ((0, 0), (p0, hd * d - h - p0), (q0, wd * d - w - q0), (0, 0)))
    xs = xp.reshape(n, hd, d, wd, d, cin).transpose(2, 4, 0, 1, 3, 5).reshape(d * d * n, hd, wd, cin)
    y = conv3x3(xs, k, ((0, 0), (0, 0)), precision, winograd_forward)  # (d d n, hd - 2, wd - 2, cout)
    y = y.reshape(d, d, n, hd - 2, wd - 2, -1).transpose(2, 3, 0, 4, 1, 5)
    return y.reshape(n, (hd - 2) * d, (wd - 2) * d, -1)[:, :ho, :wo]
