"""grid_sample / flow_warp vs torch.nn.functional.grid_sample, avg_pool2d vs torch, SPyNet: sanity, converter
round trip and parity of its flows with the E2FGVI and VSR-Transformer fixtures."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ecformer_jax import convert, models
from ecformer_jax.convert.state_dict import TorchStateDict
from ecformer_jax.convert.weight_rule import state_dict_from_fixture
from ecformer_jax.layers.flow import SPyNet, flow_warp, grid_sample, spynet_from_torch
from ecformer_jax.layers.resize import avg_pool2d, upsample_bilinear
from tests import parity


def _grid(rng, n, ho, wo, lim=1.4):
    g = rng.uniform(-lim, lim, (n, ho, wo, 2)).astype(np.float32)
    g[0, 0, 0] = (-1.0, 1.0)  # exact corners and edges
    g[0, 0, 1] = (1.0, -1.0)
    g[-1, -1, -1] = (0.0, 0.0)
    return g


def _torch_grid_sample(x, grid, **kw):
    out = F.grid_sample(torch.from_numpy(np.moveaxis(x, -1, 1)), torch.from_numpy(grid), **kw)
    return np.moveaxis(out.numpy(), 1, -1)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [True, False])
def test_grid_sample_matches_torch(mode, padding_mode, align_corners):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 9, 3)).astype(np.float32)
    grid = _grid(rng, 2, 5, 6)
    kw = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    ref = _torch_grid_sample(x, grid, **kw)
    ours = np.asarray(grid_sample(jnp.asarray(x), jnp.asarray(grid), **kw))
    assert ours.shape == (2, 5, 6, 3)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_grid_sample_gradients_match_torch(padding_mode):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 6, 8, 2)).astype(np.float32)
    grid = _grid(rng, 1, 4, 5, lim=1.2)
    cot = rng.standard_normal((1, 4, 5, 2)).astype(np.float32)
    tx = torch.from_numpy(np.moveaxis(x, -1, 1)).requires_grad_()
    tg = torch.from_numpy(grid).requires_grad_()
    out = F.grid_sample(tx, tg, padding_mode=padding_mode, align_corners=True)
    (out * torch.from_numpy(np.moveaxis(cot, -1, 1))).sum().backward()

    def loss(a, g):
        return jnp.sum(grid_sample(a, g, padding_mode=padding_mode, align_corners=True) * cot)

    gx, gg = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(grid))
    np.testing.assert_allclose(np.asarray(gx), np.moveaxis(tx.grad.numpy(), 1, -1), atol=1e-5)
    np.testing.assert_allclose(np.asarray(gg), tg.grad.numpy(), atol=1e-4)
    assert float(jnp.abs(gg).max()) > 1e-2


def _torch_flow_warp(x, flow, padding_mode, align_corners=True):
    """mmediting's flow_warp, transcribed with torch ops (NCHW x, NHW2 flow)."""
    x = torch.from_numpy(np.moveaxis(x, -1, 1))
    flow = torch.from_numpy(flow)
    _, _, h, w = x.shape
    gy, gx = torch.meshgrid(torch.arange(0, h), torch.arange(0, w), indexing="ij")
    grid = torch.stack((gx, gy), 2).type_as(x)
    gf = grid + flow
    gfx = 2.0 * gf[..., 0] / max(w - 1, 1) - 1.0
    gfy = 2.0 * gf[..., 1] / max(h - 1, 1) - 1.0
    out = F.grid_sample(x, torch.stack((gfx, gfy), dim=3), mode="bilinear", padding_mode=padding_mode,
                        align_corners=align_corners)
    return np.moveaxis(out.numpy(), 1, -1)


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("align_corners", [True, False])
def test_flow_warp_matches_mmediting(padding_mode, align_corners):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 8, 11, 4)).astype(np.float32)
    flow = rng.uniform(-4, 4, (2, 8, 11, 2)).astype(np.float32)
    flow[0, :2] = np.round(flow[0, :2])  # integer displacements, some landing outside
    ref = _torch_flow_warp(x, flow, padding_mode, align_corners)
    ours = np.asarray(flow_warp(jnp.asarray(x), jnp.asarray(flow), padding_mode=padding_mode,
                                align_corners=align_corners))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def test_flow_warp_channel_zero_is_horizontal():
    x = np.arange(2 * 4 * 5, dtype=np.float32).reshape(1, 4, 5, 2)
    flow = np.zeros((1, 4, 5, 2), np.float32)
    flow[..., 0] = 1.0  # one pixel to the right
    out = np.asarray(flow_warp(jnp.asarray(x), jnp.asarray(flow)))
    np.testing.assert_allclose(out[:, :, :-1], x[:, :, 1:], atol=1e-6)
    np.testing.assert_allclose(out[:, :, -1], 0.0)  # zeros padding beyond the last column
    border = np.asarray(flow_warp(jnp.asarray(x), jnp.asarray(flow), padding_mode="border"))
    np.testing.assert_allclose(border[:, :, -1], x[:, :, -1], atol=1e-6)


def test_grid_sample_and_flow_warp_reject_bad_shapes():
    x = jnp.zeros((1, 4, 5, 3))
    with pytest.raises(ValueError, match="grid"):
        grid_sample(x, jnp.zeros((1, 4, 5, 3)))
    with pytest.raises(ValueError, match="padding_mode"):
        grid_sample(x, jnp.zeros((1, 4, 5, 2)), padding_mode="wrap")
    with pytest.raises(ValueError, match="flow"):
        flow_warp(x, jnp.zeros((1, 4, 4, 2)))
    with pytest.raises(ValueError, match="channels-last"):
        flow_warp(jnp.zeros((4, 5, 3)), jnp.zeros((4, 5, 2)))


def test_avg_pool2d_matches_torch():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 9, 12, 3)).astype(np.float32)
    for k, s in ((2, 2), (3, 2)):
        ref = F.avg_pool2d(torch.from_numpy(np.moveaxis(x, -1, 1)), k, s, count_include_pad=False)
        ours = np.asarray(avg_pool2d(jnp.asarray(x), k, s))
        np.testing.assert_allclose(ours, np.moveaxis(ref.numpy(), 1, -1), atol=1e-6)


# --- SPyNet ----------------------------------------------------------------------------------------
def _random_spynet_params(seed=0):
    model = models.build("spynet")
    shapes = jax.eval_shape(lambda: models.init(model))["params"]
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))
                                     if len(s.shape) == 4 else 0.1 * rng.standard_normal(s.shape)).astype(np.float32),
                          shapes)
    return model, params


def _to_torch_layout(params, prefix=""):
    p = f"{prefix}." if prefix else ""
    sd = {}
    for level in range(6):
        for j in range(5):
            conv = params[f"basic_module_{level}"][f"conv{j}"]
            sd[f"{p}basic_module.{level}.basic_module.{j}.conv.weight"] = np.transpose(conv["kernel"], (3, 2, 0, 1))
            sd[f"{p}basic_module.{level}.basic_module.{j}.conv.bias"] = conv["bias"]
    return sd


@pytest.mark.slow
def test_spynet_shapes_and_sanity():
    model, params = _random_spynet_params()
    rng = np.random.default_rng(4)
    ref = jnp.asarray(rng.random((2, 36, 50, 3)), jnp.float32)  # not multiples of 32: resized inside
    supp = jnp.asarray(rng.random((2, 36, 50, 3)), jnp.float32)
    run = jax.jit(lambda r, s: model.apply({"params": params}, r, s, mutable=["intermediates"]))
    flow, state = run(ref, supp)
    assert flow.shape == (2, 36, 50, 2) and flow.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(flow)))
    assert float(jnp.abs(flow).mean()) > 1e-3
    assert state["intermediates"]["basic_module.5"][0].shape == (2, 64, 64, 2)
    # the batch elements are independent
    flow_rev, _ = run(ref[::-1], supp[::-1])
    np.testing.assert_allclose(np.asarray(flow_rev), np.asarray(flow[::-1]), atol=1e-5)
    # bfloat16 compute stays close to float32
    model16 = models.build("spynet", dtype=jnp.bfloat16)
    flow16 = jax.jit(lambda r, s: model16.apply({"params": params}, r, s))(ref, supp)
    assert flow16.dtype == jnp.float32
    assert float(jnp.abs(flow16 - flow).max()) < 0.1 * max(1.0, float(jnp.abs(flow).max()))
    with pytest.raises(ValueError, match="same shape"):
        model.apply({"params": params}, ref, supp[:, :32])
    with pytest.raises(ValueError, match="3 channel"):
        model.apply({"params": params}, ref[..., :2], supp[..., :2])


def test_spynet_converter_round_trip():
    _, params = _random_spynet_params(seed=1)
    # the stand-alone model: bare mmediting layout with the mean/std buffers, and a prefixed one
    sd = _to_torch_layout(params)
    sd["mean"] = np.asarray([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
    sd["std"] = np.asarray([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
    for state_dict in ({"state_dict": sd}, _to_torch_layout(params, "spynet")):
        back = convert.from_torch("spynet", state_dict)
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), back["params"], params)
    # inside a bigger model (E2FGVI's update_spynet) via the mapping function
    tsd = TorchStateDict(_to_torch_layout(params, "update_spynet"))
    back = spynet_from_torch(tsd, "update_spynet")
    tsd.check("spynet")
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), back, params)
    bad = dict(sd, std=np.ones((1, 3, 1, 1), np.float32))
    with pytest.raises(ValueError, match="std"):
        convert.from_torch("spynet", bad)
    with pytest.raises(convert.CheckpointError, match="missing"):
        convert.from_torch("spynet", {k: v for k, v in sd.items() if "basic_module.5." not in k})


def _compare(npz, name, full_nchw):
    """Worst ratio of one recorded entry (tests/parity.py's bar and stats)."""
    section, entry = name.split("/", 1)
    ref = npz[name]
    assert full_nchw.shape == tuple(npz[f"{section}_shape/{entry}"])
    cut = full_nchw[:, :32][..., ::4, ::4]
    ratio = float(np.abs(cut - ref).max()) / max(1.0, float(np.abs(ref).max()))
    stats = npz[f"{section}_stats/{entry}"]
    stats_ratio = float(np.abs(parity._stats(full_nchw) - stats).max()) / max(1.0, float(np.abs(stats[3:]).max()))
    return max(ratio, stats_ratio)


@pytest.mark.parametrize("fixture", ["e2fgvi", "e2fgvi_hq"])
def test_spynet_parity_with_e2fgvi_fixture(parity_dir, fixture):
    """E2FGVI's flow completion on the fixture's masked local frames (the official
    InpaintGenerator.forward_bidirect_flow with its caller's [0,1] mapping, 1/4 align_corners=True resize, both
    directions) reproduces the recorded flows and the finest SPyNet residual (intermediate
    update_spynet.basic_module.5)."""
    npz, meta = parity.load(parity_dir, fixture)
    tsd = TorchStateDict(state_dict_from_fixture(npz))
    params = spynet_from_torch(tsd, "update_spynet")
    frames, masks = parity.inputs(npz)
    lt = 3
    local = (frames * (1 - masks))[:, :lt]
    b, _, H, W, _ = local.shape
    h, w = H // 4, W // 4
    x = upsample_bilinear(jnp.asarray((local + 1) / 2).reshape(b * lt, H, W, 3), (h, w), align_corners=True)
    x = x.reshape(b, lt, h, w, 3)
    first, second = x[:, :-1].reshape(-1, h, w, 3), x[:, 1:].reshape(-1, h, w, 3)
    n = first.shape[0]
    run = jax.jit(lambda r, s: SPyNet().apply({"params": params}, r, s, mutable=["intermediates"]))
    flows, state = run(jnp.concatenate([first, second]), jnp.concatenate([second, first]))
    to_b = lambda f: np.moveaxis(np.asarray(f), -1, 1).reshape(b, lt - 1, 2, h, w)  # noqa: E731
    ratios = {
        "output/flows_forward": _compare(npz, "output/flows_forward", to_b(flows[:n])),
        "output/flows_backward": _compare(npz, "output/flows_backward", to_b(flows[n:])),
        "intermediate/update_spynet.basic_module.5": _compare(
            npz, "intermediate/update_spynet.basic_module.5",
            parity.nhwc_to_nchw(state["intermediates"]["basic_module.5"][0][:n])),
    }
    assert max(ratios.values()) <= parity.TOL, ratios


def test_spynet_parity_with_vsr_transformer_fixture(parity_dir):
    """VSR-Transformer's Flow_spynet pairs (edge frames repeated) on its [0,1] LR frames (64x64: the
    multiple-of-32 resizes are identities) reproduce intermediates spynet.flows_forward / _backward."""
    npz, meta = parity.load(parity_dir, "vsr_transformer")
    tsd = TorchStateDict(state_dict_from_fixture(npz))
    params = spynet_from_torch(tsd, "spynet.spynet")
    x = jnp.asarray(npz["input/lr_u8"].astype(np.float32) / 255.0)
    b, t, h, w, _ = x.shape
    prev = jnp.concatenate([x[:, :1], x[:, :-1]], axis=1)
    nxt = jnp.concatenate([x[:, 1:], x[:, -1:]], axis=1)
    refs = jnp.concatenate([x, x]).reshape(-1, h, w, 3)
    supps = jnp.concatenate([prev, nxt]).reshape(-1, h, w, 3)
    flows = np.asarray(jax.jit(lambda r, s: SPyNet().apply({"params": params}, r, s))(refs, supps))
    flows = np.moveaxis(flows, -1, 1).reshape(2, b * t, 2, h, w)
    names = ("flows_forward", "flows_backward")
    ratios = {k: _compare(npz, f"intermediate/spynet.{k}", f) for k, f in zip(names, flows)}
    assert max(ratios.values()) <= parity.TOL, ratios
