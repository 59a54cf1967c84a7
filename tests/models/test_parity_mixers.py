"""Parity of the token-mixer backbones (PoolFormer-S12, Swin-T, Focal-T) and of their blocks alone
against the official PyTorch fixtures (every output and recorded intermediate, bar 1e-4), plus the
checks the converters make on the official derivable buffers."""
from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from ecformer_jax import convert, models
from ecformer_jax.convert.weight_rule import state_dict_from_fixture
from tests import parity

pytestmark = pytest.mark.optimized  # real-size frames through whole models: run-bound


def _nchw(a):
    return np.moveaxis(np.asarray(a), -1, 1)


def _tokens(a):  # (B, H, W, C) -> (B, H*W, C), row-major like the official token order
    a = np.asarray(a)
    return a.reshape(a.shape[0], -1, a.shape[-1])


def _windows(a):  # (B, nW, N, C) -> (B*nW, N, C), batch-major like the official window order
    a = np.asarray(a)
    return a.reshape(-1, *a.shape[2:])


def _run(name, variables, x):
    model = models.build(name)
    return jax.jit(functools.partial(model.apply, mutable=["intermediates"]))(variables, x)


def run_poolformer_block(npz, variables):
    y, st = _run("poolformer_block", variables, np.moveaxis(npz["input/x"], 1, -1))
    inter = st["intermediates"]
    res = {"output/y": _nchw(y)}
    for k in ("norm1", "token_mixer", "mlp"):
        res[f"intermediate/{k}"] = _nchw(inter[f"{k}_out"][0])
    return res


def run_swin_block(npz, variables):
    x = npz["input/x"]
    y, st = _run("swin_block", variables, x.reshape(x.shape[0], 14, 14, -1))
    inter = st["intermediates"]
    res = {"output/y": _tokens(y), "intermediate/blocks.0.norm1": _tokens(inter["blocks_0"]["norm1_out"][0])}
    for j in (0, 1):
        res[f"intermediate/blocks.{j}.attn"] = _windows(inter[f"blocks_{j}"]["attn"]["windows"][0])
        res[f"intermediate/blocks.{j}"] = _tokens(inter[f"blocks.{j}"][0])
    return res


def run_focal_block(npz, variables):
    x = npz["input/x"]
    y, st = _run("focal_block", variables, x.reshape(x.shape[0], 20, 26, -1))
    inter = st["intermediates"]
    return {"output/y": _tokens(y),
            "intermediate/norm1": _tokens(inter["norm1_out"][0]),
            "intermediate/pool_layers.0": np.asarray(inter["pool_layers.0"][0]),
            "intermediate/attn": _windows(inter["attn_out"][0]),
            "intermediate/mlp": _tokens(inter["mlp_out"][0])}


def run_poolformer_s12(npz, variables):
    logits, st = _run("poolformer_s12", variables, np.moveaxis(npz["input/x"], 1, -1))
    inter = st["intermediates"]
    res = {"output/logits": np.asarray(logits), "output/features": _nchw(inter["features"][0]),
           "intermediate/patch_embed": _nchw(inter["patch_embed_out"][0])}
    for k in ("network.0", "network.2", "network.4"):
        res[f"intermediate/{k}"] = _nchw(inter[k][0])
    return res


def _run_transformer(name, block):
    def run(npz, variables):
        logits, st = _run(name, variables, np.moveaxis(npz["input/x"], 1, -1))
        inter = st["intermediates"]
        return {"output/logits": np.asarray(logits), "output/features": _tokens(inter["features"][0]),
                f"intermediate/layers.0.blocks.{block}": _nchw(inter["layers_0"][f"blocks.{block}"][0]),
                "intermediate/layers.0": _nchw(inter["layers.0"][0]),
                "intermediate/layers.2": _nchw(inter["layers.2"][0])}

    return run


RUNNERS = {
    "poolformer_block": run_poolformer_block,
    "swin_block": run_swin_block,
    "focal_block": run_focal_block,
    "poolformer_s12": run_poolformer_s12,
    "swin_tiny": _run_transformer("swin_tiny", 1),
    "focal_tiny": _run_transformer("focal_tiny", 0),
}


@pytest.mark.parametrize("name", list(RUNNERS))
def test_parity(name, parity_dir, record_property):
    npz, meta = parity.load(parity_dir, name)
    variables = parity.convert_fixture(npz, name)
    ratios = parity.compare(npz, meta, RUNNERS[name](npz, variables))
    worst = max(ratios, key=ratios.get)
    record_property("worst_ratio", ratios[worst])
    print(f"\n[parity] {name}: worst ratio {ratios[worst]:.2e} ({worst})")


@pytest.mark.parametrize("name,key", [
    ("swin_block", "blocks.1.attn_mask"),
    ("swin_block", "blocks.0.attn.relative_position_index"),
    ("focal_block", "attn.valid_ind_rolled"),
    ("focal_block", "attn.relative_position_index_0"),
])
def test_converter_checks_derivable_buffers(name, key, parity_dir):
    """The official buffers are consumed (strict conversion) and must equal what the model derives."""
    npz, _ = parity.load(parity_dir, name)
    sd = state_dict_from_fixture(npz)
    convert.from_torch(name, dict(sd))  # untouched: fine
    bad = dict(sd)
    bad[key] = np.roll(np.asarray(sd[key]), 1)
    with pytest.raises(convert.CheckpointError, match=key.replace(".", r"\.")):
        convert.from_torch(name, bad)
    unknown = dict(sd)
    unknown[key.replace("attn", "attx", 1) if "attn." in key else key + "_x"] = sd[key]
    with pytest.raises(convert.CheckpointError, match="unexpected keys"):
        convert.from_torch(name, unknown)


def test_focal_tiny_state_dict_shapes_follow_the_clamp(parity_dir):
    """Stage 4 (7x7 grid) loses the neighbour table and its pooled table has 49 entries (fw 1)."""
    npz, _ = parity.load(parity_dir, "focal_tiny")
    variables = parity.convert_fixture(npz, "focal_tiny")
    attn3 = variables["params"]["layers_3"]["blocks_0"]["attn"]
    assert "relative_position_bias_table_to_neighbors" not in attn3
    assert attn3["relative_position_bias_table_to_windows_0"].shape == (24, 49)
    attn0 = variables["params"]["layers_0"]["blocks_0"]["attn"]
    assert attn0["relative_position_bias_table_to_neighbors"].shape == (1, 3, 49, 132)


def test_swin_refuses_other_image_sizes():
    model = models.build("swin_tiny")
    with pytest.raises(ValueError, match=r"built for 224x224 images.*got 112x112"):
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 112, 112, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\).*channels-last"):
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 3, 224, 224), np.float32))


@pytest.mark.parametrize("name,hw", [("poolformer_block", (16, 16)), ("swin_block", (14, 14)),
                                     ("focal_block", (20, 26))])
def test_blocks_in_bfloat16_close_to_float32(name, hw, parity_dir):
    npz, _ = parity.load(parity_dir, name)
    variables = parity.convert_fixture(npz, name)
    x = npz["input/x"]
    x = np.moveaxis(x, 1, -1) if x.ndim == 4 else x.reshape(x.shape[0], *hw, -1)
    f32 = jax.jit(models.build(name).apply)(variables, x)
    bf16 = jax.jit(models.build(name, dtype=jax.numpy.bfloat16).apply)(variables, x)
    assert bf16.dtype == jax.numpy.bfloat16
    scale = float(np.abs(np.asarray(f32)).max())
    assert float(np.abs(np.asarray(f32) - np.asarray(bf16, np.float32)).max()) < 0.05 * scale


def test_focal_block_without_pooled_level():
    """focal_level=1: window tokens and the neighbour ring only (no pool layer, no window table)."""
    block = models.build("focal_block", focal_level=1)
    x = jax.random.normal(jax.random.key(0), (1, 20, 26, 96))
    variables = jax.jit(block.init)(jax.random.key(1), x)
    assert "pool_layers_0" not in variables["params"]
    assert set(variables["params"]["attn"]) == {"qkv", "proj", "relative_position_bias_table",
                                                "relative_position_bias_table_to_neighbors"}
    y = jax.jit(block.apply)(variables, x)
    assert y.shape == x.shape and bool(jax.numpy.isfinite(y).all())
    with pytest.raises(ValueError, match="focal_level 1 or 2"):
        jax.eval_shape(models.build("focal_block", focal_level=3).init, jax.random.key(0), x)
