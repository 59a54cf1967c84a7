"""VSR-Transformer beyond parity: PixelShuffle order, positional encoding (5 and 7 frames), the attention
with several heads against an independent PyTorch transcription of the official globalAttention,
configurations, converter checks, output_frames, bfloat16 and input errors."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ecformer_jax import convert, models
from ecformer_jax.convert.state_dict import TorchStateDict
from ecformer_jax.layers.conv import pixel_shuffle
from ecformer_jax.models import vsr_transformer as vsr

TINY = dict(depth=1, num_extract_blocks=1, num_reconstruct_blocks=1, num_ffn_blocks=1)


def test_pixel_shuffle_matches_torch():
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 4 * 6)).astype(np.float32)
    ref = F.pixel_shuffle(torch.from_numpy(np.moveaxis(x, -1, 1)), 2).numpy()
    ours = np.asarray(pixel_shuffle(jnp.asarray(x), 2))
    assert ours.shape == (2, 6, 10, 6)
    np.testing.assert_array_equal(ours, np.moveaxis(ref, 1, -1))
    # (not jax's depth_to_space order: channel (i * 2 + j) * C + c)
    other = x.reshape(2, 3, 5, 2, 2, 6).transpose(0, 1, 3, 2, 4, 5).reshape(2, 6, 10, 6)
    assert np.abs(other - ours).max() > 0.1
    with pytest.raises(ValueError, match="divisible"):
        pixel_shuffle(jnp.zeros((1, 2, 2, 6)), 2)


def test_positional_encoding_formulas():
    c, h, w = 6, 4, 5
    ci = np.arange(c)[None, None, :]
    hi = np.arange(h)[:, None, None]
    wi = np.arange(w)[None, :, None]
    full = lambda a: np.broadcast_to(a, (h, w, c))  # noqa: E731
    pe5 = vsr.positional_encoding(5, 5, h, w, c)
    expected5 = [np.sin(ci), np.cos(ci), np.sin(hi), np.cos(hi), np.sin(wi)]
    for t in range(5):
        np.testing.assert_allclose(pe5[t], full(expected5[t]), atol=1e-6)
    pe7 = vsr.positional_encoding(7, 7, h, w, c)
    expected7 = [np.sin(ci), np.sin(.01 * ci), np.cos(ci), np.cos(.01 * ci), np.sin(hi), np.sin(.01 * hi), np.cos(hi)]
    for t in range(7):
        np.testing.assert_allclose(pe7[t], full(expected7[t]), atol=1e-6)
    np.testing.assert_allclose(vsr.inv_freq(5), [1.0])
    np.testing.assert_allclose(vsr.inv_freq(7), [1.0, 0.01], rtol=1e-6)
    # fewer frames than num_frames take the first codes; more than 3 * width do not exist
    np.testing.assert_array_equal(vsr.positional_encoding(5, 3, h, w, c), pe5[:3])
    with pytest.raises(ValueError, match="6 codes"):
        vsr.positional_encoding(5, 7, h, w, c)


def _torch_global_attention(feat, p, patch, heads):
    """The official globalAttention (basicsr/models/archs/vsrTransformer_arch.py) written out with torch ops
    (NCHW, nn.Unfold / nn.Fold); feat (B, T, C, H, W)."""
    b, t, c, h, w = feat.shape
    x = feat.reshape(b * t, c, h, w)
    conv = lambda name, groups: F.conv2d(x, p[name]["w"], p[name]["b"], padding=1, groups=groups)  # noqa: E731
    q, k, v = conv("to_q", c), conv("to_k", c), conv("to_v", 1)
    n = (h // patch) * (w // patch)
    d = c * patch * patch // heads

    def tok(a):  # (B*T, C, H, W) -> (B, heads, d, T*n)
        a = F.unfold(a, patch, stride=patch).view(b, t, heads, d, n)
        return a.permute(0, 2, 3, 1, 4).reshape(b, heads, d, t * n)

    qt, kt, vt = tok(q), tok(k), tok(v)
    attn = torch.softmax(torch.einsum("bhdi,bhdj->bhij", qt, kt) * d ** -0.5, dim=-1)
    out = torch.einsum("bhij,bhdj->bhid", attn, vt).view(b, heads, t, n, d).permute(0, 2, 1, 4, 3)
    out = F.fold(out.reshape(b * t, heads * d, n), (h, w), patch, stride=patch)
    out = F.conv2d(out, p["conv"]["w"], p["conv"]["b"], padding=1)
    return out.view(b, t, c, h, w) + feat, attn


@pytest.mark.parametrize("heads", [1, 2, 8])
def test_stcsa_matches_torch_transcription(heads):
    b, t, c, h, w, patch = 2, 3, 16, 16, 24, 4
    rng = np.random.default_rng(heads)
    shapes = {"to_q": (c, 1, 3, 3), "to_k": (c, 1, 3, 3), "to_v": (c, c, 3, 3), "conv": (c, c, 3, 3)}
    sd = {}
    for name, shape in shapes.items():
        sd[f"{name}.weight"] = (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
        sd[f"{name}.bias"] = (0.1 * rng.standard_normal(c)).astype(np.float32)
    feat = (3 * rng.standard_normal((b, t, c, h, w))).astype(np.float32)
    tp = {n: {"w": torch.from_numpy(sd[f"{n}.weight"]), "b": torch.from_numpy(sd[f"{n}.bias"])} for n in shapes}
    ref, attn = _torch_global_attention(torch.from_numpy(feat), tp, patch, heads)
    assert float(attn.max(-1).values.mean()) > 0.05  # informative softmax, not uniform (1 / 72)
    tsd = TorchStateDict(sd)
    variables = {"params": vsr.stcsa_from_torch_params(tsd)}
    tsd.check("stcsa")
    module = vsr.STCSA(channels=c, patch_size=patch, heads=heads)
    apply = jax.jit(module.apply)
    ours = apply(variables, jnp.asarray(np.moveaxis(feat, 2, -1)))
    np.testing.assert_allclose(np.moveaxis(np.asarray(ours), -1, 2), ref.numpy(), rtol=0, atol=2e-4)
    # every frame attends to every other frame: a change in frame 0 reaches frame 2 of the same sample only
    feat2 = feat.copy()
    feat2[0, 0] += 1.0
    ours2 = apply(variables, jnp.asarray(np.moveaxis(feat2, 2, -1)))
    delta = np.abs(np.asarray(ours2 - ours)).max(axis=(2, 3, 4))
    assert delta[0, 2] > 1e-2 and delta[1].max() < 1e-5


def test_configurations_and_parameter_counts():
    reds, vimeo = models.build("vsr_transformer"), models.build("vsr_transformer_vimeo")
    assert (reds.num_frames, reds.depth, vimeo.num_frames, vimeo.depth) == (5, 5, 7, 7)
    assert models.build("vsr_transformer", num_frames=7, depth=7) == vimeo
    assert models.get("vsr_transformer").kind == "super_resolution"
    assert models.get("vsr_transformer_stcsa").kind == "block"
    for model, count in ((reds, 32_564_335), (vimeo, 43_845_615)):
        shapes = jax.eval_shape(lambda m=model: models.init(m))
        assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes)) == count
    ln = shapes["params"]["layer0"]["attn_norm"]["scale"]
    assert ln.shape == (64, 64, 64)


def _fixture_state_dict(parity_dir):
    from ecformer_jax.convert.weight_rule import state_dict_from_fixture

    return state_dict_from_fixture(np.load(parity_dir / "vsr_transformer.npz"))


def test_converter_checks_and_options(parity_dir):
    sd = _fixture_state_dict(parity_dir)
    assert vsr.options_from_state_dict(sd) == dict(depth=5, num_extract_blocks=5, num_reconstruct_blocks=30,
                                                   num_ffn_blocks=30)
    assert vsr.options_from_state_dict({"module." + k: v for k, v in sd.items()})["depth"] == 5
    assert vsr.options_from_state_dict({"conv.weight": 0}) == {}
    # the layer norm affine (C, H, W) is stored as (H, W, C)
    variables = convert.from_torch("vsr_transformer", {"params": sd})
    np.testing.assert_array_equal(variables["params"]["layer3"]["ffn_norm"]["bias"],
                                  np.moveaxis(sd["transformer.layers.3.1.fn.norm.bias"], 0, -1))
    # a 7-frame checkpoint (inv_freq [1, .01]) in the 5-frame model: named buffer and a hint
    bad = dict(sd, **{vsr.INV_FREQ_KEY: vsr.inv_freq(7)})
    with pytest.raises(convert.CheckpointError, match=r"pos_embedding\.penc\.inv_freq.*vsr_transformer_vimeo"):
        convert.from_torch("vsr_transformer", bad)
    # the REDS weights in the Vimeo model: inv_freq and the missing layers 5, 6 are named
    with pytest.raises(convert.CheckpointError, match=r"inv_freq.*num_frames 1\.\.6"):
        convert.from_torch("vsr_transformer_vimeo", sd)
    with pytest.raises(convert.CheckpointError, match=r"transformer\.layers\.5\.0\.fn\.norm\.weight"):
        convert.from_torch("vsr_transformer", sd, depth=6)
    # the buffers are constants: a state_dict without them still converts
    nobuf = {k: v for k, v in sd.items() if k not in (vsr.INV_FREQ_KEY, "spynet.spynet.mean", "spynet.spynet.std")}
    again = convert.from_torch("vsr_transformer", nobuf)
    chex.assert_trees_all_equal(again, variables)


@pytest.fixture(scope="module")
def tiny():
    """A small model (depth 1, one block per stack), its weights (weight-rule-like scale) and a clip."""
    model = models.build("vsr_transformer", num_frames=3, **TINY)
    x = jax.random.uniform(jax.random.key(0), (2, 3, 64, 64, 3))
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "norm" in name:
            return (1.0 if "scale" in name else 0.0) + 0.1 * rng.standard_normal(leaf.shape).astype(np.float32)
        if leaf.ndim >= 2:
            return (rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
        return (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)

    variables = jax.tree_util.tree_map_with_path(draw, shapes)
    out, state = jax.jit(lambda v, a: model.apply(v, a, mutable=["intermediates"]))(variables, x)
    return model, variables, x, out, state["intermediates"]


@pytest.mark.slow
def test_tiny_model_shapes_and_output_frames(tiny):
    model, variables, x, out, inter = tiny
    chex.assert_shape(out, (2, 3, 256, 256, 3))
    assert out.dtype == jnp.float32
    chex.assert_tree_all_finite(out)
    # the output is the bilinear base plus conv_last
    base = inter["img_upsample"][0].reshape(out.shape)
    np.testing.assert_allclose(np.asarray(out - base).reshape(6, 256, 256, 3),
                               np.asarray(inter["conv_last_out"][0]), atol=1e-4)
    apply = jax.jit(model.apply, static_argnames="output_frames")
    part = apply(variables, x, output_frames=(2, 0))
    np.testing.assert_allclose(np.asarray(part), np.asarray(out[:, [2, 0]]), atol=1e-4)
    # every frame reaches every other through the attention / flows: change frame 0, frame 2 changes
    x2 = x.at[0, 0].set(1.0 - x[0, 0])
    out2 = apply(variables, x2)
    assert float(jnp.abs(out2[0, 2] - out[0, 2]).max()) > 1e-3
    np.testing.assert_allclose(np.asarray(out2[1]), np.asarray(out[1]), atol=1e-4)  # samples never mix


@pytest.mark.slow
def test_tiny_model_bfloat16(tiny):
    model, variables, x, out, _ = tiny
    bf16 = models.build("vsr_transformer", num_frames=3, dtype=jnp.bfloat16, **TINY)
    out16 = jax.jit(bf16.apply)(variables, x[:1])
    assert out16.dtype == jnp.float32  # the bilinear base is added in float32
    chex.assert_tree_all_finite(out16)
    err = float(jnp.abs(out16 - out[:1]).max()) / float(jnp.abs(out[:1]).max())
    print(f"\n[bf16] max |diff| / max |out| = {err:.3e}")
    assert err < 0.05


def test_input_errors():
    model = models.build("vsr_transformer", **TINY)
    init = lambda shape: jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))  # noqa: E731
    with pytest.raises(ValueError, match=r"64x64 LR frames only.*got 128x64.*crops"):
        init((1, 5, 128, 64, 3))
    with pytest.raises(ValueError, match="channels-last"):
        init((1, 5, 3, 64, 64))
    with pytest.raises(ValueError, match=r"1\.\.6 frames.*T=7"):
        init((1, 7, 64, 64, 3))
    with pytest.raises(ValueError, match="output_frames"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 5, 64, 64, 3)), output_frames=(5,)))
    with pytest.raises(ValueError, match="feat_size=32 must be >= 64"):
        jax.eval_shape(models.build("vsr_transformer", feat_size=32).init, jax.random.key(0),
                       jnp.zeros((1, 5, 32, 32, 3)))
    assert init((1, 4, 64, 64, 3))["params"]["layer0"]["attn_norm"]["scale"].shape == (64, 64, 64)
