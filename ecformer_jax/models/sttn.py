"""STTN: Spatial-Temporal Transformer Network (Zeng et al., ECCV 2020; researchmm/STTN).

    frames = models.build("sttn").apply(variables, masked_frames, masks)

masked_frames (B, T, H, W, 3) in [-1, 1] with holes at 0, masks (B, T, H, W, 1) with 1 = hole;
output (B, T, H, W, 3) in [-1, 1]. As in the official code the masks do not change the output (the
attention's masked_fill is discarded there); they are checked for shape only.

`binarize=True` (not in the official model) makes the encoder / decoder convs (except the RGB-facing
first and last) and the attention projections binary (layers/binary.py: sign weights with a
per-channel scale, sign activations, straight-through gradients). The parameters keep their names and
shapes, so a float checkpoint initialises the binarized model for fine-tuning.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ecformer_jax.layers import binary
from ecformer_jax.layers.attention import dot_product_attention
from ecformer_jax.layers.checks import check_same_clip, check_video
from ecformer_jax.layers.conv import Decoder, conv2d, decoder_from_torch, leaky_relu
from ecformer_jax.layers.remat import block_class
from ecformer_jax.models.registry import ProtocolDefaults, SizeRule, register

# (height, width) of each attention scale in feature pixels; the official list is written (w, h).
OFFICIAL_PATCH_SIZES = ((60, 108), (20, 36), (10, 18), (5, 9))
OFFICIAL_SIZE = (240, 432)  # (H, W) the official test.py resizes frames to


class STTN(nn.Module):
    """Generator: CNN encoder -> 8 multi-scale patch-attention blocks -> CNN decoder -> tanh."""

    channels: int = 256
    num_blocks: int = 8
    patch_sizes: tuple = OFFICIAL_PATCH_SIZES
    dtype: Any = jnp.float32
    binarize: bool = False  # binary encoder / decoder convs and attention projections (not official)
    remat: bool = False  # rematerialise each block in the backward pass (saves training memory)

    def size_multiple(self) -> tuple[int, int]:
        """(mh, mw): every attention patch size tiles the H/4 x W/4 feature map iff H, W are multiples of
        4 x the lcm of the patch heights / widths."""
        return 4 * math.lcm(*(p[0] for p in self.patch_sizes)), 4 * math.lcm(*(p[1] for p in self.patch_sizes))

    def check_size(self, height: int, width: int):
        mh, mw = self.size_multiple()
        if height % mh or width % mw:
            raise ValueError(
                f"STTN cannot run on {height}x{width} frames: its attention patches {list(self.patch_sizes)} "
                f"(h, w in feature pixels) must tile the {height / 4:g}x{width / 4:g} feature map; with these "
                f"patch sizes H must be a multiple of {mh} and W of {mw} (e.g. 240x432, 480x864). "
                "Resize the video (the inpaint command does), or build the model with patch_sizes=... that "
                "divide H/4 x W/4."
            )

    @nn.compact
    def __call__(self, masked_frames, masks=None):
        b, t, height, width, _ = check_video(masked_frames, "masked_frames", 3)
        if masks is not None:
            check_video(masks, "masks", 1)
            check_same_clip(masked_frames, masks)
        self.check_size(height, width)
        x = masked_frames.astype(self.dtype).reshape(b * t, height, width, 3)
        x = Encoder(self.channels, self.dtype, self.binarize, name="encoder")(x)
        self.sow("intermediates", "encoder_out", x)
        x = x.reshape(b, t, *x.shape[1:])
        block_cls = block_class(TransformerBlock, self.remat)
        for i in range(self.num_blocks):
            x = block_cls(self.channels, self.patch_sizes, self.dtype, self.binarize, name=f"block{i}")(x)
            self.sow("intermediates", f"transformer.{i}", x)
        if self.binarize:
            decoder = binary.BinaryDecoder(self.dtype, binarize=True, name="decoder")
        else:
            decoder = Decoder(self.dtype, name="decoder")
        x = decoder(x.reshape(b * t, *x.shape[2:]))
        self.sow("intermediates", "decoder_out", x)
        return jnp.tanh(x).reshape(b, t, height, width, 3)


class Encoder(nn.Module):
    channels: int = 256
    dtype: Any = jnp.float32
    binarize: bool = False  # binary convs after the first

    @nn.compact
    def __call__(self, x):
        for i, (features, stride) in enumerate(((64, 2), (64, 1), (128, 2), (self.channels, 1))):
            x = leaky_relu(binary.conv2d(features, 3, stride, dtype=self.dtype, name=f"conv{i}",
                                         binarize=self.binarize and i > 0)(x))
        return x


class TransformerBlock(nn.Module):
    """x + MSA(x), then x + FFN(x); no norms, every branch ends in LeakyReLU."""

    channels: int
    patch_sizes: tuple
    dtype: Any = jnp.float32
    binarize: bool = False  # binary attention projections

    @nn.compact
    def __call__(self, x):  # (B, T, h, w, C)
        b, t, h, w, c = x.shape
        x = x + MultiScalePatchAttention(self.channels, self.patch_sizes, self.dtype, self.binarize,
                                         name="attention")(x)
        y = x.reshape(b * t, h, w, c)
        y = leaky_relu(conv2d(c, 3, dilation=2, dtype=self.dtype, name="ffn0")(y))
        y = leaky_relu(conv2d(c, 3, dtype=self.dtype, name="ffn1")(y))
        return x + y.reshape(x.shape)


class MultiScalePatchAttention(nn.Module):
    """Channels split into len(patch_sizes) groups; group s attends over patches of size patch_sizes[s]
    of all frames of the sample (one head per scale, scale 1/sqrt(patch vector length))."""

    channels: int
    patch_sizes: tuple
    dtype: Any = jnp.float32
    binarize: bool = False  # binary query / key / value projections and output conv

    @nn.compact
    def __call__(self, x):
        b, t, h, w, c = x.shape
        proj = lambda name: binary.dense(c, self.dtype, name, self.binarize)
        q, k, v = proj("query")(x), proj("key")(x), proj("value")(x)
        d = c // len(self.patch_sizes)
        outs = []
        for s, (ph, pw) in enumerate(self.patch_sizes):
            part = slice(s * d, (s + 1) * d)
            tokens = [patches_to_tokens(a[..., part], ph, pw) for a in (q, k, v)]
            o = dot_product_attention(*tokens, scale=(d * ph * pw) ** -0.5)
            outs.append(tokens_to_patches(o, (b, t, h, w, d), ph, pw))
        y = jnp.concatenate(outs, axis=-1).reshape(b * t, h, w, c)
        y = leaky_relu(binary.conv2d(c, 3, dtype=self.dtype, name="out", binarize=self.binarize)(y))
        return y.reshape(b, t, h, w, c)


def patches_to_tokens(x, ph: int, pw: int):
    """(B, T, h, w, d) -> (B, T * nh * nw, ph * pw * d): one token per patch of one frame."""
    b, t, h, w, d = x.shape
    x = x.reshape(b, t, h // ph, ph, w // pw, pw, d).transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, t * (h // ph) * (w // pw), ph * pw * d)


def tokens_to_patches(x, shape, ph: int, pw: int):
    b, t, h, w, d = shape
    x = x.reshape(b, t, h // ph, w // pw, ph, pw, d).transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(shape)


# --- checkpoint mapping ---------------------------------------------------------------------------
def from_torch(sd, model: STTN) -> dict:
    enc = {f"conv{i}": sd.conv(f"encoder.{2 * i}") for i in range(4)}
    blocks = {}
    for i in range(model.num_blocks):
        p = f"transformer.{i}"
        blocks[f"block{i}"] = {
            "attention": {
                "query": sd.linear(f"{p}.attention.query_embedding"),
                "key": sd.linear(f"{p}.attention.key_embedding"),
                "value": sd.linear(f"{p}.attention.value_embedding"),
                "out": sd.conv(f"{p}.attention.output_linear.0"),
            },
            "ffn0": sd.conv(f"{p}.feed_forward.conv.0"),
            "ffn1": sd.conv(f"{p}.feed_forward.conv.2"),
        }
    return {"params": {"encoder": enc, **blocks, "decoder": decoder_from_torch(sd)}}


def example_inputs(model: STTN):
    h, w = model.size_multiple()
    return jnp.zeros((1, 1, h, w, 3), jnp.float32), jnp.zeros((1, 1, h, w, 1), jnp.float32)


def sttn_size(model: STTN) -> SizeRule:
    """432x240 (the official test.py); other patch sizes: pad to the multiples they tile (size_multiple)."""
    mh, mw = model.size_multiple()
    fixed = OFFICIAL_SIZE if OFFICIAL_SIZE[0] % mh == 0 and OFFICIAL_SIZE[1] % mw == 0 else (mh, mw)
    return SizeRule(fixed, (mh, mw))


register("sttn", STTN, from_torch, example_inputs, kind="inpainting", inputs=("masked_frames", "masks"),
         size_rule=sttn_size, protocol=ProtocolDefaults("sttn"), discriminator="sttn_discriminator",
         description="STTN generator (ECCV 2020), 240x432")
