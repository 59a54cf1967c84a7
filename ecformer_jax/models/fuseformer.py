"""FuseFormer (Liu et al., ICCV 2021; ruiliu-ai/FuseFormer).

    frames = models.build("fuseformer").apply(variables, masked_frames)

masked_frames (B, T, H, W, 3) in [-1, 1] with holes at 0 (the mask is not an input); output
(B, T, H, W, 3). The official weights fix the size to 240x432 (a 720-entry positional embedding and
a per-pixel composition bias of 60x108); `resize_embeddings=True` interpolates both (bilinear) so
other sizes (multiples of 4) run.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ecformer_jax.layers.attention import MultiHeadAttention
from ecformer_jax.layers.checks import check_video
from ecformer_jax.layers.conv import Decoder, Encoder, decoder_from_torch, encoder_from_torch
from ecformer_jax.layers.feedforward import FusionFeedForward
from ecformer_jax.layers.patches import grid_size, soft_composition, soft_split
from ecformer_jax.layers.remat import block_class
from ecformer_jax.models.registry import ProtocolDefaults, SizeRule, register


class FuseFormer(nn.Module):
    """Encoder -> soft split -> positional embedding -> 8 blocks (global attention + fusion FFN)
    -> soft composition + residual -> decoder -> tanh."""

    hidden: int = 512
    heads: int = 4
    num_blocks: int = 8
    kernel: int = 7
    stride: int = 3
    padding: int = 3
    ffn_hidden: int = 1960
    base_size: tuple = (240, 432)  # frame size the positional embedding and composition bias belong to
    resize_embeddings: bool = False
    dtype: Any = jnp.float32
    remat: bool = False  # rematerialise each block in the backward pass (saves training memory)

    def check_size(self, height: int, width: int):
        if height % 4 or width % 4:
            raise ValueError(f"FuseFormer needs frame sizes that are multiples of 4; got {height}x{width}")
        if (height, width) != tuple(self.base_size) and not self.resize_embeddings:
            bh, bw = self.base_size
            nh, nw = grid_size(bh // 4, bw // 4, self.kernel, self.stride, self.padding)
            raise ValueError(
                f"FuseFormer's weights are made for {bh}x{bw} frames (a {(nh, nw)} "
                f"positional embedding and a {bh // 4}x{bw // 4} composition bias); got {height}x{width}. "
                "Resize the video to that size (the inpaint command does), or build the model with "
                "resize_embeddings=True to interpolate the embedding and bias to the new size."
            )

    @nn.compact
    def __call__(self, masked_frames):
        b, t, height, width, _ = check_video(masked_frames, "masked_frames", 3)
        self.check_size(height, width)
        h, w = height // 4, width // 4
        k, s, p = self.kernel, self.stride, self.padding
        nh, nw = grid_size(h, w, k, s, p)

        x = masked_frames.astype(self.dtype).reshape(b * t, height, width, 3)
        enc = Encoder(self.dtype, name="encoder")(x)
        self.sow("intermediates", "encoder_out", enc)
        c = enc.shape[-1]

        # soft split: overlapping patches -> tokens + positional embedding
        tokens = soft_split(self, enc, self.hidden, self.base_size, k, s, p, self.dtype)
        tokens = tokens.reshape(b, t * nh * nw, self.hidden)

        block_cls = block_class(FuseBlock, self.remat, (2,))
        for i in range(self.num_blocks):
            tokens = block_cls(self.hidden, self.heads, self.ffn_hidden, (h, w), k, s, p, self.dtype,
                               name=f"block{i}")(tokens, t)
            self.sow("intermediates", f"transformer.{i}", tokens)

        # soft composition: tokens -> patches, overlaps summed, plus a per-pixel bias
        sc = soft_composition(self, tokens.reshape(b * t, nh, nw, self.hidden), (h, w), c, self.base_size, k, s, p,
                              self.dtype)
        self.sow("intermediates", "sc_out", sc)

        y = Decoder(self.dtype, name="decoder")(enc + sc)
        self.sow("intermediates", "decoder_out", y)
        return jnp.tanh(y).reshape(b, t, height, width, 3)


class FuseBlock(nn.Module):
    """Pre-norm block: x + MHA(LN(x)); x + F3N(LN(x))."""

    hidden: int
    heads: int
    ffn_hidden: int
    feature_size: tuple
    kernel: int
    stride: int
    padding: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, frames: int):
        ln = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)
        x = x + MultiHeadAttention(self.hidden, self.heads, self.dtype, name="attention")(ln("norm1")(x))
        return x + FusionFeedForward(self.hidden, self.ffn_hidden, self.kernel, self.stride, self.padding,
                                     dtype=self.dtype, name="ffn")(ln("norm2")(x), self.feature_size)


# --- checkpoint mapping ---------------------------------------------------------------------------
def from_torch(sd, model: FuseFormer) -> dict:
    params = {"encoder": encoder_from_torch(sd)}
    for i in range(model.num_blocks):
        p = f"transformer.{i}"
        params[f"block{i}"] = {
            "attention": {
                "query": sd.linear(f"{p}.attention.query_embedding"),
                "key": sd.linear(f"{p}.attention.key_embedding"),
                "value": sd.linear(f"{p}.attention.value_embedding"),
                "out": sd.linear(f"{p}.attention.output_linear"),
            },
            "ffn": {"fc1": sd.linear(f"{p}.ffn.conv1.0"), "fc2": sd.linear(f"{p}.ffn.conv2.2")},
            "norm1": sd.norm(f"{p}.norm1"),
            "norm2": sd.norm(f"{p}.norm2"),
        }
    bh, bw = model.base_size[0] // 4, model.base_size[1] // 4
    nh, nw = grid_size(bh, bw, model.kernel, model.stride, model.padding)
    params["ss"] = sd.linear("ss.embedding")
    params["pos_emb"] = sd.tensor("add_pos_emb.pos_emb",
                                  lambda a: a.reshape(nh, nw, -1) if a.size == nh * nw * a.shape[-1] else a)
    params["sc"] = sd.linear("sc.embedding")
    params["sc_bias"] = sd.tensor("sc.bias", lambda a: a.transpose(1, 2, 0))
    params["decoder"] = decoder_from_torch(sd)
    return {"params": params}


def example_inputs(model: FuseFormer):
    return (jnp.zeros((1, 1, *model.base_size, 3), jnp.float32),)


# the official FuseFormer test.py; the mixer generators and ECFormer follow it too
PROTOCOL = ProtocolDefaults("fuseformer")


def fuseformer_size(model) -> SizeRule:
    """Weights made for one size (base_size, resize_embeddings=False): run there (240x432); with
    resize_embeddings=True the video's own size, padded to multiples of 4. Also the mixer generators' rule."""
    if not model.resize_embeddings:
        return SizeRule(tuple(model.base_size), (4, 4))
    return SizeRule(None, (4, 4))


register("fuseformer", FuseFormer, from_torch, example_inputs, kind="inpainting", size_rule=fuseformer_size,
         protocol=PROTOCOL, discriminator="fuseformer_discriminator",
         description="FuseFormer generator (ICCV 2021), 240x432")
