"""ECFormer: our video-inpainting transformer (this package's own model; see docs/ecformer.md).

    frames = models.build("ecformer").apply(variables, masked_frames)

masked_frames (B, T, H, W, 3) in [-1, 1] with holes at 0 (the mask is not an input), H and W multiples
of 4, any clip length; output (B, T, H, W, 3) after tanh - the call of "fuseformer".

The FuseFormer pipeline (encoder -> soft split -> positional encoding -> transformer blocks -> soft
composition + residual -> decoder) with three changes and one option:
  * kNN attention: each query attends only to its `topk` best-scoring keys (softmax over those);
    `topk=None` (or topk >= number of tokens) is FuseFormer's dense attention.
  * channel attention: a squeeze-and-excitation gate over the token channels (per frame) after the
    fusion feed-forward network.
  * a fixed sinusoidal spatio-temporal positional encoding instead of a learned table, and a per-channel
    soft-composition bias instead of a per-pixel one: no parameter depends on the frame size or T.
  * `binarize=True`: encoder / decoder convs (except the RGB-facing first and last) and the attention
    projections become binary (sign weights with a per-channel scale, sign activations, straight-through
    gradients; layers/binary.py), with the same parameter names and shapes as the float model.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecformer_jax.errors import CheckpointError
from ecformer_jax.layers import binary
from ecformer_jax.layers.attention import merge_heads, split_heads, topk_attention
from ecformer_jax.layers.checks import check_video
from ecformer_jax.layers.conv import grouped_concat, leaky_relu
from ecformer_jax.layers.feedforward import FusionFeedForward
from ecformer_jax.layers.patches import PatchDense, fold, grid_size, unfold
from ecformer_jax.layers.positional import PositionalEncoding
from ecformer_jax.layers.remat import block_class
from ecformer_jax.models import discriminators, fuseformer
from ecformer_jax.models.discriminators import Discriminator
from ecformer_jax.models.registry import SizeRule, register

__all__ = ["ECFormer", "Encoder", "SoftSplit", "SoftComp", "AddPosEmb", "MultiHeadedAttention", "FeedForward",
           "FusionFeedForward", "ChannelAttention", "kNNAttention", "PositionalEncoding", "TransformerBlock",
           "Discriminator"]


class ECFormer(nn.Module):
    hidden: int = 512
    heads: int = 4
    num_blocks: int = 8
    topk: int | None = 512  # keys kept per query; None = dense attention
    kernel: int = 7
    stride: int = 3
    padding: int = 3
    ffn_hidden: int = 1960
    se_reduction: int = 16
    binarize: bool = False
    dtype: Any = jnp.float32
    remat: bool = False  # rematerialise each block in the backward pass (saves training memory)

    @nn.compact
    def __call__(self, masked_frames):
        b, t, height, width, _ = check_video(masked_frames, "masked_frames", 3)
        if height % 4 or width % 4:
            raise ValueError(f"ECFormer needs frame sizes that are multiples of 4; got {height}x{width}")
        if self.hidden % self.heads:
            raise ValueError(f"ECFormer: hidden={self.hidden} must be divisible by heads={self.heads}")
        h, w = height // 4, width // 4
        k, s, p = self.kernel, self.stride, self.padding
        nh, nw = grid_size(h, w, k, s, p)

        enc = Encoder(self.dtype, self.binarize, name="encoder")(
            masked_frames.astype(self.dtype).reshape(b * t, height, width, 3))
        self.sow("intermediates", "encoder_out", enc)
        tokens = SoftSplit(self.hidden, k, s, p, self.dtype, name="ss")(enc)
        tokens = AddPosEmb(self.dtype, name="add_pos_emb")(tokens.reshape(b, t, nh, nw, self.hidden))
        tokens = tokens.reshape(b, t * nh * nw, self.hidden)
        block_cls = block_class(TransformerBlock, self.remat, (2,))
        for i in range(self.num_blocks):
            tokens = block_cls(self.hidden, self.heads, self.topk, self.ffn_hidden, (h, w), k, s, p,
                               self.se_reduction, self.binarize, self.dtype, name=f"block{i}")(tokens, t)
            self.sow("intermediates", f"transformer.{i}", tokens)
        sc = SoftComp(enc.shape[-1], k, s, p, self.dtype, name="sc")(tokens.reshape(b * t, nh, nw, self.hidden),
                                                                      (h, w))
        y = binary.BinaryDecoder(self.dtype, self.binarize, name="decoder")(enc + sc)
        return jnp.tanh(y).reshape(b, t, height, width, 3)


class Encoder(nn.Module):
    """FuseFormer's encoder (same layers and parameter names); `binarize` swaps every conv but the first."""

    dtype: Any = jnp.float32
    binarize: bool = False

    @nn.compact
    def __call__(self, x):
        for i, (features, stride) in enumerate(((64, 2), (64, 1), (128, 2), (256, 1), (384, 1))):
            x = leaky_relu(binary.conv2d(features, 3, stride, dtype=self.dtype, name=f"conv{i}",
                                         binarize=self.binarize and i > 0)(x))
            if i == 3:
                x0 = x
        for i, (features, groups) in enumerate(((512, 2), (384, 4), (256, 8), (128, 1)), start=5):
            x = grouped_concat(x0, x, groups)
            x = leaky_relu(binary.conv2d(features, 3, groups=groups, dtype=self.dtype, name=f"conv{i}",
                                         binarize=self.binarize)(x))
        return x


class SoftSplit(nn.Module):
    """Overlapping k x k patches (stride s, padding p) of the feature map -> Linear(C k^2 -> hidden)."""

    hidden: int
    kernel: int
    stride: int
    padding: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):  # (N, h, w, C) -> (N, nh, nw, hidden)
        return PatchDense(self.hidden, self.kernel ** 2, "in", self.dtype, name="embedding")(
            unfold(x, self.kernel, self.stride, self.padding))


class SoftComp(nn.Module):
    """Linear(hidden -> C k^2) per token, fold (overlaps summed) back to the map, + a per-channel bias."""

    channels: int
    kernel: int
    stride: int
    padding: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens, output_size):  # (N, nh, nw, hidden) -> (N, h, w, C)
        k = self.kernel
        patches = PatchDense(self.channels * k * k, k * k, "out", self.dtype, name="embedding")(tokens)
        y = fold(patches, tuple(output_size), k, self.stride, self.padding)
        return y + self.param("bias", nn.initializers.zeros, (self.channels,), jnp.float32).astype(self.dtype)


class AddPosEmb(nn.Module):
    """Adds the fixed sinusoidal (t, row, column) encoding of layers/positional.py; no parameters."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens):  # (B, T, nh, nw, C)
        return PositionalEncoding(self.dtype)(tokens)


class kNNAttention(nn.Module):  # noqa: N801 - the name of the part in the paper's figure
    """Scaled dot-product attention keeping, per query, only the `topk` best keys (layers.attention)."""

    topk: int | None = None

    def __call__(self, q, k, v):
        return topk_attention(q, k, v, self.topk)


class MultiHeadedAttention(nn.Module):
    """q / k / v Linear projections, kNN attention per head over all tokens of the clip, output Linear.
    The four projections are binary when `binarize`."""

    dim: int
    heads: int
    topk: int | None = None
    binarize: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):  # (B, N, C)
        proj = lambda name: binary.dense(self.dim, self.dtype, name, self.binarize)
        q, k, v = (split_heads(proj(n)(x), self.heads) for n in ("query", "key", "value"))
        out = kNNAttention(self.topk)(q, k, v)
        return proj("out")(merge_heads(out))


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation over the token channels: per frame, mean over its tokens -> Linear(C ->
    C / r) -> ReLU -> Linear(C / r -> C) -> sigmoid, which scales every token's channels."""

    dim: int
    reduction: int = 16
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, frames: int):  # (B, T * n, C)
        b, n, c = x.shape
        if n % frames:
            raise ValueError(f"ChannelAttention: {n} tokens do not split into {frames} frames")
        per_frame = x.reshape(b, frames, n // frames, c)
        s = per_frame.astype(jnp.float32).mean(axis=2).astype(self.dtype)
        s = jax.nn.relu(nn.Dense(max(1, c // self.reduction), dtype=self.dtype, name="fc1")(s))
        gate = jax.nn.sigmoid(nn.Dense(c, dtype=self.dtype, name="fc2")(s))
        return (per_frame * gate[:, :, None].astype(x.dtype)).reshape(b, n, c)


class FeedForward(nn.Module):
    """The feed-forward path: FuseFormer's fusion FFN (F3N), then channel attention."""

    dim: int
    ffn_hidden: int
    feature_size: tuple
    kernel: int
    stride: int
    padding: int
    se_reduction: int = 16
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, frames: int):
        y = FusionFeedForward(self.dim, self.ffn_hidden, self.kernel, self.stride, self.padding, dtype=self.dtype,
                              name="f3n")(x, self.feature_size)
        return ChannelAttention(self.dim, self.se_reduction, self.dtype, name="channel_attention")(y, frames)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + MultiHeadedAttention(LN(x)); x + FeedForward(LN(x)). Tokens (B, T * n, C)."""

    dim: int
    heads: int
    topk: int | None
    ffn_hidden: int
    feature_size: tuple
    kernel: int
    stride: int
    padding: int
    se_reduction: int = 16
    binarize: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, frames: int):
        ln = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)
        x = x + MultiHeadedAttention(self.dim, self.heads, self.topk, self.binarize, self.dtype,
                                     name="attention")(ln("norm1")(x))
        return x + FeedForward(self.dim, self.ffn_hidden, self.feature_size, self.kernel, self.stride, self.padding,
                               self.se_reduction, self.dtype, name="ffn")(ln("norm2")(x), frames)


# --- registration ---------------------------------------------------------------------------------
def no_checkpoint(sd, model):
    raise CheckpointError("ECFormer is this package's own model: no PyTorch checkpoint exists. Train it, or load "
                          "a converted ecformer_jax checkpoint with convert.load")


def example_inputs(model: ECFormer):
    return (jnp.zeros((1, 2, 48, 96, 3), jnp.float32),)


def ecformer_size(model: ECFormer) -> SizeRule:
    """No parameter depends on the frame size: the video's own size, padded to multiples of 4."""
    return SizeRule(None, (4, 4))


register("ecformer", ECFormer, no_checkpoint, example_inputs, kind="inpainting", size_rule=ecformer_size,
         protocol=fuseformer.PROTOCOL, discriminator="ecformer_discriminator",
         description="ECFormer (ours): FuseFormer pipeline + kNN attention, channel attention, sinusoidal "
                     "positions, optional binarization; any size (multiples of 4)")
register("ecformer_discriminator", Discriminator, discriminators.from_torch, discriminators.example_inputs,
         kind="discriminator", defaults={"nf": 32}, description="ECFormer's T-PatchGAN discriminator (nf=32)")
