"""VSR-Transformer: Video Super-Resolution Transformer (Cao, Li, Zhang, Van Gool 2021;
caojiezhang/VSR-Transformer, a BasicSR fork).

    sr = models.build("vsr_transformer").apply(variables, lr_frames)        # REDS: 5 frames, depth 5
    sr = models.build("vsr_transformer_vimeo").apply(variables, lr_frames)  # Vimeo-90K / Vid4: 7 frames, depth 7
    # the same as models.build("vsr_transformer", num_frames=7, depth=7)

lr_frames (B, T, 64, 64, 3) RGB in [0, 1] (T = num_frames); returns (B, T, 256, 256, 3) float32, not
clamped (x4 super-resolution of every frame). `apply(..., output_frames=(2,))` reconstructs only the
listed frames (the transformer still sees all T; the official test protocol keeps the centre frame
only, see ecformer_jax.inference.vsr, which also tiles bigger frames into 64x64 crops).

Pipeline (the official basicsr/models/archs/vsrTransformer_arch.py): conv_first + 5 residual blocks per
frame -> SPyNet flows to the previous and the next frame -> + positional encoding -> `depth` layers of
[x + LN(x) + STCSA(LN(x))] (spatio-temporal convolutional self-attention, double residual) and
[x + BOFF(LN(x))] (bidirectional optical-flow feed-forward) -> 30 residual blocks -> two conv +
PixelShuffle(2) x2 upsamplers -> conv_hr -> conv_last, plus the bilinear x4 upsampled LR frame.

Quirks reproduced on purpose:
* the LayerNorms normalise each frame over (H, W, C) jointly, with an element-wise (64, 64, 64) affine,
  so the model only runs on feat_size x feat_size (64 x 64) LR frames;
* the positional encoding is `positional-encodings` 4.0.0's PositionalEncodingPermute3D applied with the
  FRAME axis as its channel axis: frame t gets the t-th code of (channel, row, column) index, see
  `positional_encoding`;
* STCSA adds its own (normalised) input, so the attention sub-layer is x + LN(x) + conv(attn(LN(x)));
  q and k are depthwise 3x3 convs, v a full one; tokens are 8x8 patches of all frames, feature order
  (c, ky, kx) as nn.Unfold, scale (C * 64 / heads) ** -0.5;
* the feed-forward warps the next frame's features with the "backward" flows and the previous
  frame's with the "forward" flows (zero padding), the edge frames reusing their own features, and
  concatenates the raw LR frame BEFORE the warped features (67 channels);
* PixelShuffle with PyTorch's channel order (layers.conv.pixel_shuffle).

Checkpoints: the official `net_g_*.pth` files ({'params': state_dict}, 'module.' prefixes stripped by
the converter), buffers included: `spynet.spynet.mean/std` (ImageNet constants) and
`pos_embedding.penc.inv_freq` (checked against num_frames: a 7-frame checkpoint tells you to use
'vsr_transformer_vimeo'). `options_from_state_dict` reads depth and block counts off a checkpoint.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ecformer_jax.errors import CheckpointError
from ecformer_jax.layers.attention import dot_product_attention
from ecformer_jax.layers.checks import check_video
from ecformer_jax.layers.conv import pixel_shuffle
from ecformer_jax.layers.flow import SPyNet, flow_warp, frame_pairs, spynet_from_torch
from ecformer_jax.layers.remat import block_class
from ecformer_jax.layers.resize import upsample_bilinear
from ecformer_jax.models.registry import register

SCALE = 4
MIN_FRAME_SIZE = 64  # the official flow wrapper asserts h >= 64 and w >= 64

# PyTorch's default Conv2d init (kaiming_uniform, a = sqrt(5)) and BasicSR / mmediting's residual-block
# init (kaiming_normal scaled by 0.1, zero bias).
_torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
_residual_init = nn.initializers.variance_scaling(2.0 * 0.1**2, "fan_in", "normal")


def _conv(features: int, kernel: int = 3, groups: int = 1, dtype: Any = jnp.float32, init=_torch_default_init,
          name: str | None = None) -> nn.Conv:
    """Conv2d(in, features, kernel, stride 1, padding kernel // 2, groups, bias) on NHWC input."""
    p = kernel // 2
    return nn.Conv(features, (kernel, kernel), padding=((p, p), (p, p)), feature_group_count=groups, dtype=dtype,
                   kernel_init=init, name=name)


def _lrelu(x):
    return jax.nn.leaky_relu(x, 0.1)


class VSRTransformer(nn.Module):
    """The generator (official class `vsrTransformer`); defaults = the REDS configuration.

    num_frames: the clip length T the positional encoding is built for (5 REDS, 7 Vimeo-90K).
    depth: transformer layers (5 REDS, 7 Vimeo-90K; the official constructor default is 10).
    channels: num_feat. feat_size: the LR frame size (H = W) the LayerNorms are built for (64 officially;
    other values are an extension of ours and need their own weights).
    num_extract_blocks / num_reconstruct_blocks / num_ffn_blocks: residual blocks before the transformer,
    after it, and in each branch of every feed-forward (5 / 30 / 30 officially).
    """

    num_frames: int = 5
    depth: int = 5
    channels: int = 64
    feat_size: int = 64
    num_extract_blocks: int = 5
    num_reconstruct_blocks: int = 30
    num_ffn_blocks: int = 30
    heads: int = 1
    patch_size: int = 8
    dtype: Any = jnp.float32
    remat: bool = False  # recompute each transformer layer and the residual stacks in the backward pass

    def check_input(self, t: int, h: int, w: int, output_frames):
        s = self.feat_size
        if s < MIN_FRAME_SIZE or s % SCALE or s % self.patch_size:
            raise ValueError(
                f"VSR-Transformer: feat_size={s} must be >= {MIN_FRAME_SIZE} (SPyNet's limit), a multiple of 4 and "
                f"of patch_size={self.patch_size}")
        if (h, w) != (s, s):
            raise ValueError(
                f"VSR-Transformer runs on {s}x{s} LR frames only (its LayerNorms normalise over a fixed "
                f"({s}, {s}, {self.channels}) shape); got {h}x{w}. Cut bigger frames into {s}x{s} crops: "
                "ecformer_jax.inference.vsr (the upscale command) follows the official crop protocol.")
        capacity = 3 * _pe_width(self.num_frames)
        if not 1 <= t <= capacity:
            raise ValueError(
                f"VSR-Transformer built for num_frames={self.num_frames} takes 1..{capacity} frames (its positional "
                f"encoding has {capacity} codes); got T={t}")
        if output_frames is not None:
            bad = [i for i in output_frames if not 0 <= int(i) < t]
            if bad or not len(output_frames):
                raise ValueError(f"output_frames must be a non-empty list of frame indices in [0, {t}); got "
                                 f"{list(output_frames)}")

    @nn.compact
    def __call__(self, lr_frames, output_frames: Sequence[int] | None = None):
        b, t, h, w, _ = check_video(lr_frames, "lr_frames", 3)
        self.check_input(t, h, w, output_frames)
        c = self.channels
        x = lr_frames.astype(jnp.promote_types(lr_frames.dtype, jnp.float32))

        feat = _lrelu(_conv(c, dtype=self.dtype, name="conv_first")(x.reshape(b * t, h, w, 3).astype(self.dtype)))
        stack = block_class(ResidualStack, self.remat)
        feat = stack(c, self.num_extract_blocks, self.dtype, name="feature_extraction")(feat)
        self.sow("intermediates", "feature_extraction_out", feat)

        flows_forward, flows_backward = self.flows(x)
        self.sow("intermediates", "spynet.flows_forward", flows_forward)
        self.sow("intermediates", "spynet.flows_backward", flows_backward)

        pe = jnp.asarray(positional_encoding(self.num_frames, t, h, w, c))
        self.sow("intermediates", "pos_embedding", jnp.broadcast_to(pe, (b, *pe.shape)))
        feat = (feat.reshape(b, t, h, w, c).astype(jnp.float32) + pe).astype(self.dtype)

        lrs = x.astype(self.dtype)
        layer = block_class(TransformerLayer, self.remat)
        for i in range(self.depth):
            feat = layer(c, self.num_ffn_blocks, self.heads, self.patch_size, self.dtype, name=f"layer{i}")(
                feat, lrs, flows_forward, flows_backward)

        if output_frames is not None:
            keep = np.asarray([int(i) for i in output_frames])
            feat, x = feat[:, keep], x[:, keep]
            t = len(keep)
        out = stack(c, self.num_reconstruct_blocks, self.dtype, name="reconstruction")(
            feat.reshape(b * t, h, w, c))
        self.sow("intermediates", "reconstruction_out", out)
        out = _lrelu(pixel_shuffle(_conv(4 * c, dtype=self.dtype, name="upconv1")(out), 2))
        out = _lrelu(pixel_shuffle(_conv(4 * c, dtype=self.dtype, name="upconv2")(out), 2))
        out = _lrelu(_conv(c, dtype=self.dtype, name="conv_hr")(out))
        out = _conv(3, dtype=self.dtype, name="conv_last")(out)
        self.sow("intermediates", "conv_last_out", out)
        base = upsample_bilinear(x.reshape(b * t, h, w, 3), (SCALE * h, SCALE * w), align_corners=False,
                                 scale_factor=float(SCALE))
        self.sow("intermediates", "img_upsample", base)
        return (out.astype(jnp.float32) + base).reshape(b, t, SCALE * h, SCALE * w, 3)

    def flows(self, x):
        """(flows_forward, flows_backward), each (B, T, H, W, 2) float32: SPyNet(x_t, x_{t-1}) and
        SPyNet(x_t, x_{t+1}), edge frames repeated (x_{-1} = x_0, x_T = x_{T-1})."""
        b, t, h, w, _ = x.shape
        prev = jnp.concatenate([x[:, :1], x[:, :-1]], axis=1)
        nxt = jnp.concatenate([x[:, 1:], x[:, -1:]], axis=1)
        flows = SPyNet(self.dtype, name="spynet")(frame_pairs(x, x), frame_pairs(prev, nxt)).reshape(b, 2, t, h, w, 2)
        return flows[:, 0], flows[:, 1]


# --- positional encoding --------------------------------------------------------------------------
def _pe_width(num_frames: int) -> int:
    return int(math.ceil(num_frames / 6) * 2)


def inv_freq(num_frames: int) -> np.ndarray:
    """The `pos_embedding.penc.inv_freq` buffer: 1 / 10000 ** (arange(0, w, 2) / w), float32."""
    width = _pe_width(num_frames)
    return (np.float32(1.0) / np.float32(10000.0) ** (np.arange(0, width, 2, dtype=np.float32) / np.float32(width))
            ).astype(np.float32)


def positional_encoding(num_frames: int, t: int, h: int, w: int, c: int) -> np.ndarray:
    """(T, H, W, C) float32: code t of PositionalEncodingPermute3D(num_frames) at (channel, row, column).

    Per axis the code is [sin(p f_0), sin(p f_1), ..., cos(p f_0), cos(p f_1), ...] (width 2 * len(f)),
    for the channel, row and column index p in that order; frame t takes entry t of that list.
    """
    freqs = inv_freq(num_frames)
    width = 2 * len(freqs)
    if t > 3 * width:
        raise ValueError(f"positional encoding of num_frames={num_frames} has {3 * width} codes; asked for {t}")
    sizes = {0: c, 1: h, 2: w}  # axis of the code -> its length
    shape = {0: (1, 1, c), 1: (h, 1, 1), 2: (1, w, 1)}
    out = np.zeros((t, h, w, c), np.float32)
    for k in range(t):
        axis, j = divmod(k, width)
        pos = np.arange(sizes[axis], dtype=np.float32)
        f = freqs[j % len(freqs)]
        code = (np.sin if j < len(freqs) else np.cos)(pos * f).astype(np.float32)
        out[k] = code.reshape(shape[axis])
    return out


# --- transformer ----------------------------------------------------------------------------------
class FrameLayerNorm(nn.Module):
    """nn.LayerNorm([C, H, W]) on (..., H, W, C): per-frame statistics over (H, W, C), biased variance,
    eps 1e-5, element-wise scale and bias of shape (H, W, C). Statistics in float32."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        shape = x.shape[-3:]
        scale = self.param("scale", nn.initializers.ones, shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, shape, jnp.float32)
        x32 = x.astype(jnp.float32)
        mean = x32.mean(axis=(-3, -2, -1), keepdims=True)
        var = jnp.square(x32 - mean).mean(axis=(-3, -2, -1), keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + 1e-5)
        return (y * scale + bias).astype(self.dtype)


class TransformerLayer(nn.Module):
    """x -> x + STCSA(LN(x)) (STCSA adds LN(x) too) -> x + BOFF(LN(x), lrs, flows)."""

    channels: int = 64
    num_ffn_blocks: int = 30
    heads: int = 1
    patch_size: int = 8
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, lrs, flows_forward, flows_backward):
        y = FrameLayerNorm(self.dtype, name="attn_norm")(x)
        x = x + STCSA(self.channels, self.patch_size, self.heads, self.dtype, name="attention")(y)
        self.sow("intermediates", "attention_sublayer", x)
        y = FrameLayerNorm(self.dtype, name="ffn_norm")(x)
        x = x + FlowFeedForward(self.channels, self.num_ffn_blocks, self.dtype, name="ffn")(
            y, lrs, flows_forward, flows_backward)
        self.sow("intermediates", "ffn_sublayer", x)
        return x


class STCSA(nn.Module):
    """Spatio-temporal convolutional self-attention (official `globalAttention`), (B, T, H, W, C) ->
    same: conv(attention over the 8x8 patches of all frames) + input.

    q, k: depthwise 3x3 convs; v: full 3x3 conv. A token is one patch of one frame with the features
    (c, ky, kx) of nn.Unfold; head h takes feature rows h*d..(h+1)*d-1 (d = C * p * p / heads) and
    attends over the T * (H/p) * (W/p) tokens of its sample, scale d ** -0.5. The result is folded
    back, passed through a 3x3 conv and the input is added.
    """

    channels: int = 64
    patch_size: int = 8
    heads: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, t, h, w, c = check_video(x, "STCSA input", self.channels)
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"STCSA: frame size {h}x{w} must be a multiple of patch_size={p}")
        if (c * p * p) % self.heads:
            raise ValueError(f"STCSA: heads={self.heads} must divide channels * patch_size**2 = {c * p * p}")
        nh, nw, d = h // p, w // p, c * p * p // self.heads
        y = x.reshape(b * t, h, w, c).astype(self.dtype)
        q = _conv(c, groups=c, dtype=self.dtype, name="to_q")(y)
        k = _conv(c, groups=c, dtype=self.dtype, name="to_k")(y)
        v = _conv(c, dtype=self.dtype, name="to_v")(y)
        for name, a in (("to_q", q), ("to_k", k), ("to_v", v)):
            self.sow("intermediates", f"{name}_out", a)

        def tokens(a):  # (B*T, H, W, C) -> (B, heads, T * nh * nw, d), features (c, ky, kx) as nn.Unfold
            a = a.reshape(b, t, nh, p, nw, p, c).transpose(0, 1, 2, 4, 6, 3, 5)
            a = a.reshape(b, t * nh * nw, self.heads, d)
            return a.transpose(0, 2, 1, 3)

        o = dot_product_attention(tokens(q), tokens(k), tokens(v), scale=d**-0.5)
        o = o.transpose(0, 2, 1, 3).reshape(b, t, nh, nw, c, p, p)  # nn.Fold back (no overlap)
        o = o.transpose(0, 1, 2, 5, 3, 6, 4).reshape(b * t, h, w, c)
        self.sow("intermediates", "patch2feat", o)
        o = _conv(c, dtype=self.dtype, name="conv")(o)
        self.sow("intermediates", "conv_out", o)
        return o.reshape(b, t, h, w, c) + x.astype(self.dtype)


class FlowFeedForward(nn.Module):
    """Bidirectional optical-flow feed-forward (official `FeedForward`) on y (B, T, H, W, C).

    next-frame branch: [y_1, ..., y_{T-1}, y_{T-1}] warped by flows_backward, cat([lr_t, warped]) ->
    backward_resblocks; previous-frame branch: [y_0, y_0, ..., y_{T-2}] warped by flows_forward ->
    forward_resblocks; LeakyReLU(0.1)(1x1 fusion conv of cat[next, previous]).
    """

    channels: int = 64
    num_blocks: int = 30
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, y, lrs, flows_forward, flows_backward):
        b, t, h, w, c = y.shape
        flat = lambda a: a.reshape(b * t, *a.shape[2:])  # noqa: E731
        nxt = flow_warp(flat(jnp.concatenate([y[:, 1:], y[:, -1:]], axis=1)), flat(flows_backward))
        prev = flow_warp(flat(jnp.concatenate([y[:, :1], y[:, :-1]], axis=1)), flat(flows_forward))
        lr = flat(lrs).astype(self.dtype)
        nxt = ResidualBlocksWithInputConv(c, self.num_blocks, self.dtype, name="backward_resblocks")(
            jnp.concatenate([lr, nxt.astype(self.dtype)], axis=-1))
        prev = ResidualBlocksWithInputConv(c, self.num_blocks, self.dtype, name="forward_resblocks")(
            jnp.concatenate([lr, prev.astype(self.dtype)], axis=-1))
        self.sow("intermediates", "backward_resblocks_out", nxt)
        self.sow("intermediates", "forward_resblocks_out", prev)
        out = _lrelu(_conv(c, 1, dtype=self.dtype, name="fusion")(jnp.concatenate([nxt, prev], axis=-1)))
        return out.reshape(b, t, h, w, c)


# --- residual blocks ------------------------------------------------------------------------------
class ResidualBlock(nn.Module):
    """ResidualBlockNoBN (BasicSR and mmediting alike): x + conv2(relu(conv1(x)))."""

    channels: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = jax.nn.relu(_conv(self.channels, dtype=self.dtype, init=_residual_init, name="conv1")(x))
        return x + _conv(self.channels, dtype=self.dtype, init=_residual_init, name="conv2")(y)


class ResidualStack(nn.Module):
    channels: int = 64
    num_blocks: int = 30
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_blocks):
            x = ResidualBlock(self.channels, self.dtype, name=f"block{i}")(x)
        return x


class ResidualBlocksWithInputConv(nn.Module):
    """mmediting's ResidualBlocksWithInputConv: conv(in -> C) + LeakyReLU(0.1) + residual blocks."""

    channels: int = 64
    num_blocks: int = 30
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = _lrelu(_conv(self.channels, dtype=self.dtype, name="conv_in")(x))
        return ResidualStack(self.channels, self.num_blocks, self.dtype, name="blocks")(x)


# --- checkpoint mapping ---------------------------------------------------------------------------
INV_FREQ_KEY = "pos_embedding.penc.inv_freq"


def _residual_stack(sd, prefix: str, n: int) -> dict:
    return {f"block{i}": {"conv1": sd.conv(f"{prefix}.{i}.conv1"), "conv2": sd.conv(f"{prefix}.{i}.conv2")}
            for i in range(n)}


def _layer_norm(sd, prefix: str) -> dict:
    chw_to_hwc = lambda a: np.moveaxis(a, 0, -1) if a.ndim == 3 else a  # noqa: E731
    return {"scale": sd.tensor(f"{prefix}.weight", chw_to_hwc), "bias": sd.tensor(f"{prefix}.bias", chw_to_hwc)}


def stcsa_from_torch_params(sd, prefix: str = "") -> dict:
    p = f"{prefix}." if prefix else ""
    return {name: sd.conv(f"{p}{name}") for name in ("to_q", "to_k", "to_v", "conv")}


def _check_inv_freq(sd, num_frames: int):
    """The inv_freq buffer is a constant of num_frames: consumed when present, and it must fit."""
    if INV_FREQ_KEY not in sd:
        return
    got = np.asarray(sd.raw(INV_FREQ_KEY), np.float32).reshape(-1)
    expected = inv_freq(num_frames)
    if got.shape == expected.shape and np.allclose(got, expected, rtol=1e-6, atol=0):
        return
    hint = ""
    if got.size:
        n = got.size
        hint = (f"; it belongs to a model built for num_frames {6 * n - 5}..{6 * n}"
                + (" (the Vimeo-90K configuration: model 'vsr_transformer_vimeo', or num_frames=7)" if n == 2 else "")
                + (" (the REDS configuration: model 'vsr_transformer', num_frames=5)" if n == 1 else ""))
    raise CheckpointError(
        f"checkpoint buffer {INV_FREQ_KEY} = {got.tolist()} does not fit this model's num_frames={num_frames} "
        f"(expects {expected.tolist()}){hint}")


def from_torch(sd, model: VSRTransformer) -> dict:
    _check_inv_freq(sd, model.num_frames)
    layers = {}
    for i in range(model.depth):
        p = f"transformer.layers.{i}"
        ffn = {}
        for branch in ("backward_resblocks", "forward_resblocks"):
            q = f"{p}.1.fn.fn.{branch}.main"
            ffn[branch] = {"conv_in": sd.conv(f"{q}.0"), "blocks": _residual_stack(sd, f"{q}.2", model.num_ffn_blocks)}
        ffn["fusion"] = sd.conv(f"{p}.1.fn.fn.fusion")
        layers[f"layer{i}"] = {
            "attn_norm": _layer_norm(sd, f"{p}.0.fn.norm"),
            "attention": stcsa_from_torch_params(sd, f"{p}.0.fn.fn"),
            "ffn_norm": _layer_norm(sd, f"{p}.1.fn.norm"),
            "ffn": ffn,
        }
    params = {
        "conv_first": sd.conv("conv_first"),
        "feature_extraction": _residual_stack(sd, "feature_extraction", model.num_extract_blocks),
        "spynet": spynet_from_torch(sd, "spynet.spynet"),
        **layers,
        "reconstruction": _residual_stack(sd, "reconstruction", model.num_reconstruct_blocks),
        **{name: sd.conv(name) for name in ("upconv1", "upconv2", "conv_hr", "conv_last")},
    }
    return {"params": params}


_COUNTED = {  # option -> regex over the keys; its group is the counted index
    "depth": re.compile(r"^transformer\.layers\.(\d+)\."),
    "num_extract_blocks": re.compile(r"^feature_extraction\.(\d+)\.conv1\.weight$"),
    "num_reconstruct_blocks": re.compile(r"^reconstruction\.(\d+)\.conv1\.weight$"),
    "num_ffn_blocks": re.compile(
        r"^transformer\.layers\.0\.1\.fn\.fn\.backward_resblocks\.main\.2\.(\d+)\.conv1\.weight$"),
}


def options_from_state_dict(state_dict: Mapping[str, Any]) -> dict:
    """Depth and residual-block counts of an (unwrapped) official state_dict, for `models.build`.

    Only the options whose keys are present are returned (an unrelated checkpoint gives {} and the
    converter then names its missing / unexpected keys). num_frames is not recorded in the weights
    beyond the inv_freq buffer, which `from_torch` checks.
    """
    keys = [k[len("module."):] if k.startswith("module.") else k for k in state_dict]
    out = {}
    for option, pattern in _COUNTED.items():
        found = [int(m.group(1)) for k in keys if (m := pattern.match(k))]
        if found:
            out[option] = max(found) + 1
    return out


def example_inputs(model: VSRTransformer):
    return (jnp.zeros((1, model.num_frames, model.feat_size, model.feat_size, 3), jnp.float32),)


register("vsr_transformer", VSRTransformer, from_torch, example_inputs, kind="super_resolution",
         options_from_state_dict=options_from_state_dict,
         description="VSR-Transformer x4 (REDS configuration: 5 frames, depth 5), 64x64 LR crops in [0, 1]")
register("vsr_transformer_vimeo", VSRTransformer, from_torch, example_inputs, kind="super_resolution",
         options_from_state_dict=options_from_state_dict, defaults=dict(num_frames=7, depth=7),
         description="VSR-Transformer x4 (Vimeo-90K / Vid4 configuration: 7 frames, depth 7)")


# --- the attention alone (parity fixture vsr_transformer_stcsa) ----------------------------------
def _stcsa_from_torch(sd, model: STCSA) -> dict:
    return {"params": stcsa_from_torch_params(sd)}


def _stcsa_example_inputs(model: STCSA):
    s = 8 * model.patch_size
    return (jnp.zeros((1, 2, s, s, model.channels), jnp.float32),)


register("vsr_transformer_stcsa", STCSA, _stcsa_from_torch, _stcsa_example_inputs, kind="block",
         description="VSR-Transformer's spatio-temporal convolutional self-attention (globalAttention) alone")
