"""ECFormer's layers: kNN (top-k) attention, the sinusoidal spatio-temporal encoding, binarized layers."""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecformer_jax.layers import binary
from ecformer_jax.layers.attention import dot_product_attention, topk_attention
from ecformer_jax.layers.positional import PositionalEncoding, sinusoidal_encoding, split_channels


def _qkv(shape=(2, 3, 6, 10, 8), seed=0):
    b, h, lq, lk, d = shape
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(k1, (b, h, lq, d)), jax.random.normal(k2, (b, h, lk, d)),
            jax.random.normal(k3, (b, h, lk, d)))


# --- kNN attention ---------------------------------------------------------------------------------
@pytest.mark.parametrize("topk", [None, 10, 11, 1000])
def test_topk_at_least_n_is_dense_attention_exactly(topk):
    q, k, v = _qkv()
    chex.assert_trees_all_equal(topk_attention(q, k, v, topk), dot_product_attention(q, k, v))


def test_ties_keep_every_tied_key():
    q, k, v = _qkv()
    k_const = jnp.broadcast_to(k[..., :1, :], k.shape)  # every key identical: all scores tie
    out = topk_attention(q, k_const, v, 2)
    chex.assert_trees_all_close(out, dot_product_attention(q, k_const, v), atol=0)
    chex.assert_trees_all_close(out, jnp.broadcast_to(v.mean(-2, keepdims=True), out.shape), atol=1e-6)


def test_topk_matches_softmax_over_the_k_best_keys():
    q, k, v = _qkv(seed=1)
    topk = 4
    got = np.asarray(topk_attention(q, k, v, topk))
    qn, kn, vn = (np.asarray(a, np.float64) for a in (q, k, v))
    scores = np.einsum("bhqd,bhkd->bhqk", qn, kn) / np.sqrt(qn.shape[-1])
    want = np.zeros_like(got, dtype=np.float64)
    for idx in np.ndindex(*scores.shape[:3]):
        s = scores[idx]
        best = np.argsort(-s)[:topk]
        p = np.exp(s[best] - s[best].max())
        want[idx] = (p / p.sum()) @ vn[idx[0], idx[1], best]
    np.testing.assert_allclose(got, want, atol=1e-5)
    top1 = np.asarray(topk_attention(q, k, v, 1))
    best = scores.argmax(-1)
    np.testing.assert_allclose(top1, np.take_along_axis(vn, best[..., None].repeat(vn.shape[-1], -1), axis=2),
                               atol=1e-6)


def test_gradients_flow_only_through_kept_keys():
    q, k, v = _qkv((1, 1, 1, 12, 4), seed=2)
    topk = 5
    scores = np.asarray(jnp.einsum("...qd,...kd->...qk", q, k))[0, 0, 0]
    kept = np.zeros(12, bool)
    kept[np.argsort(-scores)[:topk]] = True
    loss = lambda q_, k_, v_: jnp.sum(topk_attention(q_, k_, v_, topk) ** 2)
    gq, gk, gv = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    gk, gv = np.abs(np.asarray(gk))[0, 0].sum(-1), np.abs(np.asarray(gv))[0, 0].sum(-1)
    assert (gk[~kept] == 0).all() and (gv[~kept] == 0).all()
    assert (gk[kept] > 0).all() and (gv[kept] > 0).all()
    assert np.isfinite(np.asarray(gq)).all() and float(jnp.abs(gq).sum()) > 0


def test_topk_validates_and_runs_in_bfloat16():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="positive int"):
        topk_attention(q, k, v, 0)
    q, k, v = (a.astype(jnp.bfloat16) for a in (q, k, v))
    out = topk_attention(q, k, v, 3)
    assert out.dtype == jnp.bfloat16
    # scores are float32 even for bfloat16 inputs: the same keys are chosen as in float32
    ref = topk_attention(*(a.astype(jnp.float32) for a in (q, k, v)), 3)
    chex.assert_trees_all_close(out.astype(jnp.float32), ref, atol=0.05)


# --- positional encoding ---------------------------------------------------------------------------
def test_positional_encoding_is_independent_of_clip_length_and_resolution():
    small = sinusoidal_encoding(2, 3, 5, 64)
    large = sinusoidal_encoding(5, 7, 11, 64)
    assert small.shape == (2, 3, 5, 64) and large.shape == (5, 7, 11, 64)
    np.testing.assert_array_equal(small, large[:2, :3, :5])
    assert np.abs(large).max() <= 1.0
    # every token of the grid gets its own code; and the three channel groups vary along their own axis
    flat = large.reshape(-1, 64)
    assert len(np.unique(np.round(flat, 6), axis=0)) == flat.shape[0]
    dt, dy, dx = split_channels(64)
    assert (dt, dy, dx) == (24, 20, 20)
    rows = large[..., dt: dt + dy]
    assert np.ptp(large[..., :dt], axis=(1, 2)).max() == 0 and np.ptp(large[..., :dt], axis=0).max() > 0.5
    assert np.ptp(rows, axis=(0, 2)).max() == 0 and np.ptp(rows, axis=1).max() > 0.5
    cols = large[..., dt + dy:]
    assert np.ptp(cols, axis=(0, 1)).max() == 0 and np.ptp(cols, axis=2).max() > 0.5


@pytest.mark.parametrize("dim", [3, 7, 512])
def test_positional_encoding_module_any_dim_no_params(dim):
    x = jnp.ones((2, 3, 4, 5, dim))
    variables = PositionalEncoding().init(jax.random.key(0), x)
    assert not jax.tree.leaves(variables)
    y = PositionalEncoding(jnp.bfloat16).apply(variables, x.astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and y.shape == x.shape
    np.testing.assert_allclose(np.asarray(y[0], np.float32), 1 + sinusoidal_encoding(3, 4, 5, dim), atol=1e-2)
    with pytest.raises(ValueError, match=r"\(B, T, H, W, C\)"):
        PositionalEncoding().init(jax.random.key(0), jnp.ones((2, 4, 5, dim)))


# --- binarized layers ------------------------------------------------------------------------------
def test_ste_sign_values_and_gradient():
    x = jnp.array([-2.0, -1.0, -0.3, 0.0, 0.5, 1.0, 1.5])
    np.testing.assert_array_equal(np.asarray(binary.ste_sign(x)), [-1, -1, -1, 1, 1, 1, 1])
    g = jax.grad(lambda a: jnp.sum(binary.ste_sign(a) * jnp.arange(1.0, 8.0)))(x)
    np.testing.assert_array_equal(np.asarray(g), [0, 2, 3, 4, 5, 6, 0])  # 1{|x| <= 1} * upstream


def test_binarized_weights_are_plus_minus_alpha_with_ste_gradient():
    w = jax.random.normal(jax.random.key(3), (6, 4)) * 0.7
    wb = np.asarray(binary.binarize_weights(w, (0,)))
    alpha = np.abs(np.asarray(w)).mean(0)
    np.testing.assert_allclose(np.abs(wb), np.broadcast_to(alpha, wb.shape), rtol=1e-6)
    np.testing.assert_array_equal(np.sign(wb), np.where(np.asarray(w) >= 0, 1, -1))
    # d/dw sum(g * alpha * sign(w)) = alpha g 1{|w| <= 1} + sign(w) / n * sum_i g_i sign(w_i)   (per column)
    g = jax.random.normal(jax.random.key(4), w.shape)
    got = np.asarray(jax.grad(lambda a: jnp.sum(g * binary.binarize_weights(a, (0,))))(w))
    wn, gn, s = np.asarray(w), np.asarray(g), np.where(np.asarray(w) >= 0, 1.0, -1.0)
    want = alpha * gn * (np.abs(wn) <= 1) + s / wn.shape[0] * (gn * s).sum(0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_binary_dense_and_conv_forward_and_parameter_layout():
    x = jax.random.normal(jax.random.key(5), (2, 5, 6, 8))
    for float_layer, bin_layer in [(nn.Dense(4), binary.BinaryDense(4)),
                                   (nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=2),
                                    binary.BinaryConv(4, (3, 3), feature_group_count=2))]:
        fvars = jax.jit(float_layer.init)(jax.random.key(0), x)
        bvars = jax.jit(bin_layer.init)(jax.random.key(0), x)
        chex.assert_trees_all_equal_shapes(fvars, bvars)  # same names and shapes: float weights load as is
        params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(6), a.shape), fvars)
        kernel = params["params"]["kernel"]
        wb = binary.binarize_weights(kernel, tuple(range(kernel.ndim - 1)))
        want = float_layer.apply({"params": {"kernel": wb, "bias": params["params"]["bias"]}},
                                 jnp.where(x >= 0, 1.0, -1.0))
        chex.assert_trees_all_close(jax.jit(bin_layer.apply)(params, x), want, atol=1e-5)
        grads = jax.jit(jax.grad(lambda p, layer=bin_layer: jnp.sum(layer.apply(p, x) ** 2)))(params)
        assert all(bool(jnp.isfinite(g).all()) and float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))


def test_binary_factories_and_decoder_names():
    assert isinstance(binary.conv2d(4, binarize=False), nn.Conv)
    assert isinstance(binary.conv2d(4, binarize=True), binary.BinaryConv)
    x = jnp.zeros((1, 4, 6, 16))
    from ecformer_jax.layers.conv import Decoder

    fvars = jax.eval_shape(Decoder().init, jax.random.key(0), x)
    bvars = jax.eval_shape(binary.BinaryDecoder(binarize=True).init, jax.random.key(0), x)
    chex.assert_trees_all_equal_shapes(fvars, bvars)
