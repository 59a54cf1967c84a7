"""The poolformer / swin / focal video generators: call convention, temporal mixing, sample
independence, sizes, parameter layout, no official checkpoint, bfloat16."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecformer_jax import convert, models

SMALL = dict(hidden=32, ffn_hidden=98, num_blocks=2)
MIXERS = {
    "poolformer": dict(),
    "swin": dict(heads=2, window=(2, 2, 3)),  # T=3 -> padded to 4 frames; 4x8 token grid -> 4x9; shifted block 1
    "focal": dict(heads=2, window=(3, 3), focal_window=(3, 3)),  # 4x8 grid -> padded to 6x9
}
SHAPE = (2, 3, 48, 96, 3)  # tokens per frame: 4 x 8


def rule_params(model, *inputs, seed=0):
    """Random parameters of the model's layout with unit-scale signal (the official N(0, 0.02) init
    makes every branch tiny); built from eval_shape, so no init compile."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), *inputs)
    rng = np.random.default_rng(seed)

    def value(path, s):
        name = jax.tree_util.keystr(path)
        if name.endswith("['scale']"):
            return (1 + 0.1 * rng.standard_normal(s.shape)).astype(np.float32)
        if len(s.shape) >= 2 and "kernel" in name:
            return (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32)
        return (0.1 * rng.standard_normal(s.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(value, shapes)


def _clip(shape=SHAPE, seed=0):
    return jax.random.uniform(jax.random.key(seed), shape, minval=-1, maxval=1)


@pytest.mark.parametrize("name", list(MIXERS))
def test_generator_mixes_frames_keeps_samples_apart(name):
    model = models.build(name, **SMALL, **MIXERS[name])
    x = _clip()
    variables = rule_params(model, x)
    apply = jax.jit(model.apply)
    # sample 1 = sample 0 with only its last frame changed
    a = x.at[1].set(x[0]).at[1, 2].set(_clip((3, 48, 96, 3), seed=1)[0])
    out = apply(variables, a)
    chex.assert_shape(out, SHAPE)
    assert bool(jnp.isfinite(out).all()) and float(jnp.abs(out).max()) <= 1
    # temporal mixing: frame 1 of sample 1 sees the changed frame 2
    assert float(jnp.abs(out[1, 1] - out[0, 1]).max()) > 1e-3
    if name == "swin":  # (2, 2, 3) windows over 2 blocks: frame 0 only ever shares a window with frame 1
        chex.assert_trees_all_close(out[1, 0], out[0, 0], atol=1e-6)
    else:  # clip-wide pooling / focal windows spanning all frames
        assert float(jnp.abs(out[1, 0] - out[0, 0]).max()) > 1e-3
    # samples never mix: changing sample 1 entirely leaves sample 0 as it was
    b = a.at[1].set(_clip((3, 48, 96, 3), seed=2)[0])
    chex.assert_trees_all_close(apply(variables, b)[0], out[0], atol=1e-5)


def test_parameter_layout_follows_fuseformer():
    x = jnp.zeros((1, 2, 48, 96, 3))
    fuse = jax.eval_shape(models.build("fuseformer", num_blocks=2, resize_embeddings=True).init, jax.random.key(0), x)
    for name in MIXERS:
        p = jax.eval_shape(models.build(name, num_blocks=2).init, jax.random.key(0), x)["params"]
        for key in ("encoder", "ss", "pos_emb", "sc", "sc_bias", "decoder"):
            chex.assert_trees_all_equal_shapes(p[key], fuse["params"][key])
        chex.assert_trees_all_equal_shapes(p["block1"]["ffn"], fuse["params"]["block1"]["ffn"])
        assert "mixer" in p["block1"] or name == "poolformer"
    swin = jax.eval_shape(models.build("swin", num_blocks=1).init, jax.random.key(0), x)["params"]["block0"]
    assert swin["mixer"]["attn"]["relative_position_bias_table"].shape == (9 * 9 * 17, 4)
    focal = jax.eval_shape(models.build("focal", num_blocks=1).init, jax.random.key(0), x)["params"]["block0"]
    assert focal["mixer"]["pool"]["fc"]["kernel"].shape == (45, 1)
    pool = jax.eval_shape(models.build("poolformer", num_blocks=1).init, jax.random.key(0), x)["params"]["block0"]
    assert set(pool) == {"norm1", "norm2", "ffn", "layer_scale_1", "layer_scale_2"}


@pytest.mark.parametrize("name", list(MIXERS))
def test_no_official_checkpoint_and_size_checks(name):
    with pytest.raises(convert.CheckpointError, match="no official checkpoint"):
        convert.from_torch(name, {"encoder.layers.0.weight": np.zeros((64, 3, 3, 3), np.float32)})
    model = models.build(name, num_blocks=1)
    with pytest.raises(ValueError, match="multiples of 4"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 2, 50, 96, 3)))
    with pytest.raises(ValueError, match="3 channel"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 2, 3, 48, 96)))
    fixed = models.build(name, num_blocks=1, resize_embeddings=False)
    with pytest.raises(ValueError, match="resize_embeddings=True"):
        jax.eval_shape(fixed.init, jax.random.key(0), jnp.zeros((1, 2, 48, 96, 3)))
    assert models.get(name).kind == "inpainting"


def test_poolformer_options_are_checked():
    x = jnp.zeros((1, 2, 48, 96, 3))
    with pytest.raises(ValueError, match="norm must be one of"):
        jax.eval_shape(models.build("poolformer", num_blocks=1, norm="batch").init, jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"\(kt, kh, kw\)"):
        jax.eval_shape(models.build("poolformer", num_blocks=1, pool_size=(3, 3)).init, jax.random.key(0), x)


@pytest.mark.slow
def test_swin_generator_bfloat16_close_to_float32():
    kw = {**SMALL, **MIXERS["swin"], "num_blocks": 1}
    x = _clip((1, 3, 48, 96, 3))
    variables = rule_params(models.build("swin", **kw), x)
    f32 = jax.jit(models.build("swin", **kw).apply)(variables, x)
    bf16 = jax.jit(models.build("swin", dtype=jnp.bfloat16, **kw).apply)(variables, x)
    assert bf16.dtype == jnp.bfloat16
    assert float(jnp.abs(f32 - bf16.astype(jnp.float32)).max()) < 0.1
