"""Parity of ProPainter's InpaintGenerator against the official PyTorch fixture: the recorded calls
`prop_frames, updated_masks = model.img_propagation(masked_local, (flows_forward, flows_backward), masks[:, :5],
'nearest')` then `frames_out = model(updated_frames, (flows_forward, flows_backward), masks, updated_masks_all,
num_local_frames=5)` (the second from the stored exact encoding of its inputs), every output and every
intermediate; the converter's refusals and strictness; batch > 1 with reference frames equals per-sample runs."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecformer_jax import convert, models
from ecformer_jax.convert.weight_rule import state_dict_from_fixture
from ecformer_jax.models.propainter import INTERMEDIATES, _max_pool, _window_mask
from tests import parity

pytestmark = pytest.mark.optimized  # real-size frames through whole models: run-bound

TOKENS = ("ss", "transformers.transformer.0.attention", "transformers.transformer.0", "transformers.transformer.7")


def fixture_inputs(npz):
    """The recipe, channels-last float32: frames in [-1, 1], masks, flows = numerators / 32, and call (2)'s
    updated frames / masks from their exact encoding."""
    frames, masks = parity.inputs(npz)
    flows = tuple(np.moveaxis(npz[f"input/flows_{d}_q"].astype(np.float32) / np.float32(32), 2, -1)
                  for d in ("forward", "backward"))
    updated = npz["input/updated_frames_u8"].astype(np.float32) / 255.0 * 2 - 1
    updated = np.where(npz["input/updated_zero_u8"][..., None] == 1, np.float32(0), updated).astype(np.float32)
    updated_masks = npz["input/updated_masks_u8"].astype(np.float32)[..., None]
    return frames, masks, flows, updated, updated_masks


@pytest.fixture(scope="module")
def fixture(parity_dir):
    """(npz, meta, the rebuilt official state_dict), built once for the module."""
    npz, meta = parity.load(parity_dir, "propainter")
    return npz, meta, state_dict_from_fixture(npz)


def test_parity(fixture, record_property):
    """Both attention branches are covered: 12 of the fixture's 16 windows are masked, 4 are not."""
    npz, meta, sd = fixture
    assert "model.img_propagation(masked_local, (flows_forward, flows_backward), masks[:, :5], 'nearest')" \
        in meta["call"]
    assert "model(updated_frames, (flows_forward, flows_backward), masks, updated_masks_all, num_local_frames=5)" \
        in meta["call"]
    lt = int(meta["num_local_frames"])
    frames, masks, flows, updated, updated_masks = fixture_inputs(npz)
    variables = convert.from_torch("propainter", sd)
    model = models.build("propainter")

    @partial(jax.jit, static_argnames="lt")
    def run(variables, frames, masks, flows, updated, updated_masks, lt):
        masked_local = frames[:, :lt] * (1 - masks[:, :lt])
        prop, upd = model.apply(variables, masked_local, flows, masks[:, :lt], "nearest", method="img_propagation")
        out, state = model.apply(variables, updated, flows, masks, updated_masks, lt, mutable=["intermediates"])
        return prop, upd, out, state["intermediates"]

    prop, upd, out, inter = run(variables, frames, masks, flows, updated, updated_masks, lt)
    to_torch = lambda a: np.moveaxis(np.asarray(a), -1, 2)  # noqa: E731  (B, T, H, W, C) -> (B, T, C, H, W)
    ours = {"output/prop_frames": to_torch(prop), "output/updated_masks": to_torch(upd),
            "output/frames": to_torch(out)}
    for official, key in INTERMEDIATES.items():
        value = inter[key][0]
        ours[f"intermediate/{official}"] = np.asarray(value) if official in TOKENS else parity.nhwc_to_nchw(value)
    ratios = parity.compare(npz, meta, ours)
    worst = max(ratios, key=ratios.get)
    record_property("worst_ratio", ratios[worst])
    print(f"\n[parity] propainter: worst ratio {ratios[worst]:.2e} ({worst}); "
          + ", ".join(f"{k.split('/', 1)[1]} {v:.1e}" for k, v in ratios.items()))
    # call (1)'s full-resolution results are call (2)'s stored local inputs (the fixture's provenance)
    composited = frames[:, :lt] * (1 - masks[:, :lt]) + np.asarray(prop) * masks[:, :lt]
    np.testing.assert_array_equal(np.asarray(upd), updated_masks[:, :lt])
    np.testing.assert_array_equal(composited, updated[:, :lt])


def test_params_and_converter_refusals(fixture):
    model = models.build("propainter")
    shapes = jax.eval_shape(lambda: models.init(model, "propainter"))
    assert sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes)) == 39_429_667  # spec section 1
    sd = fixture[2]
    assert len(sd) == 216
    with pytest.raises(convert.CheckpointError, match="RAFT optical-flow checkpoint"):
        convert.from_torch("propainter", {"module.fnet.conv1.weight": np.zeros((64, 3, 7, 7))})
    flow_completion = {"downsample.0.weight": np.zeros((32, 3, 1, 5, 5)),
                       "feat_prop_module.deform_align.backward_.conv_offset.0.weight": np.zeros((128, 384, 3, 3))}
    with pytest.raises(convert.CheckpointError, match="RecurrentFlowCompleteNet"):
        convert.from_torch("propainter", flow_completion)
    with pytest.raises(convert.CheckpointError, match="not a ProPainter InpaintGenerator"):
        convert.from_torch("propainter", {"conv.weight": np.zeros((2, 2, 3, 3))})
    # the other two converters refuse this checkpoint, naming it
    with pytest.raises(convert.CheckpointError, match="ProPainter InpaintGenerator"):
        convert.from_torch("recurrent_flow_completion", sd)
    with pytest.raises(convert.CheckpointError, match="not a RAFT"):
        convert.from_torch("raft", sd)
    # strict: a missing key, an extra key, a wrong shape, a wrong index table are named
    for edit, match in ((lambda d: d.pop("sc.bias_conv.bias"), "sc.bias_conv.bias"),
                        (lambda d: d.update({"extra.weight": np.zeros(3, np.float32)}), "extra.weight"),
                        (lambda d: d.update({"ss.embedding.bias": np.zeros(256, np.float32)}), "ss.embedding.bias"),
                        (lambda d: d.update({"transformers.transformer.3.attention.valid_ind_rolled":
                                             np.arange(148)}), "valid_ind_rolled")):
        bad = dict(sd)
        edit(bad)
        with pytest.raises(convert.CheckpointError, match=match):
            convert.from_torch("propainter", bad)


def _small_clip(rng, b, t, lt, height, width):
    frames = rng.uniform(-1, 1, (b, t, height, width, 3)).astype(np.float32)
    masks = np.zeros((b, t, height, width, 1), np.float32)
    masks[0, :, 4:20, 8:40] = 1  # sample 0: holes in the top-left window only
    masks[1, :lt, 12:28, 60:100] = 1  # sample 1: holes in both top windows (local frames only)
    flows = tuple(rng.uniform(-3, 3, (b, lt - 1, height, width, 2)).astype(np.float32) for _ in range(2))
    updated_masks = masks * (rng.random(masks.shape) > 0.5)
    return frames * (1 - masks), flows, masks, updated_masks.astype(np.float32)


def _random_variables(model, rng, *example):
    """Variables of the weight rule's kind (kernels N(0, 1 / fan_in), scales 1 + 0.1 N, biases 0.1 N) without
    compiling the init: the deformable offsets are non-zero, so the alignment depends on its condition."""
    def draw(path, shape):
        x = rng.standard_normal(shape.shape)
        if len(shape.shape) >= 2:
            return (x / np.sqrt(np.prod(shape.shape[:-1]))).astype(np.float32)
        return (1 + 0.1 * x if jax.tree_util.keystr(path).endswith("'scale']") else 0.1 * x).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(
        lambda: model.init(jax.random.key(0), *example)))


@pytest.mark.slow
def test_batch_with_references_equals_per_sample():
    """The official forward fails for B > 1 with reference frames; ours runs it, each sample on its own (also the
    window selection: the two samples have their holes in different windows). A small configuration keeps it
    cheap to compile: one block of 64-d tokens (t_dilation 1), 3x3 soft-split patches with stride 2 (9 fold taps
    instead of 49), 48x112 frames (token grid 6x14 -> 2x2 windows of 5x9), 2 local + 2 reference frames."""
    rng = np.random.default_rng(0)
    b, t, lt, height, width = 2, 4, 2, 48, 112
    model = models.build("propainter", hidden=64, heads=2, num_blocks=1, ffn_hidden=72, kernel=3, stride=2, padding=1)
    frames, flows, masks, updated_masks = _small_clip(rng, b, t, lt, height, width)
    variables = _random_variables(model, rng, frames[:1], tuple(f[:1] for f in flows), masks[:1],
                                  updated_masks[:1], lt, "bilinear", 1)
    ds = jnp.asarray(masks[:, :lt, ::4, ::4]).reshape(b * lt, height // 4, width // 4, 1)
    windows = _window_mask(_max_pool(ds, 3, 2, 1).reshape(b, lt, 6, 14), model.window)
    np.testing.assert_array_equal(windows, [[True, False, False, False], [True, True, False, False]])

    @jax.jit
    def run(variables, frames, flows, masks, updated_masks):
        out = model.apply(variables, frames, flows, masks, updated_masks, lt, "bilinear", 1)
        prop = model.apply(variables, frames[:, :lt], flows, masks[:, :lt], method="img_propagation")
        return out, prop

    out, prop = run(variables, frames, flows, masks, updated_masks)
    assert out.shape == (b, lt, height, width, 3) and isinstance(prop, tuple) and prop[1].shape == (b, lt, 48, 112, 1)
    for i in range(b):
        one = run(variables, frames[i:i + 1], tuple(f[i:i + 1] for f in flows), masks[i:i + 1],
                  updated_masks[i:i + 1])
        np.testing.assert_allclose(np.asarray(out[i]), np.asarray(one[0][0]), atol=2e-6)
        for a, c in zip(prop, one[1]):
            np.testing.assert_array_equal(np.asarray(a[i]), np.asarray(c[0]))


def test_input_checks():
    model = models.build("propainter")
    x = jax.ShapeDtypeStruct((1, 3, 16, 16, 3), jnp.float32)
    m = jax.ShapeDtypeStruct((1, 3, 16, 16, 1), jnp.float32)
    f = jax.ShapeDtypeStruct((1, 1, 16, 16, 2), jnp.float32)
    variables = jax.eval_shape(lambda: models.init(model, "propainter"))
    with pytest.raises(ValueError, match=r"\(B, 2, H, W, 2\)"):
        jax.eval_shape(lambda: model.apply(variables, x, (f, f), m, m, 3))
    with pytest.raises(ValueError, match="between 2 and"):
        jax.eval_shape(lambda: model.apply(variables, x, (f, f), m, m, 1))
    with pytest.raises(ValueError, match="pair"):
        jax.eval_shape(lambda: model.apply(variables, x, f, m, method="img_propagation"))
    with pytest.raises(ValueError, match="t_dilation"):
        jax.eval_shape(lambda: model.apply(variables, x, (f, f), m, m, 2, "bilinear", 3))
    with pytest.raises(ValueError, match="multiples of 4"):
        bad = jax.ShapeDtypeStruct((1, 3, 18, 16, 3), jnp.float32)
        jax.eval_shape(lambda: model.apply(variables, bad, (f, f), m, m, 2))


@pytest.mark.slow
def test_dtype_training_and_all_local_shapes():
    """bfloat16 compute keeps float32 outputs; training=True decodes all T frames; num_local_frames=None = all."""
    x = jax.ShapeDtypeStruct((1, 3, 16, 16, 3), jnp.float32)
    m = jax.ShapeDtypeStruct((1, 3, 16, 16, 1), jnp.float32)
    f1, f2 = (jax.ShapeDtypeStruct((1, n, 16, 16, 2), jnp.float32) for n in (1, 2))
    small = dict(hidden=64, heads=2, num_blocks=2, ffn_hidden=72, kernel=3, stride=2, padding=1)  # cheap tracing
    variables = jax.eval_shape(lambda: models.init(models.build("propainter", **small), "propainter"))
    bf16 = models.build("propainter", dtype=jnp.bfloat16, **small)
    training = models.build("propainter", training=True, **small)
    shape = lambda model, flows, lt, **kw: jax.eval_shape(  # noqa: E731
        lambda v, x, f, m: model.apply(v, x, (f, f), m, m, lt, **kw), variables, x, flows, m)
    out = shape(bf16, f1, 2)
    assert (out.shape, out.dtype) == ((1, 2, 16, 16, 3), jnp.float32)
    assert shape(training, f1, 2).shape == (1, 3, 16, 16, 3)
    assert shape(bf16, f2, None).shape == (1, 3, 16, 16, 3)
    prop, upd = jax.eval_shape(lambda v, x, f, m: bf16.apply(v, x, (f, f), m, method="img_propagation"),
                               variables, x, f2, m)
    assert (prop.shape, prop.dtype, upd.shape, upd.dtype) == ((1, 3, 16, 16, 3), jnp.float32, (1, 3, 16, 16, 1),
                                                              jnp.float32)


def _official_attention(p, x, mask_pool, frames, heads, window=(5, 9), pool=(4, 4)):
    """SparseWindowAttention.forward step by step as the official code does it (float64 numpy): pad, window the
    q/k/v, four torch.roll copies at the positions its masks keep, pooled tokens, then a gather of the masked
    and of the unmasked windows (data-dependent indices) per sample."""
    b, t, h, w, c = x.shape
    (wh, ww), ch = window, c // heads
    nh, nw = -(-h // wh), -(-w // ww)
    pad = ((0, 0), (0, 0), (0, nh * wh - h), (0, nw * ww - w))
    x = np.pad(x, pad + ((0, 0),))
    lin = lambda a, name: a @ p[name]["kernel"] + p[name]["bias"]  # noqa: E731
    part = lambda a: a.reshape(b, t, nh, wh, nw, ww, heads, ch).transpose(0, 2, 4, 6, 1, 3, 5, 7).reshape(  # noqa
        b, nh * nw, heads, t, wh * ww, ch)
    q, k, v = lin(x, "query"), lin(x, "key"), lin(x, "value")
    eh, ew = (wh + 1) // 2, (ww + 1) // 2
    keep = np.ones((4, wh, ww))
    keep[0, :-eh, :-ew] = keep[1, :-eh, ew:] = keep[2, eh:, :-ew] = keep[3, eh:, ew:] = 0
    ind = np.flatnonzero(keep.reshape(-1))
    shifts = ((-eh, -ew), (-eh, ew), (eh, -ew), (eh, ew))
    rolled = lambda a: np.concatenate([part(np.roll(a, s, axis=(2, 3))) for s in shifts], axis=4)[:, :, :, :, ind]
    ph, pw = (nh * wh) // pool[0], (nw * ww) // pool[1]
    xs = x[:, :, :ph * pool[0], :pw * pool[1]].reshape(b, t, ph, pool[0], pw, pool[1], c)
    pooled = np.einsum("btipjqc,pqc->btijc", xs, p["pool_layer"]["kernel"][:, :, 0]) + p["pool_layer"]["bias"]
    pooled_part = lambda a: np.broadcast_to(a.reshape(b, 1, t, ph * pw, heads, ch).transpose(0, 1, 4, 2, 3, 5),  # noqa
                                            (b, nh * nw, heads, t, ph * pw, ch))
    win_q = part(q)
    win_k = np.concatenate([part(k), rolled(k), pooled_part(lin(pooled, "key"))], axis=4)
    win_v = np.concatenate([part(v), rolled(v), pooled_part(lin(pooled, "value"))], axis=4)
    m = np.pad(mask_pool, pad).reshape(b, -1, nh, wh, nw, ww).max(axis=(3, 5)).reshape(b, -1, nh * nw).sum(1)

    def softmax_attend(qq, kk, vv):
        s = qq @ np.swapaxes(kk, -1, -2) / np.sqrt(ch)
        e = np.exp(s - s.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True)) @ vv

    out = np.zeros_like(win_q)
    for i in range(b):
        idx = np.flatnonzero(m[i])
        if len(idx):
            keys, values = (a[i, idx][:, :, list(frames)].reshape(len(idx), heads, -1, ch) for a in (win_k, win_v))
            y = softmax_attend(win_q[i, idx].reshape(len(idx), heads, t * wh * ww, ch), keys, values)
            out[i, idx] = y.reshape(len(idx), heads, t, wh * ww, ch)
        idx = np.flatnonzero(m[i] == 0)
        out[i, idx] = softmax_attend(win_q[i, idx], win_k[i, idx, :, :, :wh * ww], win_v[i, idx, :, :, :wh * ww])
    out = out.reshape(b, nh, nw, heads, t, wh, ww, ch).transpose(0, 4, 1, 5, 2, 6, 3, 7)
    return lin(out.reshape(b, t, nh * wh, nw * ww, c)[:, :, :h, :w], "proj")


def test_sparse_attention_on_a_padded_grid_matches_the_official_steps():
    """The fixture's 20x36 token grid is whole windows; here a 7x12 grid (padded to 10x18: padded tokens are keys,
    the pooled grid 2x4 drops a row and two columns), 3 frames, key frames (1,), windows masked per sample."""
    from ecformer_jax.models.propainter import SparseWindowAttention

    rng = np.random.default_rng(3)
    b, t, fh, fw, c, heads = 2, 3, 7, 12, 16, 2
    x = rng.standard_normal((b, t, fh, fw, c))
    mask_pool = np.zeros((b, 2, fh, fw))
    mask_pool[0, 1, 6, 11] = 1  # sample 0: the bottom-right window only
    mask_pool[1, 0, 0, 0] = mask_pool[1, 0, 6, 0] = 1  # sample 1: both left windows
    module = SparseWindowAttention(c, heads, (5, 9), (4, 4))
    variables = _random_variables(module, rng, x.astype(np.float32), np.zeros((b, 4), bool), (1,))
    ours = jax.jit(lambda v, x, m: module.apply(v, x, _window_mask(m, (5, 9)), (1,)))(
        variables, x.astype(np.float32), mask_pool.astype(np.float32))
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables["params"])
    np.testing.assert_allclose(np.asarray(ours), _official_attention(params, x, mask_pool, (1,), heads),
                               rtol=0, atol=2e-5)
