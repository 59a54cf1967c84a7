"""ECFormer: any resolution / clip length with one parameter set, kNN attention in the model, channel
attention, binarized ECFormer and STTN (same parameters as float, trainable), bfloat16, registration."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecformer_jax import convert, models
from ecformer_jax.models import ecformer as E
from tests.models.test_mixers import rule_params

SMALL = dict(hidden=32, heads=2, ffn_hidden=98, num_blocks=1, topk=16, se_reduction=4)


def _clip(shape, seed=0):
    return jax.random.uniform(jax.random.key(seed), shape, minval=-1, maxval=1)


@pytest.mark.slow
def test_one_parameter_set_runs_any_size_and_clip_length():
    model = models.build("ecformer", **SMALL)
    shapes = [(1, 2, 48, 96, 3), (1, 3, 64, 80, 3)]
    trees = [jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(s)) for s in shapes]
    chex.assert_trees_all_equal_shapes(*trees)  # nothing depends on the size (no learned position table)
    assert not any("pos" in jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(trees[0])[0])
    variables = rule_params(model, jnp.zeros(shapes[0]))
    apply = jax.jit(model.apply)
    for s in shapes:
        out = apply(variables, _clip(s))
        chex.assert_shape(out, s)
        assert bool(jnp.isfinite(out).all()) and float(jnp.abs(out).max()) <= 1


def test_refuses_bad_inputs_and_has_no_torch_checkpoint():
    model = models.build("ecformer", **SMALL)
    with pytest.raises(ValueError, match="multiples of 4"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 2, 46, 96, 3)))
    with pytest.raises(ValueError, match="3 channel"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 2, 3, 48, 96)))
    with pytest.raises(convert.CheckpointError, match="no PyTorch checkpoint"):
        convert.from_torch("ecformer", {"ss.embedding.weight": np.zeros((512, 6272), np.float32)})
    assert models.get("ecformer").kind == "inpainting"


def test_multi_headed_attention_topk_all_is_dense_and_small_topk_differs():
    x = _clip((2, 40, 16), seed=3)
    dense = E.MultiHeadedAttention(16, 2, None)
    variables = rule_params(dense, x)
    full = jax.jit(dense.apply)(variables, x)
    chex.assert_trees_all_equal(jax.jit(E.MultiHeadedAttention(16, 2, 40).apply)(variables, x), full)
    chex.assert_trees_all_equal(jax.jit(E.MultiHeadedAttention(16, 2, 400).apply)(variables, x), full)
    sparse = jax.jit(E.MultiHeadedAttention(16, 2, 3).apply)(variables, x)
    assert float(jnp.abs(sparse - full).max()) > 1e-3


def test_channel_attention_is_a_per_frame_sigmoid_gate():
    x = _clip((2, 3 * 5, 8), seed=4)
    ca = E.ChannelAttention(8, 4)
    variables = ca.init(jax.random.key(0), x, 3)
    assert variables["params"]["fc1"]["kernel"].shape == (8, 2)
    zero = jax.tree.map(jnp.zeros_like, variables)
    chex.assert_trees_all_close(ca.apply(zero, x, 3), x / 2, atol=1e-6)  # gate sigmoid(0) = 1/2
    y = np.asarray(ca.apply(variables, x, 3)).reshape(2, 3, 5, 8)
    gate = y / np.asarray(x).reshape(2, 3, 5, 8)
    np.testing.assert_allclose(gate, np.broadcast_to(gate[:, :, :1], gate.shape), rtol=1e-4)  # one gate per frame
    assert (gate > 0).all() and (gate < 1).all()
    with pytest.raises(ValueError, match="do not split into 4 frames"):
        ca.apply(variables, x, 4)


@pytest.mark.slow
def test_binarized_ecformer_loads_float_weights_and_trains():
    shape = (1, 2, 48, 96, 3)
    float_model = models.build("ecformer", **SMALL)
    bin_model = models.build("ecformer", binarize=True, **SMALL)
    x = _clip(shape)
    chex.assert_trees_all_equal_shapes(jax.eval_shape(float_model.init, jax.random.key(0), x),
                                       jax.eval_shape(bin_model.init, jax.random.key(0), x))
    variables = rule_params(float_model, x)  # a float parameter set, used as is
    target = _clip(shape, seed=5)
    loss = lambda p: jnp.mean(jnp.abs(bin_model.apply(p, x) - target))
    value, grads = jax.jit(jax.value_and_grad(loss))(variables)
    assert np.isfinite(float(value))
    g = grads["params"]
    for path in (("encoder", "conv3", "kernel"), ("block0", "attention", "query", "kernel"),
                 ("decoder", "up0", "conv", "kernel"), ("encoder", "conv0", "kernel")):
        leaf = g
        for k in path:
            leaf = leaf[k]
        assert bool(jnp.isfinite(leaf).all()) and float(jnp.abs(leaf).sum()) > 0, path


@pytest.mark.slow
def test_ecformer_bfloat16_close_to_float32():
    shape = (1, 2, 48, 96, 3)
    x = _clip(shape, seed=6)
    variables = rule_params(models.build("ecformer", **SMALL), x)
    f32 = jax.jit(models.build("ecformer", **SMALL).apply)(variables, x)
    bf16 = jax.jit(models.build("ecformer", dtype=jnp.bfloat16, **SMALL).apply)(variables, x)
    assert bf16.dtype == jnp.bfloat16
    assert float(jnp.abs(f32 - bf16.astype(jnp.float32)).max()) < 0.1


@pytest.mark.slow
def test_binarized_sttn_same_parameters_different_function_and_gradients():
    kw = dict(num_blocks=1, patch_sizes=((4, 4), (2, 2)), channels=32)
    x, m = _clip((1, 2, 32, 32, 3)), jnp.zeros((1, 2, 32, 32, 1))
    float_model, bin_model = models.build("sttn", **kw), models.build("sttn", binarize=True, **kw)
    chex.assert_trees_all_equal_shapes(jax.eval_shape(float_model.init, jax.random.key(0), x, m),
                                       jax.eval_shape(bin_model.init, jax.random.key(0), x, m))
    variables = rule_params(float_model, x, m)
    out_f, out_b = jax.jit(float_model.apply)(variables, x, m), jax.jit(bin_model.apply)(variables, x, m)
    assert float(jnp.abs(out_f - out_b).max()) > 1e-2
    grads = jax.jit(jax.grad(lambda p: jnp.mean(bin_model.apply(p, x, m) ** 2)))(variables)["params"]
    for leaf in (grads["encoder"]["conv1"]["kernel"], grads["block0"]["attention"]["key"]["kernel"],
                 grads["block0"]["attention"]["out"]["kernel"], grads["decoder"]["conv0"]["kernel"]):
        assert bool(jnp.isfinite(leaf).all()) and float(jnp.abs(leaf).sum()) > 0


def test_ecformer_discriminator_is_the_nf32_t_patchgan():
    entry = models.get("ecformer_discriminator")
    assert entry.kind == "discriminator" and entry.defaults == {"nf": 32}
    disc = models.build("ecformer_discriminator")
    shapes = jax.eval_shape(disc.init, jax.random.key(0), jnp.zeros((1, 2, 64, 64, 3)))
    assert shapes["params"]["conv0"]["kernel"].shape == (3, 5, 5, 3, 32)
    assert shapes["params"]["conv5"]["kernel"].shape[-1] == 128
