import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import ecformer_jax.layers.conv as conv_module
from ecformer_jax.layers import winograd
from ecformer_jax.layers.attention import MultiHeadAttention, attend, dot_product_attention, merge_heads, split_heads
from ecformer_jax.layers.conv import (
    PHASE_ROWS_MIN_CIN,
    Deconv,
    conv2d,
    conv3d,
    conv_general_dilated,
    grouped_concat,
    split_group_conv,
)
from ecformer_jax.layers.spectral import SpectralNormConv3d
from ecformer_jax.layers.tiling import on_platform


def test_grouped_concat_matches_torch_view_cat():
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((2, 5, 7, 256)).astype(np.float32)
    a = rng.standard_normal((2, 5, 7, 384)).astype(np.float32)
    t0, ta = (torch.from_numpy(v).permute(0, 3, 1, 2) for v in (x0, a))
    ref = torch.cat([t0.view(2, 2, 128, 5, 7), ta.view(2, 2, 192, 5, 7)], 2).view(2, 640, 5, 7)
    np.testing.assert_array_equal(np.asarray(grouped_concat(x0, a, 2)), ref.permute(0, 2, 3, 1).numpy())


def test_grouped_conv2d_runs_one_conv_per_group_with_torch_semantics():
    """conv2d(groups > 1) computes each group as a dense conv (fast on CPU), same params and result as
    torch's grouped Conv2d."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 9, 11, 12)).astype(np.float32)
    conv = conv2d(8, 3, stride=2, dilation=2, groups=4)
    variables = conv.init(jax.random.key(0), x)
    assert variables["params"]["kernel"].shape == (3, 3, 3, 8)
    tconv = torch.nn.Conv2d(12, 8, 3, stride=2, padding=2, dilation=2, groups=4)
    with torch.no_grad():
        tconv.weight.copy_(torch.from_numpy(np.asarray(variables["params"]["kernel"]).transpose(3, 2, 0, 1)))
        tconv.bias.copy_(torch.from_numpy(np.asarray(variables["params"]["bias"]) + 0.5))
        ref = tconv(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    params = {"params": {**variables["params"], "bias": variables["params"]["bias"] + 0.5}}
    np.testing.assert_allclose(np.asarray(conv.apply(params, x)), ref, rtol=1e-5, atol=1e-5)
    k = rng.standard_normal((3, 3, 3, 8)).astype(np.float32)
    dn = ("NHWC", "HWIO", "NHWC")
    grouped = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dn, feature_group_count=4)
    split = split_group_conv(x, k, (1, 1), "SAME", dimension_numbers=dn, feature_group_count=4)
    np.testing.assert_allclose(np.asarray(split), np.asarray(grouped), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,stride,padding,dilation,channels,chunk_bytes", [
    ((3, 2), (2, 3), ((3, 1), (0, 2)), (1, 1), (6, 5), None),  # odd strides, asymmetric padding
    ((3, 3), (2, 1), ((2, 2), (-1, 2)), (2, 3), (6, 5), None),  # dilation, negative padding
    ((3, 3), (1, 1), ((1, 2), (-1, 2)), (2, 1), (8, 2), None),  # few output channels: the output gradient is shifted
    ((3, 2), (1, 1), ((1, 2), (-1, 2)), (2, 3), (5, 6), None),  # stride 1: a product per kernel row, one chunk
    ((3, 2), (1, 1), ((1, 2), (-1, 2)), (2, 3), (5, 6), 8000),  # the same in 4 chunks of 3 of the 12 output rows
    ((3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), (5, 6), 1),  # one output row per chunk
    ((7, 7), (1, 1), ((3, 3), (3, 3)), (1, 1), (8, 2), None),  # 49 taps at stride 1 (SPyNet's): by kernel row if large
    ((5, 5), (2, 2), ((2, 1), (-1, 2)), (1, 1), (6, 5), None),  # 25 taps: XLA's kernel gradient, input grad by phase
    ((5, 5), (2, 2), ((2, 1), (-1, 2)), (1, 1), (64, 5), None),  # wide input, strided: kernel gradient by phase, row
])
def test_cpu_conv_kernel_gradient_per_tap_matches_autodiff(kernel, stride, padding, dilation, channels, chunk_bytes,
                                                           monkeypatch):
    """On the CPU a plain NHWC conv differentiates its kernel row by row (stride 1, a few output rows at a time
    where the input is large: `chunk_bytes` makes these small inputs "large") or tap by tap and a strided one its
    input phase by phase (layers/conv.py): the same values and gradients as XLA's own, also inside a scan (where
    XLA's kernel gradient is 40x slower) and for bfloat16; the AOT target platform (tpu) keeps XLA's."""
    if chunk_bytes is not None:
        monkeypatch.setattr(conv_module, "CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(5)
    cin, cout = channels
    x = jnp.asarray(rng.standard_normal((2, 3, 13, 17, cin)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((*kernel, cin, cout)), jnp.float32)
    dn = ("NHWC", "HWIO", "NHWC")
    native = lambda a, b: jax.lax.conv_general_dilated(a, b, stride, padding, rhs_dilation=dilation,  # noqa: E731
                                                       dimension_numbers=dn)
    ours = lambda a, b: conv_general_dilated(a, b, stride, padding, rhs_dilation=dilation,  # noqa: E731
                                             dimension_numbers=dn)

    def loss(conv):
        def run(x, k):
            def step(carry, frame):
                y = conv(frame, k)
                return carry + jnp.sum(jnp.sin(y) * y), y
            total, ys = jax.lax.scan(step, 0.0, x)
            return total + jnp.sum(ys[0] ** 2)
        return run

    # more than MAX_TAPS taps: XLA's kernel gradient, strided or (below LARGE_KERNEL_MIN_MACS) at stride 1
    big = jnp.zeros((7, 7, cin, cout))
    assert "dot_general" not in str(jax.make_jaxpr(jax.grad(loss(ours), argnums=1))(x, big))
    if k[..., 0, 0].size > 9 and stride == (1, 1):  # this small 7x7 conv takes the row products from 0 MACs
        monkeypatch.setattr(conv_module, "LARGE_KERNEL_MIN_MACS", 0)

    want = jax.jit(jax.value_and_grad(loss(native), argnums=(0, 1)))(x, k)
    got = jax.jit(jax.value_and_grad(loss(ours), argnums=(0, 1)))(x, k)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    for g, w in zip(got[1], want[1]):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(w))))
    # the CPU program has its own gradient (per-tap products where the kernel is small), not one traced for a TPU
    assert "custom_vjp_call" in str(jax.make_jaxpr(loss(ours))(x, k))
    # the loss's scan over frames, and inside it the kernel gradient's scan over row chunks where chunked
    assert str(jax.make_jaxpr(jax.grad(loss(ours), argnums=1))(x, k)).count("scan[") == 2 + (chunk_bytes is not None)
    by_phase = k[..., 0, 0].size > 9 and stride != (1, 1) and cin >= PHASE_ROWS_MIN_CIN  # 5x5 strided, wide
    assert ("dot_general" in str(jax.make_jaxpr(jax.grad(loss(ours), argnums=1))(x, k))) == (
        k[..., 0, 0].size <= 9 or by_phase or stride == (1, 1))
    with on_platform("tpu"):
        assert "custom_vjp_call" not in str(jax.make_jaxpr(loss(ours))(x, k))
    xb, kb = x[0].astype(jnp.bfloat16), k.astype(jnp.bfloat16)
    gb = jax.grad(lambda b: jnp.sum(ours(xb, b).astype(jnp.float32) ** 2))(kb)
    gw = jax.grad(lambda b: jnp.sum(native(xb, b).astype(jnp.float32) ** 2))(kb)
    assert gb.dtype == jnp.bfloat16
    np.testing.assert_allclose(gb.astype(np.float32), gw.astype(np.float32), rtol=0.05,
                               atol=0.02 * float(jnp.max(jnp.abs(gw.astype(jnp.float32)))))


@pytest.mark.parametrize("platform", ["cpu", "tpu"])
@pytest.mark.parametrize("frames, time_pad, cpu_convs", [(4, 1, 3), (2, 1, 2), (1, 1, 1), (2, 3, 4)])
def test_conv3d_as_2d_convs_matches_the_native_3d_conv(platform, frames, time_pad, cpu_convs):
    """Temporal stride 1: time taps stacked into channels (CPU: one conv per group of output frames that meet the
    same real frames, the taps on the zero time padding left out) or one 2-D conv per tap, summed (TPU/GPU: no
    kt * Cin-channel tensor, which a TPU pads to 128 lanes); both the native Conv3d's numbers, gradients too."""
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.standard_normal((2, frames, 11, 13, 3)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 5, 5, 3, 4)), jnp.float32)
    pad = ((time_pad, time_pad), (2, 2), (2, 2))
    native = lambda a, b: jax.lax.conv_general_dilated(a, b, (1, 2, 2), pad,  # noqa: E731
                                                       dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    with on_platform(platform):
        ours = lambda a, b: conv3d(a, b, (1, 2, 2), pad)  # noqa: E731
        loss = lambda conv: lambda a, b: jnp.sum(jnp.sin(conv(a, b)))  # noqa: E731
        np.testing.assert_allclose(ours(x, k), native(x, k), rtol=1e-5, atol=1e-5)
        for g, w in zip(jax.grad(loss(ours), (0, 1))(x, k), jax.grad(loss(native), (0, 1))(x, k)):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
        jaxpr = str(jax.make_jaxpr(ours)(x, k))
    if frames == 4:  # the two inner output frames of both clips meet all three taps: 9 stacked channels
        assert ("f32[4,11,13,9]" in jaxpr) == (platform == "cpu")
    assert jaxpr.count("conv_general_dilated") == (cpu_convs if platform == "cpu" else 3)


def test_attention_matches_naive_softmax():
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 3, 6, 4)).astype(np.float32) for _ in range(3))
    s = np.einsum("bhqd,bhkd->bhqk", q, k) * 0.5
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(dot_product_attention(q, k, v)), p @ v, rtol=1e-5, atol=1e-6)
    x = rng.standard_normal((2, 6, 8)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(merge_heads(split_heads(x, 4))), x)


def _count_reductions(jaxpr, shape, axes):
    """reduce_sum equations over an operand of `shape` along `axes`, in a jaxpr and the jaxprs inside it."""
    n = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "reduce_sum" and eqn.invars[0].aval.shape == shape and eqn.params["axes"] == axes:
            n += 1
        for p in eqn.params.values():
            inner = getattr(p, "jaxpr", p)
            if hasattr(inner, "eqns"):
                n += _count_reductions(inner, shape, axes)
    return n


@pytest.mark.parametrize("bias_shape, topk", [(None, None), ((1, 1, 9), None), ((2, 7, 9), 4)])
def test_attention_gradients_match_autodiff_of_a_plain_softmax(bias_shape, topk):
    """attend's backward (each query's sum_k p dp taken as dout . out, not a reduction over the logits) gives
    autodiff's gradients of a plain softmax attention, for q, k, v and a learned bias (summed back to its shape)."""
    rng = np.random.default_rng(3)
    q = jnp.asarray(rng.standard_normal((2, 7, 5)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((2, 9, 5)), jnp.float32) for _ in range(2))
    bias = jnp.zeros((1, 1, 1)) if bias_shape is None else jnp.asarray(rng.standard_normal(bias_shape), jnp.float32)

    def plain(q, k, v, bias):
        s = jnp.einsum("bqd,bkd->bqk", q, k) * 0.3 + bias
        if topk:
            s = jnp.where(s >= jax.lax.stop_gradient(jax.lax.top_k(s, topk)[0][..., -1:]), s, -jnp.inf)
        return jax.nn.softmax(s) @ v

    ours = lambda q, k, v, bias: attend(q, k, v, scale=0.3, bias=bias, topk=topk, tile=0)  # noqa: E731
    loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))  # noqa: E731
    grads = jax.grad(loss(ours), (0, 1, 2, 3))(q, k, v, bias)
    chex.assert_trees_all_close(grads, jax.grad(loss(plain), (0, 1, 2, 3))(q, k, v, bias), atol=1e-5, rtol=1e-5)
    assert grads[3].shape == bias.shape
    # the forward's softmax sums over the keys once; the backward adds no second sum over the logits
    jaxpr = jax.make_jaxpr(jax.grad(loss(ours), (0, 1, 2)))(q, k, v, bias).jaxpr
    assert _count_reductions(jaxpr, (2, 7, 9), (2,)) == 1
    assert _count_reductions(jax.make_jaxpr(jax.grad(loss(plain), (0, 1, 2)))(q, k, v, bias).jaxpr, (2, 7, 9), (2,)) > 1
    # values longer than the rows of keys (STTN's patches): autodiff's form, whose sum_k p dp matches its dp
    v_long = jnp.asarray(rng.standard_normal((2, 9, 12)), jnp.float32)
    assert _count_reductions(jax.make_jaxpr(jax.grad(loss(ours), (0, 1, 2)))(q, k, v_long, bias).jaxpr,
                             (2, 7, 9), (2,)) > 1


def test_attention_is_per_sample():
    m = MultiHeadAttention(16, 2)
    x = jax.random.normal(jax.random.key(0), (2, 10, 16))
    params = m.init(jax.random.key(1), x)
    both = m.apply(params, x)
    alone = m.apply(params, x[:1])
    chex.assert_trees_all_close(both[:1], alone, atol=1e-6)


def test_deconv_is_upsample_then_conv():
    x = jax.random.normal(jax.random.key(0), (1, 4, 6, 3))
    m = Deconv(5)
    params = m.init(jax.random.key(1), x)
    assert m.apply(params, x).shape == (1, 8, 12, 5)


def test_spectral_norm_power_iteration_matches_torch():
    torch.manual_seed(0)
    conv = torch.nn.utils.spectral_norm(torch.nn.Conv3d(3, 8, (3, 5, 5), (1, 2, 2), (1, 2, 2), bias=False))
    u0, v0 = conv.weight_u.clone(), conv.weight_v.clone()
    x = torch.randn(1, 3, 4, 16, 16)
    conv.train()
    ref = conv(x)  # one power iteration, u/v updated in place
    m = SpectralNormConv3d(8)
    xj = x.permute(0, 2, 3, 4, 1).numpy()
    variables = {
        "params": {"kernel": conv.weight_orig.detach().permute(2, 3, 4, 1, 0).numpy()},
        "spectral": {"u": u0.numpy(), "v": v0.numpy()},
    }
    out, upd = m.apply(variables, xj, update_stats=True, mutable=["spectral"])
    np.testing.assert_allclose(np.asarray(out), ref.detach().permute(0, 2, 3, 4, 1).numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(upd["spectral"]["u"]), conv.weight_u.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(upd["spectral"]["v"]), conv.weight_v.numpy(), atol=1e-6)
    # eval mode uses the stored vectors and changes nothing
    conv.eval()
    variables["spectral"] = {"u": conv.weight_u.numpy(), "v": conv.weight_v.numpy()}
    np.testing.assert_allclose(np.asarray(m.apply(variables, xj)), conv(x).detach().permute(0, 2, 3, 4, 1).numpy(),
                               atol=1e-5)
    # no gradient flows into u, v
    g = jax.grad(lambda v: jnp.sum(m.apply(v, xj)))(variables)
    assert float(jnp.abs(g["spectral"]["u"]).max()) == 0.0


@pytest.mark.parametrize("tile,bias_rows", [(40 * 30, 1), (2 * 40 * 30, 40), (700, 40), (256, 1)])
def test_tiled_attention_is_the_untiled_attention(tile, bias_rows):
    """Tiles over heads/windows (tile >= one head's logits) or over query blocks (smaller, with padding of the
    last block) give the untiled result and gradients, with a per-query or per-key bias and top-k."""
    rng = np.random.default_rng(7)
    q = rng.standard_normal((2, 3, 4, 40, 8)).astype(np.float32)
    k, v = (rng.standard_normal((2, 3, 4, 30, 8)).astype(np.float32) for _ in range(2))
    bias = rng.standard_normal((3, 1, bias_rows, 30)).astype(np.float32)
    for topk in (None, 7):
        run = lambda q_, k_, v_, t, topk=topk: attend(q_, k_, v_, scale=0.3, bias=bias, topk=topk, tile=t)
        jitted = jax.jit(run, static_argnums=3)  # one compile per tile, not one per operation
        want = jitted(q, k, v, 0)
        chex.assert_trees_all_close(jitted(q, k, v, tile), want, atol=1e-6, rtol=1e-6)
        grads = jax.jit(jax.grad(lambda *a, f=jitted: jnp.sum(f(*a) ** 2), argnums=(0, 1, 2)), static_argnums=3)
        chex.assert_trees_all_close(grads(q, k, v, tile), grads(q, k, v, 0), atol=1e-5, rtol=1e-5)


def test_attend_rejects_mismatched_shapes():
    q = np.zeros((2, 5, 8), np.float32)
    with pytest.raises(ValueError, match="do not line up"):
        attend(q, np.zeros((2, 6, 4), np.float32), np.zeros((2, 6, 4), np.float32))


@pytest.mark.parametrize("shape, padding, forward, dilation", [
    ((2, 6, 8, 3, 5), ((1, 1), (1, 1)), True, 1),  # whole 2x2 output tiles
    ((1, 7, 5, 4, 2), ((1, 1), (1, 1)), True, 1),  # odd output sizes: the last tiles' extra outputs are cut
    ((1, 9, 10, 3, 4), ((0, 0), (2, 1)), False, 1),  # no / asymmetric padding; XLA's forward, Winograd's gradient
    ((2, 9, 13, 3, 5), ((2, 2), (2, 2)), True, 2),  # dilated (STTN's feed-forward conv), odd sizes: by phase
    ((1, 11, 8, 2, 3), ((1, 3), (0, 2)), False, 3),  # dilation 3, asymmetric padding, XLA's forward
])
def test_winograd_conv_matches_the_direct_conv(shape, padding, forward, dilation):
    """F(2x2, 3x3) (layers/winograd.py), also with a dilated kernel: the direct conv's values and both gradients
    (float64, inside a jitted scan), and in float32 no more rounding error against float64 than the direct conv
    has."""
    n, h, w, cin, cout = shape
    rng = np.random.default_rng(7)
    x, k = rng.standard_normal((3, n, h, w, cin)), rng.standard_normal((3, 3, cin, cout))
    direct = lambda a, b: jax.lax.conv_general_dilated(a, b, (1, 1), padding, rhs_dilation=(dilation,) * 2,  # noqa: E731
                                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if dilation == 1:
        ours = lambda a, b: winograd.conv3x3(a, b, padding, None, forward)  # noqa: E731
    else:
        ours = lambda a, b: winograd.dilated(a, b, padding, dilation, None, forward)  # noqa: E731

    def loss(conv):
        def run(x, k):
            total, ys = jax.lax.scan(lambda c, f: (c + jnp.sum(jnp.sin(conv(f, k))), None), 0.0, x)
            return total
        return jax.jit(jax.value_and_grad(run, argnums=(0, 1)))

    with jax.enable_x64(True):
        x, k = jnp.asarray(x), jnp.asarray(k)
        want, got = loss(direct)(x, k), loss(ours)(x, k)
        assert got[0].dtype == jnp.float64
        np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
        for g, r in zip(got[1], want[1]):
            np.testing.assert_allclose(g, r, rtol=1e-11, atol=1e-11)
        x64 = jnp.asarray(rng.standard_normal((2, 16, 20, 64)))
        k64 = jnp.asarray(rng.standard_normal((3, 3, 64, 48)) / 24)
        exact = direct(x64, k64)
    x32, k32 = x64.astype(jnp.float32), k64.astype(jnp.float32)
    err = lambda y: float(jnp.max(jnp.abs(y.astype(jnp.float64) - exact)))  # noqa: E731
    assert err(ours(x32, k32)) <= 2 * err(direct(x32, k32)) + 1e-7


def test_cpu_convs_take_winograd_by_channels(monkeypatch):
    """conv_general_dilated sends a stride-1 3x3 float conv to Winograd on the CPU from WINOGRAD_GRAD_MIN input x
    output channels (its forward from WINOGRAD_FORWARD_MIN) and WINOGRAD_MIN_MACS multiply-adds, dilated alike in
    both directions too, not strided, 5x5, bfloat16 or TPU ones."""
    calls = []
    real = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda *a: calls.append(a[-1]) or real(*a))
    monkeypatch.setattr(conv_module, "WINOGRAD_GRAD_MIN", 4 * 6)
    monkeypatch.setattr(conv_module, "WINOGRAD_FORWARD_MIN", 6 * 6)
    monkeypatch.setattr(conv_module, "WINOGRAD_MIN_MACS", 8 * 8 * 9 * 4 * 6)
    pad = ((1, 1), (1, 1))

    def run(cin, cout, kernel=3, stride=1, dilation=(1, 1), dtype=jnp.float32):
        x, k = jnp.ones((1, 8, 8, cin), dtype), jnp.ones((kernel, kernel, cin, cout), dtype)
        jax.eval_shape(lambda a, b: conv_general_dilated(a, b, (stride, stride), pad, rhs_dilation=dilation,
                                                         dimension_numbers=("NHWC", "HWIO", "NHWC")), x, k)
        return calls.pop() if calls else None

    assert run(6, 6) is True and run(4, 6) is False and run(3, 6) is None
    assert run(6, 6, dilation=(2, 2)) is True and run(6, 6, dilation=(1, 2)) is None
    assert run(6, 6, dilation=(4, 4)) is True  # 10 padded rows: 2 outputs, one in each of 2 phases
    assert run(6, 6, dilation=(5, 5)) is None  # no output at all: XLA's conv
    assert run(6, 6, stride=2) is None and run(6, 6, kernel=5) is None
    assert run(6, 6, dtype=jnp.bfloat16) is None
    monkeypatch.setattr(conv_module, "WINOGRAD_MIN_MACS", 8 * 8 * 9 * 6 * 6 + 1)
    assert run(6, 6) is None
    with on_platform("tpu"):
        assert run(6, 6) is None
