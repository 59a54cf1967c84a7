"""DSTT: Decoupled Spatial-Temporal Transformer (Liu et al., 2021; ruiliu-ai/DSTT).

    frames = models.build("dstt").apply(variables, masked_frames)

masked_frames (B, T, H, W, 3) in [-1, 1] with holes at 0 (the mask is not an input); output
(B, T, H, W, 3) in [-1, 1].

The official model is bound to 240x432 frames: its temporal blocks cut the 20x36 token grid into
2x2 zones of 10x18 tokens and its de-tokeniser folds onto a 60x108 map. Unlike FuseFormer it has no
size-bound *parameter* (no positional embedding, no composition bias), so `resize_embeddings=True`
has nothing to interpolate: it only lifts the size check, and the token grid, its 2x2 zones and the
fold size then follow the input (sizes must be multiples of 4 whose token grid splits evenly into
the zones, e.g. 120x216). The option keeps FuseFormer's name so callers can treat both alike.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecformer_jax.layers.attention import dot_product_attention, merge_heads, split_heads
from ecformer_jax.layers.checks import check_video
from ecformer_jax.layers.conv import Decoder, conv2d, decoder_from_torch, grouped_concat, leaky_relu, normal_init
from ecformer_jax.layers.patches import PatchDense, fold, grid_size
from ecformer_jax.layers.remat import block_class
from ecformer_jax.models.registry import ProtocolDefaults, SizeRule, register


class DSTT(nn.Module):
    """Stem -> hierarchical encoder -> conv tokeniser -> 8 blocks alternating temporally- ('t', even
    blocks) and spatially- ('s', odd blocks) decoupled attention -> linear + fold (summed) + residual
    -> decoder -> tanh. No positional embedding."""

    hidden: int = 512
    heads: int = 4
    num_blocks: int = 8
    kernel: int = 7
    stride: int = 3
    padding: int = 3
    zones: tuple = (2, 2)  # zones per token-grid axis of the temporal ('t') attention
    base_size: tuple = (240, 432)  # the frame size the official model hard-codes
    resize_embeddings: bool = False
    dtype: Any = jnp.float32
    remat: bool = False  # rematerialise each block in the backward pass (saves training memory)

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        return grid_size(height // 4, width // 4, self.kernel, self.stride, self.padding)

    def check_size(self, height: int, width: int):
        if height % 4 or width % 4:
            raise ValueError(f"DSTT needs frame sizes that are multiples of 4; got {height}x{width}")
        if (height, width) != tuple(self.base_size) and not self.resize_embeddings:
            bh, bw = self.base_size
            nh, nw = self.token_grid(bh, bw)
            zh, zw = self.zones
            raise ValueError(
                f"DSTT is built for {bh}x{bw} frames (a {nh}x{nw} token grid cut into {zh}x{zw} zones of "
                f"{nh // zh}x{nw // zw} tokens, folded back onto a {bh // 4}x{bw // 4} map); got {height}x{width}. "
                "Resize the video to that size (the inpaint command does), or build the model with "
                "resize_embeddings=True to derive the token grid and zones from the input size "
                "(DSTT has no size-bound weights to interpolate)."
            )
        nh, nw = self.token_grid(height, width)
        zh, zw = self.zones
        if nh % zh or nw % zw:
            raise ValueError(
                f"DSTT cannot run on {height}x{width} frames: their {nh}x{nw} token grid does not split into "
                f"{zh}x{zw} equal zones for the temporal attention (both grid sides must be divisible by the "
                "zone counts; e.g. 240x432 or 120x216 work)."
            )

    @nn.compact
    def __call__(self, masked_frames):
        b, t, height, width, _ = check_video(masked_frames, "masked_frames", 3)
        self.check_size(height, width)
        k, s, p = self.kernel, self.stride, self.padding
        nh, nw = self.token_grid(height, width)

        x = masked_frames.astype(self.dtype).reshape(b * t, height, width, 3)
        x0 = Stem(self.dtype, name="encoder")(x)
        enc = HierarchyEncoder(self.dtype, name="hier_enc")(x0)
        self.sow("intermediates", "hier_enc_out", enc)
        h, w, c = enc.shape[1:]

        # tokeniser: a plain strided conv, flattened row-major (token = row * nw + col)
        tokens = conv2d(self.hidden, k, s, p, dtype=self.dtype, name="patch2vec")(enc)
        tokens = tokens.reshape(b * t, nh * nw, self.hidden)

        block_cls = block_class(TransformerBlock, self.remat, (2,))
        for i in range(self.num_blocks):
            mode = "t" if i % 2 == 0 else "s"
            tokens = block_cls(self.hidden, self.heads, mode, (nh, nw), self.zones, self.dtype,
                               name=f"block{i}")(tokens, t)
            self.sow("intermediates", f"transformer.{i}", tokens)

        # de-tokeniser: linear to k x k patches, overlaps summed, no bias map, no normalisation
        patches = PatchDense(c * k * k, k * k, "out", self.dtype, name="vec2patch")(tokens)
        trans = fold(patches.reshape(b * t, nh, nw, c * k * k), (h, w), k, s, p)
        self.sow("intermediates", "vec2patch_out", trans)

        y = Decoder(self.dtype, name="decoder")(enc + trans)
        self.sow("intermediates", "decoder_out", y)
        return jnp.tanh(y).reshape(b, t, height, width, 3)


class Stem(nn.Module):
    """Four 3x3 convs with LeakyReLU: x4 down, 256 channels."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i, (features, stride) in enumerate(((64, 2), (64, 1), (128, 2), (256, 1))):
            x = leaky_relu(conv2d(features, 3, stride, dtype=self.dtype, name=f"conv{i}")(x))
        return x


class HierarchyEncoder(nn.Module):
    """A 256->256 conv on the stem output x0, then four convs whose input is x0 and the current
    activation interleaved group by group (groups 2, 4, 8, 1; x0 slice first). Output 128 channels."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x0):
        a = leaky_relu(conv2d(256, 3, dtype=self.dtype, name="conv0")(x0))
        for i, (features, groups) in enumerate(((256, 2), (256, 4), (256, 8), (128, 1)), start=1):
            a = grouped_concat(x0, a, groups)
            a = leaky_relu(conv2d(features, 3, groups=groups, dtype=self.dtype, name=f"conv{i}")(a))
        return a


class TransformerBlock(nn.Module):
    """x = LN1(x); x = x + Attn(x); x = x + FFN(LN2(x)).

    The attention residual is taken from the *normalised* tensor (official quirk): the raw block
    input never reaches the output directly."""

    hidden: int
    heads: int
    mode: str  # 't' | 's'
    token_grid: tuple
    zones: tuple = (2, 2)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, frames: int):
        ln = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)
        x = ln("norm1")(x)
        x = x + DecoupledAttention(self.hidden, self.heads, self.mode, self.token_grid, self.zones, self.dtype,
                                   name="attention")(x, frames)
        y = ln("norm2")(x)
        y = nn.Dense(4 * self.hidden, dtype=self.dtype, kernel_init=normal_init, name="fc1")(y)
        y = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=normal_init, name="fc2")(jax.nn.relu(y))
        return x + y


class DecoupledAttention(nn.Module):
    """Multi-head attention over (B*T, N, C) tokens of a (nh, nw) grid, no mask, no positional term.

    's': each frame attends over its own N tokens.
    't': the grid is cut into zones[0] x zones[1] equal zones; every zone attends over its tokens in
         all T frames of the sample (never outside the zone)."""

    dim: int
    heads: int
    mode: str
    token_grid: tuple
    zones: tuple = (2, 2)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, frames: int):
        if self.mode not in ("s", "t"):
            raise ValueError(f"DecoupledAttention mode must be 's' or 't'; got {self.mode!r}")
        bt, n, c = x.shape
        if bt % frames:
            raise ValueError(f"DecoupledAttention: {bt} token maps are not a whole number of {frames}-frame clips")
        nh, nw = self.token_grid
        if n != nh * nw:
            raise ValueError(f"DecoupledAttention: {n} tokens per frame do not form the {nh}x{nw} token grid")
        dense = lambda name: nn.Dense(self.dim, dtype=self.dtype, kernel_init=normal_init, name=name)
        q, k, v = (dense(name)(x) for name in ("query", "key", "value"))
        if self.mode == "s":
            out = merge_heads(dot_product_attention(*(split_heads(a, self.heads) for a in (q, k, v))))
        else:
            out = self._zone_attention(q, k, v, bt // frames, frames)
        return dense("out")(out)

    def _zone_attention(self, q, k, v, b, t):
        nh, nw = self.token_grid
        zh, zw = self.zones
        if nh % zh or nw % zw:
            raise ValueError(f"DecoupledAttention: a {nh}x{nw} token grid does not split into {zh}x{zw} zones")
        rh, rw = nh // zh, nw // zw
        c = q.shape[-1]

        def gather(a):  # (b*t, n, c) -> (b, zh, zw, t*rh*rw, c): zone-major, tokens in (t, r, col) order
            a = a.reshape(b, t, zh, rh, zw, rw, c).transpose(0, 2, 4, 1, 3, 5, 6)
            return a.reshape(b, zh, zw, t * rh * rw, c)

        out = merge_heads(dot_product_attention(*(split_heads(gather(a), self.heads) for a in (q, k, v))))
        out = out.reshape(b, zh, zw, t, rh, rw, c).transpose(0, 3, 1, 4, 2, 5, 6)
        return out.reshape(b * t, nh * nw, c)


# --- checkpoint mapping ---------------------------------------------------------------------------
def from_torch(sd, model: DSTT) -> dict:
    params = {
        "encoder": {f"conv{i}": sd.conv(f"encoder.{2 * i}") for i in range(4)},
        "hier_enc": {f"conv{i}": sd.conv(f"hier_enc.layers.{2 * i}") for i in range(5)},
        "patch2vec": sd.conv("patch2vec"),
    }
    for i in range(model.num_blocks):
        p = f"transformer.{i}"
        params[f"block{i}"] = {
            "attention": {
                "query": sd.linear(f"{p}.attention.query_embedding"),
                "key": sd.linear(f"{p}.attention.key_embedding"),
                "value": sd.linear(f"{p}.attention.value_embedding"),
                "out": sd.linear(f"{p}.attention.output_linear"),
            },
            "fc1": sd.linear(f"{p}.ffn.conv.0"),
            "fc2": sd.linear(f"{p}.ffn.conv.3"),
            "norm1": sd.norm(f"{p}.norm1"),
            "norm2": sd.norm(f"{p}.norm2"),
        }
    # the 6272 outputs are channel-major (c * 49 + ky * 7 + kx); PatchDense permutes them to fold's tap-major order
    params["vec2patch"] = sd.linear("vec2patch.embedding")
    params["decoder"] = decoder_from_torch(sd)
    return {"params": params}


def example_inputs(model: DSTT):
    return (jnp.zeros((1, 1, *model.base_size, 3), jnp.float32),)


def dstt_size(model: DSTT) -> SizeRule:
    """240x432 (the official test.py); with resize_embeddings the video's own size, padded so that the token
    grid splits into the temporal zones (multiples of 4 * stride * zones: 24 with the official settings)."""
    if not model.resize_embeddings:
        return SizeRule(tuple(model.base_size), (4, 4))
    zh, zw = model.zones
    return SizeRule(None, (4 * model.stride * zh, 4 * model.stride * zw))


register("dstt", DSTT, from_torch, example_inputs, kind="inpainting", size_rule=dstt_size,
         protocol=ProtocolDefaults("dstt"), discriminator="dstt_discriminator",
         description="DSTT generator (decoupled spatial-temporal transformer), 240x432")
