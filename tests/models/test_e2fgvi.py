"""E2FGVI / E2FGVI-HQ beyond the parity fixtures: sizes, input checks, bfloat16,
conversion checks and the official parameter counts."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecformer_jax import convert, models
from ecformer_jax.convert.weight_rule import state_dict_from_fixture
from ecformer_jax.errors import CheckpointError
from tests import parity


@pytest.mark.parametrize("name, count", [("e2fgvi", 41_799_743), ("e2fgvi_hq", 41_117_887)])
def test_parameter_count_matches_official(name, count):
    model = models.build(name)
    shapes = jax.eval_shape(lambda: models.init(model, name))
    assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes)) == count


# --- running the models --------------------------------------------------------------------------
BLOCKS = 2  # fewer transformer blocks than the official 8 keep the compile times of these tests short


@pytest.fixture(scope="module")
def hq_variables(parity_dir):
    """The HQ fixture's rule weights (realistic magnitudes, unlike the N(0, 0.02) init), first blocks."""
    npz = np.load(parity_dir / "e2fgvi_hq.npz")
    params = dict(convert.from_torch("e2fgvi_hq", state_dict_from_fixture(npz))["params"])
    for i in range(BLOCKS, 8):
        del params[f"block{i}"]
    return {"params": params}


def _clip(t, h, w, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.uniform(-1, 1, (1, t, h, w, 3)).astype(np.float32)
    masks = np.zeros((1, t, h, w, 1), np.float32)
    masks[:, :, h // 4 : h // 2, w // 3 : w // 2] = 1
    return frames * (1 - masks)


@functools.cache
def _apply(name, lt, dtype=jnp.float32, **overrides):
    model = models.build(name, dtype=dtype, num_blocks=BLOCKS, **overrides)
    return jax.jit(functools.partial(model.apply, num_local_frames=lt))


@pytest.mark.slow
def test_hq_other_size_batch_bfloat16_and_reference_independence(hq_variables):
    """A size other than the fixtures' (60x108, the smallest valid one): shapes, batches of two, flows
    from the local frames only, bf16 close to float32."""
    x = _clip(4, 60, 108)
    out, (ff, fb) = _apply("e2fgvi_hq", 3)(hq_variables, x)
    assert out.shape == (1, 4, 60, 108, 3) and out.dtype == jnp.float32
    assert ff.shape == fb.shape == (1, 2, 15, 27, 2) and ff.dtype == jnp.float32
    out, ff = np.asarray(out), np.asarray(ff)
    assert np.isfinite(out).all() and np.abs(out).max() <= 1
    assert np.abs(ff).max() > 0.1 and not np.allclose(ff, np.asarray(fb))

    # batch of two: sample 0 as alone (b-major bookkeeping of flows / windows); sample 1 differs only
    # in its reference frame, which changes the outputs but not the flows
    x2 = x.copy()
    x2[:, 3] = _clip(1, 60, 108, seed=1)[:, 0]
    outb, (ffb, fbb) = _apply("e2fgvi_hq", 3)(hq_variables, np.concatenate([x, x2]))
    outb, ffb = np.asarray(outb), np.asarray(ffb)
    np.testing.assert_allclose(outb[:1], out, atol=2e-5)
    np.testing.assert_allclose(ffb[:1], ff, atol=2e-5)
    np.testing.assert_allclose(np.asarray(fbb)[:1], np.asarray(fb), atol=2e-5)
    np.testing.assert_array_equal(ffb[1], ffb[0])
    assert np.abs(outb[1, :3] - outb[0, :3]).max() > 1e-3

    bf, (bff, _) = _apply("e2fgvi_hq", 3, jnp.bfloat16)(hq_variables, x)
    assert bf.dtype == jnp.bfloat16 and bff.dtype == jnp.float32
    bf = np.asarray(bf, np.float32)
    assert np.isfinite(bf).all()
    assert np.abs(bf - out).mean() < 0.02 and np.abs(bf - out).max() < 0.25
    assert np.abs(np.asarray(bff) - ff).max() < 0.1


@pytest.mark.slow
def test_cvpr_model_is_fixed_size_unless_resize_embeddings():
    x = _clip(2, 60, 108)
    model = models.build("e2fgvi")
    with pytest.raises(ValueError, match="made for 240x432 frames.*resize_embeddings=True"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), x, 2))
    resized = models.build("e2fgvi", resize_embeddings=True, num_blocks=BLOCKS)
    variables = jax.eval_shape(lambda: resized.init(jax.random.key(0), x, 2))
    # same parameters as the 240x432 model: the bias keeps its official (60, 108) shape
    official = jax.eval_shape(lambda: models.init(models.build("e2fgvi", num_blocks=BLOCKS), "e2fgvi"))
    assert jax.tree.map(lambda a: a.shape, variables) == jax.tree.map(lambda a: a.shape, official)
    params = jax.tree.map(lambda a: np.full(a.shape, 0.01, np.float32), variables)
    params["params"]["sc_bias"] = np.random.default_rng(0).standard_normal((60, 108, 128)).astype(np.float32)
    out, (ff, _) = _apply("e2fgvi", 2, resize_embeddings=True)(params, x)
    assert out.shape == (1, 2, 60, 108, 3) and ff.shape == (1, 1, 15, 27, 2)
    assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("name", ["e2fgvi", "e2fgvi_hq"])
@pytest.mark.parametrize("size, match", [((62, 108), "multiples of 4"), ((48, 108), "whole number of 5x9"),
                                         ((60, 96), "pad_to_multiple")])
def test_invalid_sizes_are_refused(name, size, match):
    model = models.build(name, **({"resize_embeddings": True} if name == "e2fgvi" else {}))
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 2, *size, 3)), 2))


@pytest.mark.parametrize("lt, match", [(1, "between 2 and"), (4, "between 2 and"), (2.0, "Python int")])
def test_num_local_frames_is_checked(lt, match):
    model = models.build("e2fgvi_hq")
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 3, 60, 108, 3)), lt))


def test_input_layout_is_checked():
    model = models.build("e2fgvi_hq")
    with pytest.raises(ValueError, match="channels-last"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 3, 3, 60, 108)), 2))


def test_all_local_by_default_and_generate_convention():
    """num_local_frames=None means every frame is local: flows cover all T - 1 pairs."""
    model = models.build("e2fgvi_hq")
    x = jnp.zeros((1, 3, 60, 108, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    out, (ff, fb) = jax.eval_shape(lambda v: model.apply(v, x), variables)
    assert out.shape == x.shape and ff.shape == fb.shape == (1, 2, 15, 27, 2)
    # the registry's generator convention: frames plus the flows (the trainer's flow loss needs them)
    assert "flow" in models.get("e2fgvi_hq").extra_losses
    out, extras = jax.eval_shape(lambda v: models.generate("e2fgvi_hq", model, v, x, jnp.zeros((1, 3, 60, 108, 1)), 2),
                                 variables)
    assert out.shape == x.shape and extras["flows"][0].shape == (1, 1, 15, 27, 2)


def test_converter_checks_the_rolled_index_buffer(parity_dir):
    npz, _ = parity.load(parity_dir, "e2fgvi")
    sd = state_dict_from_fixture(npz)
    sd["transformer.3.attn.valid_ind_rolled"] = sd["transformer.3.attn.valid_ind_rolled"][::-1].copy()
    with pytest.raises(CheckpointError, match="transformer.3.attn.valid_ind_rolled"):
        convert.from_torch("e2fgvi", sd)
    sd = state_dict_from_fixture(npz)
    del sd["sc.bias"]
    with pytest.raises(CheckpointError, match="sc.bias"):
        convert.from_torch("e2fgvi", sd)
    with pytest.raises(CheckpointError, match="sc.bias_conv"):  # a CVPR checkpoint is no HQ checkpoint
        convert.from_torch("e2fgvi_hq", state_dict_from_fixture(npz))
