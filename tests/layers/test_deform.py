"""Modulated deformable convolution vs a slow loop-level reference of mmcv's kernel, PyTorch convs and
finite differences; the second-order alignment's offset plumbing and its converter."""
from __future__ import annotations

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ecformer_jax.convert.state_dict import TorchStateDict
from ecformer_jax.layers.deform import (
    ModulatedDeformConv2d,
    SecondOrderDeformableAlignment,
    deform_align_from_torch,
    modulated_deform_conv2d,
)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


# --- slow reference, NCHW, float64, written from mmcv's modulated_deformable_im2col + grouped addmm -----
def _bilinear_ref(img, y, x):
    h, w = img.shape
    if not (-1 < y < h and -1 < x < w):
        return 0.0
    y_low, x_low = int(np.floor(y)), int(np.floor(x))
    y_high, x_high = y_low + 1, x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx

    def at(r, c):
        return img[r, c] if 0 <= r < h and 0 <= c < w else 0.0

    return (hy * hx * at(y_low, x_low) + hy * lx * at(y_low, x_high) + ly * hx * at(y_high, x_low)
            + ly * lx * at(y_high, x_high))


def mdcn_reference(x, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups):
    """x (N, Cin, H, W), offset (N, dg*2K, Ho, Wo), mask (N, dg*K, Ho, Wo), weight (Cout, Cin/g, kh, kw)."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    n, cin, h, w = x.shape
    cout, cin_g, kh, kw = weight.shape
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    k_taps = kh * kw
    cols = np.zeros((n, cin, k_taps, ho, wo))
    per_group = cin // deform_groups
    for b in range(n):
        for c in range(cin):
            g = c // per_group
            for i in range(kh):
                for j in range(kw):
                    k = i * kw + j
                    for oy in range(ho):
                        for ox in range(wo):
                            dy = offset[b, g * 2 * k_taps + 2 * k, oy, ox]
                            dx = offset[b, g * 2 * k_taps + 2 * k + 1, oy, ox]
                            y = oy * sh - ph + i * dh + dy
                            xx = ox * sw - pw + j * dw + dx
                            cols[b, c, k, oy, ox] = _bilinear_ref(x[b, c], y, xx) * mask[b, g * k_taps + k, oy, ox]
    out = np.zeros((n, cout, ho, wo))
    co_g = cout // groups
    for o in range(cout):
        grp = o // co_g
        for ci in range(cin_g):
            c = grp * cin_g + ci
            for i in range(kh):
                for j in range(kw):
                    out[:, o] += weight[o, ci, i, j] * cols[:, c, i * kw + j]
        if bias is not None:
            out[:, o] += bias[o]
    return out


def _case(rng, n, cin, cout, h, w, k, stride, padding, dilation, groups, dg, scale=3.0, integer_frac=0.15):
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    ho = (h + 2 * ph - dh * (k - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (k - 1) - 1) // sw + 1
    x = rng.standard_normal((n, cin, h, w))
    offset = rng.uniform(-scale, scale, (n, dg * 2 * k * k, ho, wo))
    ints = rng.random(offset.shape) < integer_frac
    offset[ints] = np.round(offset[ints])  # exact integer positions, incl. the -1 / H borders
    mask = rng.random((n, dg * k * k, ho, wo))
    weight = rng.standard_normal((cout, cin // groups, k, k)) / np.sqrt(cin * k * k / groups)
    bias = rng.standard_normal(cout)
    return x, offset, mask, weight, bias


def _ours(x, offset, mask, weight, bias, **kw):
    t = lambda a: jnp.asarray(np.moveaxis(a, 1, -1))  # noqa: E731
    kernel = jnp.asarray(np.transpose(weight, (2, 3, 1, 0)))
    conv = jax.jit(functools.partial(modulated_deform_conv2d, **kw))  # one compile, not one per operation
    out = conv(t(x), t(offset), t(mask), kernel, None if bias is None else jnp.asarray(bias))
    return np.moveaxis(np.asarray(out), -1, 1)


CONFIGS = [
    # n, cin, cout, h, w, k, stride, padding, dilation, groups, deform_groups, bias
    (1, 4, 3, 5, 6, 3, 1, 1, 1, 1, 1, True),
    (2, 4, 4, 6, 5, 3, 2, 0, 1, 2, 2, False),
    (1, 8, 4, 5, 7, 3, (1, 2), (2, 1), 2, 1, 4, True),
    (1, 6, 6, 6, 6, 2, 1, 1, (2, 1), 3, 2, True),
    (1, 4, 2, 4, 5, 1, 1, 0, 1, 1, 2, True),
    (1, 8, 4, 5, 5, 3, 1, 1, 1, 2, 4, True),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=[f"cfg{i}" for i in range(len(CONFIGS))])
def test_mdcn_matches_loop_reference(cfg):
    n, cin, cout, h, w, k, stride, padding, dilation, groups, dg, use_bias = cfg
    rng = np.random.default_rng(zlib.crc32(str(cfg).encode()))
    x, offset, mask, weight, bias = _case(rng, n, cin, cout, h, w, k, stride, padding, dilation, groups, dg)
    bias = bias if use_bias else None
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, deform_groups=dg)
    ref = mdcn_reference(x, offset, mask, weight, bias, stride, padding, dilation, groups, dg)
    with jax.enable_x64(True):
        ours64 = _ours(x, offset, mask, weight, bias, **kw)
    np.testing.assert_allclose(ours64, ref, rtol=0, atol=1e-12)
    ours32 = _ours(*(a.astype(np.float32) for a in (x, offset, mask, weight)),
                   None if bias is None else bias.astype(np.float32), **kw)
    np.testing.assert_allclose(ours32, ref, rtol=0, atol=2e-5 * max(1, np.abs(ref).max()))


def test_mdcn_e2fgvi_configuration():
    """256 -> 128 channels in E2FGVI would be slow in the loop reference: same layout, fewer channels."""
    rng = np.random.default_rng(0)
    x, offset, mask, weight, bias = _case(rng, 1, 32, 8, 6, 7, 3, 1, 1, 1, 1, 16, scale=12.0)
    ref = mdcn_reference(x, offset, mask, weight, bias, 1, 1, 1, 1, 16)
    with jax.enable_x64(True):
        ours = _ours(x, offset, mask, weight, bias, stride=1, padding=1, dilation=1, groups=1, deform_groups=16)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 1, 1, 1), (2, 0, 1, 2), (1, 2, 2, 4)])
def test_zero_offsets_unit_mask_equal_torch_conv(stride, padding, dilation, groups):
    rng = np.random.default_rng(1)
    n, cin, cout, h, w, k = 2, 8, 8, 7, 9, 3
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    weight = rng.standard_normal((cout, cin // groups, k, k)).astype(np.float32) * 0.2
    bias = rng.standard_normal(cout).astype(np.float32)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias), stride, padding, dilation,
                   groups).numpy()
    ho, wo = ref.shape[2:]
    offset = np.zeros((n, 2 * 2 * k * k, ho, wo), np.float32)
    mask = np.ones((n, 2 * k * k, ho, wo), np.float32)
    ours = _ours(x, offset, mask, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups,
                 deform_groups=2)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def test_integer_offset_is_a_shift_and_dy_comes_first():
    """Offset (dy, dx) = (1, -2) on every tap of a 1x1 conv reads x[y + 1, x - 2] (zeros outside)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 2, 6, 7)).astype(np.float32)
    offset = np.zeros((1, 2, 6, 7), np.float32)
    offset[:, 0], offset[:, 1] = 1.0, -2.0
    mask = np.full((1, 1, 6, 7), 0.5, np.float32)
    weight = np.eye(2, dtype=np.float32)[:, :, None, None]
    ours = _ours(x, offset, mask, weight, None, stride=1, padding=0)
    expect = np.zeros_like(x)
    expect[:, :, :-1, 2:] = 0.5 * x[:, :, 1:, :-2]
    np.testing.assert_allclose(ours, expect, atol=1e-6)


def test_gradients_match_finite_differences():
    from jax.test_util import check_grads

    rng = np.random.default_rng(4)
    x, offset, mask, weight, bias = _case(rng, 1, 4, 2, 4, 5, 3, 1, 1, 1, 2, 2, scale=2.0, integer_frac=0.0)
    t = lambda a: np.moveaxis(a, 1, -1)  # noqa: E731
    with jax.enable_x64(True):
        args = (jnp.asarray(t(x)), jnp.asarray(t(offset)), jnp.asarray(t(mask)),
                jnp.asarray(np.transpose(weight, (2, 3, 1, 0))), jnp.asarray(bias))

        @jax.jit
        def f(xx, off, m, kern, b):
            return modulated_deform_conv2d(xx, off, m, kern, b, padding=1, groups=2, deform_groups=2)

        check_grads(f, args, order=1, modes=("rev",), eps=1e-6, atol=1e-5, rtol=1e-5)
        # the offset gradient is not trivially zero (it goes through the bilinear weights)
        g = jax.grad(lambda off: jnp.sum(f(args[0], off, *args[2:]) ** 2))(args[1])
        assert float(jnp.abs(g).max()) > 1e-3


def test_bad_shapes_raise_value_errors():
    x = jnp.zeros((1, 5, 5, 4))
    kernel = jnp.zeros((3, 3, 4, 2))
    off, m = jnp.zeros((1, 5, 5, 18)), jnp.zeros((1, 5, 5, 9))
    with pytest.raises(ValueError, match="offset"):
        modulated_deform_conv2d(x, off[..., :10], m, kernel)
    with pytest.raises(ValueError, match="mask"):
        modulated_deform_conv2d(x, off, m[..., :3], kernel)
    with pytest.raises(ValueError, match="deform_groups"):
        modulated_deform_conv2d(x, off, m, kernel, deform_groups=3)
    with pytest.raises(ValueError, match="groups"):
        modulated_deform_conv2d(x, off, m, jnp.zeros((3, 3, 3, 2)))


def test_module_wrapper_and_bfloat16():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((1, 6, 6, 8)), jnp.float32)
    off = jnp.asarray(rng.uniform(-2, 2, (1, 6, 6, 2 * 2 * 9)), jnp.float32)
    m = jnp.asarray(rng.random((1, 6, 6, 2 * 9)), jnp.float32)
    mod = ModulatedDeformConv2d(4, 3, deform_groups=2)
    v = mod.init(jax.random.key(0), x, off, m)
    assert v["params"]["kernel"].shape == (3, 3, 8, 4)
    bound = 1 / np.sqrt(8 * 9)
    assert float(jnp.abs(v["params"]["kernel"]).max()) <= bound
    out = jax.jit(mod.apply)(v, x, off, m)
    ref = jax.jit(functools.partial(modulated_deform_conv2d, deform_groups=2))(x, off, m, v["params"]["kernel"],
                                                                               v["params"]["bias"])
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-6)
    out16 = jax.jit(ModulatedDeformConv2d(4, 3, deform_groups=2, dtype=jnp.bfloat16).apply)(v, x, off, m)
    assert out16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out16, np.float32), np.asarray(out), atol=0.1)


# --- SecondOrderDeformableAlignment --------------------------------------------------------------------
def _torch_alignment_reference(params, x, extra, flow_1, flow_2, deform_groups, max_mag=10.0):
    """The official forward, with torch convs and the loop reference DCN (NCHW float64)."""
    t = lambda a: torch.from_numpy(np.asarray(a, np.float64))  # noqa: E731
    hwio = lambda a: t(np.transpose(np.asarray(a), (3, 2, 0, 1)))  # noqa: E731
    cond = torch.cat([t(extra), t(flow_1), t(flow_2)], 1)
    for i in (0, 2, 4):
        p = params[f"conv_offset_{i}"]
        cond = F.leaky_relu(F.conv2d(cond, hwio(p["kernel"]), t(p["bias"]), padding=1), 0.1)
    p = params["conv_offset_6"]
    out = F.conv2d(cond, hwio(p["kernel"]), t(p["bias"]), padding=1)
    o1, o2, m = torch.chunk(out, 3, dim=1)
    offset = max_mag * torch.tanh(torch.cat((o1, o2), dim=1))
    off1, off2 = torch.chunk(offset, 2, dim=1)
    off1 = off1 + t(flow_1).flip(1).repeat(1, off1.size(1) // 2, 1, 1)
    off2 = off2 + t(flow_2).flip(1).repeat(1, off2.size(1) // 2, 1, 1)
    offset = torch.cat([off1, off2], 1).numpy()
    mask = torch.sigmoid(m).numpy()
    weight = np.transpose(np.asarray(params["kernel"], np.float64), (3, 2, 0, 1))
    return mdcn_reference(np.asarray(x, np.float64), offset, mask, weight, np.asarray(params["bias"], np.float64),
                          1, 1, 1, 1, deform_groups)


def _random_params(shapes, rng):
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32) * 0.3, shapes)


def test_second_order_alignment_matches_official_forward():
    rng = np.random.default_rng(6)
    c, dg, n, h, w = 4, 4, 1, 7, 8
    x = rng.standard_normal((n, h, w, 2 * c)).astype(np.float32)
    extra = rng.standard_normal((n, h, w, 3 * c)).astype(np.float32)
    flow_1 = rng.uniform(-2, 2, (n, h, w, 2)).astype(np.float32)
    flow_2 = rng.uniform(-2, 2, (n, h, w, 2)).astype(np.float32)
    mod = SecondOrderDeformableAlignment(features=c, deform_groups=dg)
    v = jax.jit(mod.init)(jax.random.key(0), x, extra, flow_1, flow_2)
    p = v["params"]
    assert p["conv_offset_0"]["kernel"].shape == (3, 3, 3 * c + 4, c)
    assert p["conv_offset_6"]["kernel"].shape == (3, 3, c, 27 * dg)
    assert float(jnp.abs(p["conv_offset_6"]["kernel"]).max()) == 0.0  # official init zeroes the last conv
    params = _random_params(p, rng)
    # keep the residual offsets moderate (10 * tanh saturates otherwise and every sample leaves the image)
    params["conv_offset_6"] = jax.tree.map(lambda a: a * 0.05, params["conv_offset_6"])
    out = jax.jit(mod.apply)({"params": params}, x, extra, flow_1, flow_2)
    nchw = lambda a: np.moveaxis(a, -1, 1)  # noqa: E731
    ref = _torch_alignment_reference(params, nchw(x), nchw(extra), nchw(flow_1), nchw(flow_2), dg)
    np.testing.assert_allclose(np.moveaxis(np.asarray(out), -1, 1), ref, rtol=0, atol=1e-4 * max(1, np.abs(ref).max()))
    # swapping the flow's (x, y) order would change the result: the test is sensitive to the flip
    swapped = _torch_alignment_reference(params, nchw(x), nchw(extra), nchw(flow_1[..., ::-1]),
                                         nchw(flow_2[..., ::-1]), dg)
    assert np.abs(swapped - ref).max() > 1e-2
    # and the samples are not all outside the image (the DCN output is not just the bias)
    assert np.abs(ref - np.asarray(params["bias"])[None, :, None, None]).max() > 1e-1


def test_deform_align_from_torch_round_trip():
    rng = np.random.default_rng(7)
    mod = SecondOrderDeformableAlignment(features=4, deform_groups=2)
    x = jnp.zeros((1, 4, 4, 8))
    params = _random_params(mod.init(jax.random.key(0), x, jnp.zeros((1, 4, 4, 12)), jnp.zeros((1, 4, 4, 2)),
                                     jnp.zeros((1, 4, 4, 2)))["params"], rng)
    pre = "feat_prop_module.deform_align.backward_"
    oihw = lambda a: np.transpose(a, (3, 2, 0, 1))  # noqa: E731
    sd = {f"{pre}.weight": oihw(params["kernel"]), f"{pre}.bias": params["bias"]}
    for i in (0, 2, 4, 6):
        sd[f"{pre}.conv_offset.{i}.weight"] = oihw(params[f"conv_offset_{i}"]["kernel"])
        sd[f"{pre}.conv_offset.{i}.bias"] = params[f"conv_offset_{i}"]["bias"]
    assert sd[f"{pre}.weight"].shape == (4, 8, 3, 3) and sd[f"{pre}.conv_offset.6.weight"].shape == (54, 4, 3, 3)
    tsd = TorchStateDict(sd)
    back = deform_align_from_torch(tsd, pre)
    tsd.check("deform_align")
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), back, params)


@pytest.mark.parametrize("groups,deform_groups,stride", [(1, 2, 1), (2, 2, 2)])
def test_tiled_sampling_is_the_untiled_sampling(groups, deform_groups, stride):
    """Blocks of output pixels (the CPU default at real sizes; forced here with tiny tiles, the last block
    padded) give the untiled output and gradients."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 7, 9, 4)).astype(np.float32)
    ho, wo = (7 - 1) // stride + 1, (9 - 1) // stride + 1
    off = (2.5 * rng.standard_normal((2, ho, wo, deform_groups * 18))).astype(np.float32)
    mask = rng.random((2, ho, wo, deform_groups * 9)).astype(np.float32)
    kern = rng.standard_normal((3, 3, 4 // groups, 6)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    run = lambda tile, *a: jax.jit(functools.partial(  # noqa: E731 (one compile, not one per op)
        modulated_deform_conv2d, bias=bias, stride=stride, padding=1, groups=groups, deform_groups=deform_groups,
        tile=tile))(*a)
    want = run(0, x, off, mask, kern)
    for tile in (36 * 11, 36 * 4, 36):  # 11, 4 and 1 pixels per block
        np.testing.assert_allclose(np.asarray(run(tile, x, off, mask, kern)), np.asarray(want), rtol=1e-6, atol=1e-6)
    grads = lambda tile: jax.grad(lambda *a: jnp.sum(run(tile, *a) ** 2), argnums=(0, 1, 2, 3))(x, off, mask, kern)
    for got, ref in zip(grads(36 * 4), grads(0)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups,deform_groups,stride,dilation,tile", [(1, 2, 1, 1, 0), (2, 4, 2, 2, 36 * 8 * 3)])
def test_cpu_backward_equals_autodiff(groups, deform_groups, stride, dilation, tile):
    """The CPU's custom backward (samples recomputed per tile, all gradients from one pass) gives XLA's
    autodiff of the same forward (the path GPUs and TPUs take), for every input, in float32 and bfloat16."""
    from ecformer_jax.layers import tiling

    rng = np.random.default_rng(12)
    ho, wo = (9 - 2 * dilation - 1 + 2) // stride + 1, (11 - 2 * dilation - 1 + 2) // stride + 1
    args = (rng.standard_normal((2, 9, 11, 8)), 3 * rng.standard_normal((2, ho, wo, deform_groups * 18)),
            rng.random((2, ho, wo, deform_groups * 9)), 0.3 * rng.standard_normal((3, 3, 8 // groups, 6)),
            rng.standard_normal(6))
    args = [jnp.asarray(a, jnp.float32) for a in args]
    loss = lambda *a: jnp.sum(jnp.sin(modulated_deform_conv2d(  # noqa: E731
        *a, stride=stride, padding=1, dilation=dilation, groups=groups, deform_groups=deform_groups, tile=tile)))
    for dtype, tol in ((jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)):
        xs = [args[0].astype(dtype), *args[1:]]
        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))
        ours = grad(*xs)
        with tiling.on_platform("tpu"):
            ref = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(*xs)
        for name, a, b in zip(("x", "offset", "mask", "kernel", "bias"), ours, ref):
            assert a.dtype == b.dtype, name
            a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
            assert np.abs(b).max() > 1e-3, name
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max(), err_msg=name)
