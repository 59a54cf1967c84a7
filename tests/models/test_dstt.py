"""DSTT behaviour beyond parity: size rules, resize_embeddings, bfloat16, decoupled attention locality."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecformer_jax import models
from ecformer_jax.models.dstt import DecoupledAttention, TransformerBlock

SMALL = (48, 96)  # token grid 4x8 -> 2x2 zones of 2x4 tokens


def _clip(t, size, seed=0):
    return jax.random.uniform(jax.random.key(seed), (1, t, *size, 3), minval=-1.0, maxval=1.0)


def _scaled_params(variables, seed=1):
    """Variance-preserving random weights (like the fixtures' weight rule) so activations are O(1)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):  # leaf may be abstract (eval_shape): only its shape is used
        x = rng.standard_normal(leaf.shape, np.float32)
        if leaf.ndim >= 2:
            return x / np.sqrt(np.prod(leaf.shape[:-1]))
        return 1 + 0.1 * x if "scale" in jax.tree_util.keystr(path) else 0.1 * x

    return jax.tree_util.tree_map_with_path(draw, variables)


@pytest.fixture(scope="module")
def small_run():
    """(variables, clip, float32 output) of DSTT at 48x96, T=2, with resize_embeddings=True."""
    model = models.build("dstt", resize_embeddings=True)
    x = _clip(2, SMALL, seed=3)
    variables = _scaled_params(jax.eval_shape(model.init, jax.random.key(0), x))
    return variables, x, jax.jit(model.apply)(variables, x)


def test_wrong_size_raises_clear_error():
    model = models.build("dstt")
    with pytest.raises(ValueError, match=r"240x432.*resize_embeddings=True"):
        jax.eval_shape(model.init, jax.random.key(0), _clip(1, SMALL))
    with pytest.raises(ValueError, match="multiples of 4"):
        jax.eval_shape(models.build("dstt", resize_embeddings=True).init, jax.random.key(0), _clip(1, (50, 96)))
    # 60x96 -> 15x24 features -> 5x8 token grid: 5 rows do not split into 2 zones
    with pytest.raises(ValueError, match="zones"):
        jax.eval_shape(models.build("dstt", resize_embeddings=True).init, jax.random.key(0), _clip(1, (60, 96)))
    with pytest.raises(ValueError, match="channels-last"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1, 3, 240, 432)))


def test_resize_embeddings_runs_at_other_size(small_run):
    variables, _, out = small_run
    # the parameters do not depend on the frame size: a 240x432 checkpoint loads unchanged
    official = jax.eval_shape(lambda: models.init(models.build("dstt"), "dstt"))
    chex.assert_trees_all_equal_shapes(official, variables)
    chex.assert_shape(out, (1, 2, *SMALL, 3))
    chex.assert_tree_all_finite(out)
    assert float(jnp.abs(out).max()) <= 1.0 and float(jnp.std(out)) > 1e-2


def test_bfloat16_close_to_float32(small_run):
    variables, x, ref = small_run
    out = jax.jit(models.build("dstt", resize_embeddings=True, dtype=jnp.bfloat16).apply)(variables, x)
    assert out.dtype == jnp.bfloat16
    chex.assert_tree_all_finite(out)
    diff = jnp.abs(out.astype(jnp.float32) - ref)
    print(f"\n[bf16] max |diff| {float(diff.max()):.3e}, mean {float(diff.mean()):.3e}, ref std {float(ref.std()):.3f}")
    assert float(diff.max()) < 0.1 and float(diff.mean()) < 0.02


@pytest.mark.parametrize("mode", ["t", "s"])
def test_decoupled_attention_locality(mode):
    b, t, (nh, nw), dim = 2, 3, (4, 6), 16
    attn = DecoupledAttention(dim, 2, mode, (nh, nw), (2, 2))
    x = jax.random.normal(jax.random.key(0), (b * t, nh * nw, dim))
    variables = attn.init(jax.random.key(1), x, t)
    # perturb one token: sample 1, frame 1, grid position (0, 4) -> zone (0, 1)
    x2 = x.at[1 * t + 1, 0 * nw + 4].add(1.0)
    changed = np.abs(np.asarray(attn.apply(variables, x2, t) - attn.apply(variables, x, t))).max(-1) > 1e-6
    changed = changed.reshape(b, t, nh, nw)
    expected = np.zeros_like(changed)
    if mode == "t":  # the same zone in every frame of the same sample
        expected[1, :, :2, 3:] = True
    else:  # every token of the same frame
        expected[1, 1] = True
    np.testing.assert_array_equal(changed, expected)


def test_block_residual_starts_from_normalised_input():
    # x is replaced by LN1(x) before the residual, so a per-token affine change of the input
    # (which LN removes) leaves the block output unchanged; a textbook pre-norm block would not.
    block = TransformerBlock(16, 2, "s", (2, 3))
    x = jax.random.normal(jax.random.key(0), (2, 6, 16))
    variables = block.init(jax.random.key(1), x, 1)
    y = block.apply(variables, x, 1)
    y2 = block.apply(variables, 3.0 * x + 2.0, 1)
    np.testing.assert_allclose(np.asarray(y2), np.asarray(y), atol=1e-4)
    assert float(jnp.abs(y - x).max()) > 0.1
