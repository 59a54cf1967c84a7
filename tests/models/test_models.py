"""Behaviour of the foundation generators beyond parity: sizes, options, dtypes, batch independence."""
from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecformer_jax import models


def _clip(b, t, h, w, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    frames = jax.random.uniform(k1, (b, t, h, w, 3), minval=-1, maxval=1)
    masks = (jax.random.uniform(k2, (b, t, h, w, 1)) > 0.7).astype(jnp.float32)
    return frames * (1 - masks), masks


SMALL_STTN = dict(num_blocks=2, patch_sizes=((8, 8), (4, 4), (2, 2), (1, 1)), channels=32)


def test_sttn_refuses_sizes_its_patches_do_not_tile():
    x, m = _clip(1, 1, 256, 432)
    with pytest.raises(ValueError, match=r"STTN cannot run on 256x432 frames.*multiple of 240 and W of 432"):
        models.build("sttn").init(jax.random.key(0), x, m)


@pytest.mark.slow
def test_sttn_mask_checks_and_no_effect():
    model = models.build("sttn", **SMALL_STTN)
    x, m = _clip(2, 3, 32, 64)
    variables = jax.jit(model.init)(jax.random.key(0), x, m)
    apply = jax.jit(model.apply)
    with pytest.raises(ValueError, match="masks shape .* does not match the frames"):
        model.apply(variables, x, m[:, :2])
    with pytest.raises(ValueError, match="must have 1 channel"):
        model.apply(variables, x, jnp.repeat(m, 3, -1))
    out = apply(variables, x, m)
    chex.assert_shape(out, x.shape)
    # as in the official code, the masks do not change the result (the attention masking is a no-op)
    chex.assert_trees_all_close(out, apply(variables, x, 1 - m), atol=0)
    # samples never mix: sample 0 alone gives the same frames
    chex.assert_trees_all_close(out[:1], apply(variables, x[:1], m[:1]), atol=1e-5)


def test_channels_first_input_is_refused():
    model = models.build("sttn", **SMALL_STTN)
    with pytest.raises(ValueError, match="must have 3 channel"):
        model.init(jax.random.key(0), jnp.zeros((1, 2, 3, 32, 64)), None)


@pytest.mark.slow
def test_fuseformer_size_rule_and_resize_embeddings():
    small = dict(num_blocks=1)
    x, _ = _clip(1, 2, 120, 216)
    with pytest.raises(ValueError, match=r"made for 240x432 frames.*resize_embeddings=True"):
        models.build("fuseformer", **small).init(jax.random.key(0), x)
    model = models.build("fuseformer", resize_embeddings=True, **small)
    params = jax.jit(model.init)(jax.random.key(0), x)
    # the parameters keep the official shapes and are interpolated at run time
    assert params["params"]["pos_emb"].shape == (20, 36, 512)
    assert params["params"]["sc_bias"].shape == (60, 108, 128)
    out = jax.jit(model.apply)(params, x)
    chex.assert_shape(out, x.shape)
    assert bool(jnp.isfinite(out).all())


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs,size", [("sttn", SMALL_STTN, (32, 64)),
                                               ("fuseformer", dict(num_blocks=1, resize_embeddings=True), (48, 96))])
def test_bfloat16_compute_close_to_float32(name, kwargs, size):
    x, m = _clip(1, 2, *size)
    args = (x, m) if name == "sttn" else (x,)
    f32 = models.build(name, **kwargs)
    variables = jax.jit(f32.init)(jax.random.key(0), *args)
    bf16 = models.build(name, dtype=jnp.bfloat16, **kwargs)
    a, b = jax.jit(f32.apply)(variables, *args), jax.jit(bf16.apply)(variables, *args)
    assert jax.tree.leaves(variables)[0].dtype == jnp.float32
    assert b.dtype == jnp.bfloat16
    assert float(jnp.abs(a - b.astype(jnp.float32)).max()) < 0.1


@pytest.mark.slow
def test_discriminator_shapes_and_train_mode_updates_vectors():
    disc = models.build("fuseformer_discriminator")
    frames = jax.random.uniform(jax.random.key(0), (2, 3, 64, 64, 3), minval=-1, maxval=1)
    variables = disc.init(jax.random.key(1), frames)
    logits = disc.apply(variables, frames)
    chex.assert_shape(logits, (2, 3, 1, 1, 128))  # 64 -> 31 -> 16 -> 8 -> 4 -> 2 -> 1
    _, upd = disc.apply(variables, frames, train=True, mutable=["spectral"])
    assert not np.allclose(upd["spectral"]["conv0"]["u"], variables["spectral"]["conv0"]["u"])


# sttn: blocks take arrays only; ecformer: blocks take a static clip length (static_argnums), like the others
@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs,size", [("sttn", SMALL_STTN, (32, 64)),
                                               ("ecformer", dict(hidden=32, heads=2, ffn_hidden=98, num_blocks=1,
                                                                 topk=16, se_reduction=4), (48, 96))])
def test_remat_keeps_parameters_outputs_and_gradients(name, kwargs, size):
    x, m = _clip(1, 2, *size)
    args = (x, m) if name == "sttn" else (x,)
    plain, remat = models.build(name, **kwargs), models.build(name, remat=True, **kwargs)
    variables = jax.jit(plain.init)(jax.random.key(0), *args)
    remat_vars = jax.eval_shape(remat.init, jax.random.key(0), *args)
    assert jax.tree.structure(remat_vars) == jax.tree.structure(variables)  # same names: checkpoints load

    def grads(model):
        loss = lambda v: jnp.mean(jnp.abs(model.apply(v, *args) - 0.5))  # noqa: E731
        return jax.jit(jax.value_and_grad(loss))(variables)

    (la, ga), (lb, gb) = grads(plain), grads(remat)
    np.testing.assert_allclose(la, lb, rtol=1e-6)
    chex.assert_trees_all_close(ga, gb, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_propainter_remat_wraps_every_transformer_block_the_encoder_and_decoder():
    """ProPainter's blocks take two static arguments (feature size, frame set): with remat=True its gradient
    recomputes each block, the encoder and the decoder (a `checkpoint` (`remat2`) each in the jaxpr, none
    without), the parameters keep their names. Traced only: the recomputation itself is flax's nn.remat, tested
    above on STTN and ECFormer."""
    x, m = _clip(1, 3, 64, 64)
    flows = jnp.zeros((1, 2, 64, 64, 2))
    kwargs = dict(hidden=32, heads=2, ffn_hidden=98, num_blocks=2, training=True)
    args = (x, (flows, flows), m, m, 3)
    plain, remat = models.build("propainter", **kwargs), models.build("propainter", remat=True, **kwargs)
    init = lambda model: jax.eval_shape(lambda key: model.init(key, *args), jax.random.key(0))  # noqa: E731
    variables = init(plain)
    assert jax.tree.structure(init(remat)) == jax.tree.structure(variables)

    def checkpoints(model):
        loss = lambda v: jnp.mean(model.apply(v, *args))  # noqa: E731
        return len(re.findall(r"\b(?:checkpoint|remat2?)\[", str(jax.make_jaxpr(jax.grad(loss))(variables))))

    assert checkpoints(plain) == 0
    assert checkpoints(remat) == 4  # 2 blocks, the encoder and the decoder


def test_vsr_transformer_remat_wraps_every_layer_and_both_residual_stacks():
    """With remat=True the VSR Transformer's gradient recomputes each transformer layer and the residual stacks
    before and after them (a `checkpoint` each in the jaxpr, none without); the parameters keep their names.
    Traced only, like ProPainter's above."""
    kwargs = dict(depth=2, channels=8, feat_size=64, num_extract_blocks=1, num_reconstruct_blocks=1,
                  num_ffn_blocks=1)
    lr = jnp.zeros((1, 3, 64, 64, 3))
    plain, remat = models.build("vsr_transformer", **kwargs), models.build("vsr_transformer", remat=True, **kwargs)
    init = lambda model: jax.eval_shape(lambda key: model.init(key, lr), jax.random.key(0))  # noqa: E731
    variables = init(plain)
    assert jax.tree.structure(init(remat)) == jax.tree.structure(variables)

    def checkpoints(model):
        loss = lambda v: jnp.mean(model.apply(v, lr))  # noqa: E731
        return len(re.findall(r"\b(?:checkpoint|remat2?)\[", str(jax.make_jaxpr(jax.grad(loss))(variables))))

    assert checkpoints(plain) == 0
    assert checkpoints(remat) == 4  # 2 layers, the feature extraction and the reconstruction
