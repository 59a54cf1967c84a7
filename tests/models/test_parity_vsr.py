"""Parity of VSR-Transformer (whole network, REDS configuration) and of its spatio-temporal convolutional
self-attention alone against the official PyTorch fixtures: every output and intermediate."""
from __future__ import annotations

from functools import partial

import jax
import numpy as np
import pytest

from ecformer_jax import models
from tests import parity

pytestmark = pytest.mark.optimized  # real-size frames through whole models: run-bound

# official module name -> our sown intermediate (where a submodule already has the name)
OURS = {k: f"{k}_out" for k in ("feature_extraction", "reconstruction", "conv_last")}


def _lr(npz):
    return npz["input/lr_u8"].astype(np.float32) / 255.0  # (B, T, 64, 64, 3), channels-last


def _bt_nchw(a):
    """(B, T, H, W, C) or (B*T, H, W, C) -> (B*T, C, H, W) as the fixtures store 5-D activations."""
    a = np.asarray(a)
    if a.ndim == 5:
        a = a.reshape(-1, *a.shape[2:])
    return parity.nhwc_to_nchw(a)


def _run_whole(npz, variables):
    lr = _lr(npz)
    model = models.build("vsr_transformer")
    out, state = jax.jit(partial(model.apply, mutable=["intermediates"]))(variables, lr)
    inter = state["intermediates"]
    res = {"output/frames": np.moveaxis(np.asarray(out), -1, 2)}  # (B, T, 3, 256, 256)
    for name in ("feature_extraction", "spynet.flows_forward", "spynet.flows_backward", "pos_embedding",
                 "reconstruction", "conv_last", "img_upsample"):
        res[f"intermediate/{name}"] = _bt_nchw(inter[OURS.get(name, name)][0])
    for i in range(model.depth):
        layer = inter[f"layer{i}"]
        res[f"intermediate/transformer.layers.{i}.0"] = _bt_nchw(layer["attention_sublayer"][0])
        res[f"intermediate/transformer.layers.{i}.1"] = _bt_nchw(layer["ffn_sublayer"][0])
        for branch in ("backward_resblocks", "forward_resblocks"):
            res[f"intermediate/transformer.layers.{i}.1.fn.fn.{branch}"] = _bt_nchw(layer["ffn"][f"{branch}_out"][0])
    return res


def _run_stcsa(npz, variables):
    lr = _lr(npz)
    c = np.arange(64) % 3
    feat = ((lr[..., c] - np.float32(0.5)) * np.float32(8.0)).astype(np.float32)  # (B, T, 64, 64, 64)
    model = models.build("vsr_transformer_stcsa")
    out, state = jax.jit(partial(model.apply, mutable=["intermediates"]))(variables, feat)
    res = {"output/out": np.moveaxis(np.asarray(out), -1, 2)}  # (B, T, 64, 64, 64)
    for name, v in state["intermediates"].items():
        res[f"intermediate/{name.removesuffix('_out')}"] = _bt_nchw(v[0])
    return res


def _check(parity_dir, name, runner, record_property):
    npz, meta = parity.load(parity_dir, name)
    variables = parity.convert_fixture(npz, name)
    ours = runner(npz, variables)
    recorded = {k for k in npz.files if k.startswith(("output/", "intermediate/"))}
    assert recorded <= set(ours), sorted(recorded - set(ours))
    ratios = parity.compare(npz, meta, ours)
    worst = max(ratios, key=ratios.get)
    record_property("worst_ratio", ratios[worst])
    print(f"\n[parity] {name}: worst ratio {ratios[worst]:.2e} ({worst}) over {len(ratios)} entries")
    return ratios


def test_parity_vsr_transformer(parity_dir, record_property):
    ratios = _check(parity_dir, "vsr_transformer", _run_whole, record_property)
    assert len(ratios) == 16


def test_parity_vsr_transformer_stcsa(parity_dir, record_property):
    ratios = _check(parity_dir, "vsr_transformer_stcsa", _run_stcsa, record_property)
    assert set(ratios) == {"output/out", *(f"intermediate/{k}" for k in ("to_q", "to_k", "to_v", "patch2feat",
                                                                          "conv"))}
