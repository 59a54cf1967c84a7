"""Video-inpainting generators with swappable token mixers: "poolformer", "swin", "focal".

    frames = models.build("swin").apply(variables, masked_frames)

masked_frames (B, T, H, W, 3) in [-1, 1] with holes at 0 (the mask is not an input), H and W multiples
of 4; output (B, T, H, W, 3) after tanh - the call of "fuseformer".

The FuseFormer pipeline (encoder, soft split 7x7 / stride 3 + Linear, per-frame positional embedding,
blocks, soft composition + per-pixel bias, decoder) with FuseFormer's pre-norm block
`x + Mixer(Norm(x))`, `x + F3N(Norm(x))`, where only the mixer differs (tokens (B, T, H', W', C)):

  * poolformer: spatio-temporal average pooling P(u) - u (count_include_pad=False), pool (kt, kh, kw)
    with kt = 0 meaning the whole clip; PoolFormer's GroupNorm(1) (per frame by default) for both norms
    and per-channel layer scale on both branches.
  * swin: 3-D shifted-window attention (Video-Swin): windows (Wt, Wh, Ww), odd blocks shifted by half
    a window, -100 band mask, relative position bias, per-axis clamp, zero padding to whole windows.
  * focal: E2FGVI's temporal focal attention (window tokens of all frames, rolled ring, "fc" pooled
    windows), zero-padded to whole windows.

Parameter names follow FuseFormer (encoder, ss, pos_emb, block{i}/norm1|norm2|ffn, sc, sc_bias, decoder;
the mixer lives under block{i}/mixer), so FuseFormer weights can initialise everything but the mixers.
There are no official checkpoints of these generators: `convert.from_torch` refuses them.
`resize_embeddings` defaults to True: the 20x36 positional embedding and 60x108 composition bias are
interpolated to other frame sizes.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from ecformer_jax.errors import CheckpointError
from ecformer_jax.layers.checks import check_video
from ecformer_jax.layers.conv import Decoder, Encoder
from ecformer_jax.layers.feedforward import FusionFeedForward
from ecformer_jax.layers.mixers import GroupNorm1, PoolMixer, TemporalFocalMixer, VideoSwinMixer
from ecformer_jax.layers.patches import grid_size, soft_composition, soft_split
from ecformer_jax.layers.remat import block_class
from ecformer_jax.models import fuseformer
from ecformer_jax.models.registry import register


class MixerGenerator(nn.Module):
    """FuseFormer pipeline with a swappable token mixer (subclasses choose it)."""

    hidden: int = 512
    num_blocks: int = 8
    kernel: int = 7
    stride: int = 3
    padding: int = 3
    ffn_hidden: int = 1960
    base_size: tuple = (240, 432)  # frame size the positional embedding and composition bias are made for
    resize_embeddings: bool = True
    dtype: Any = jnp.float32

    mixer_kind: ClassVar[str] = ""
    remat: bool = False  # rematerialise each block in the backward pass (saves training memory)

    def block_parts(self, i: int) -> tuple[Callable, Callable, float]:
        """(mixer factory, norm factory, layer-scale init or 0) of block i."""
        raise NotImplementedError

    def check_size(self, height: int, width: int):
        if height % 4 or width % 4:
            raise ValueError(f"the {self.mixer_kind} generator needs frame sizes that are multiples of 4; got "
                             f"{height}x{width}")
        if (height, width) != tuple(self.base_size) and not self.resize_embeddings:
            bh, bw = self.base_size
            raise ValueError(f"the {self.mixer_kind} generator was built for {bh}x{bw} frames with "
                             f"resize_embeddings=False; got {height}x{width}. Resize the video or build it with "
                             "resize_embeddings=True.")

    @nn.compact
    def __call__(self, masked_frames):
        b, t, height, width, _ = check_video(masked_frames, "masked_frames", 3)
        self.check_size(height, width)
        h, w = height // 4, width // 4
        k, s, p = self.kernel, self.stride, self.padding
        nh, nw = grid_size(h, w, k, s, p)

        enc = Encoder(self.dtype, name="encoder")(masked_frames.astype(self.dtype).reshape(b * t, height, width, 3))
        self.sow("intermediates", "encoder_out", enc)
        c = enc.shape[-1]
        tokens = soft_split(self, enc, self.hidden, self.base_size, k, s, p, self.dtype).reshape(b, t, nh, nw, -1)

        block_cls = block_class(MixerBlock, self.remat)
        for i in range(self.num_blocks):
            mixer, norm, layer_scale = self.block_parts(i)
            tokens = block_cls(mixer, norm, self.hidden, self.ffn_hidden, (h, w), k, s, p, layer_scale, self.dtype,
                               name=f"block{i}")(tokens)
            self.sow("intermediates", f"transformer.{i}", tokens)

        sc = soft_composition(self, tokens.reshape(b * t, nh, nw, self.hidden), (h, w), c, self.base_size, k, s, p,
                              self.dtype)
        self.sow("intermediates", "sc_out", sc)
        y = Decoder(self.dtype, name="decoder")(enc + sc)
        return jnp.tanh(y).reshape(b, t, height, width, 3)


class MixerBlock(nn.Module):
    """Pre-norm block on (B, T, H', W', C): x + ls1 * mixer(norm1(x)); x + ls2 * F3N(norm2(x))."""

    mixer: Callable  # (name=...) -> module mapping (B, T, H', W', C) to the same shape
    norm: Callable  # (name=...) -> normalisation module
    hidden: int
    ffn_hidden: int
    feature_size: tuple
    kernel: int
    stride: int
    padding: int
    layer_scale: float = 0.0  # initial value of the per-channel layer scales; 0 = none
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, t, nh, nw, c = x.shape
        scale = lambda y, name: (y * self.param(name, nn.initializers.constant(self.layer_scale), (c,))
                                 if self.layer_scale else y).astype(self.dtype)
        x = x + scale(self.mixer(name="mixer")(self.norm(name="norm1")(x)), "layer_scale_1")
        y = self.norm(name="norm2")(x).reshape(b, t * nh * nw, c)
        y = FusionFeedForward(self.hidden, self.ffn_hidden, self.kernel, self.stride, self.padding, dtype=self.dtype,
                              name="ffn")(y, self.feature_size)
        return x + scale(y.reshape(x.shape), "layer_scale_2")


def _layer_norm(dtype):
    return functools.partial(nn.LayerNorm, epsilon=1e-5, dtype=dtype)


class PoolFormerGenerator(MixerGenerator):
    """Mixer: spatio-temporal average pooling P(u) - u (no parameters)."""

    pool_size: tuple = (0, 3, 3)  # (kt, kh, kw), odd; 0 = the whole axis (kt = 0: the clip mean)
    norm: str = "frame"  # 'frame': GroupNorm(1) per frame; 'clip': GroupNorm(1) per clip; 'layer': LayerNorm
    layer_scale: float = 1e-5  # PoolFormer-S12's init; 0 disables the layer scales

    mixer_kind: ClassVar[str] = "poolformer"

    def block_parts(self, i):
        if len(self.pool_size) != 3:
            raise ValueError(f"pool_size must be (kt, kh, kw); got {tuple(self.pool_size)}")
        norms = {"frame": functools.partial(GroupNorm1, per_frame=True, dtype=self.dtype),
                 "clip": functools.partial(GroupNorm1, per_frame=False, dtype=self.dtype),
                 "layer": _layer_norm(self.dtype)}
        if self.norm not in norms:
            raise ValueError(f"norm must be one of {sorted(norms)}; got {self.norm!r}")
        return functools.partial(PoolMixer, tuple(self.pool_size)), norms[self.norm], self.layer_scale


class SwinGenerator(MixerGenerator):
    """Mixer: 3-D shifted-window attention; blocks 1, 3, ... are shifted by half a window."""

    heads: int = 4
    window: tuple = (5, 5, 9)  # (Wt, Wh, Ww); an axis no longer than its window is one window, unshifted

    mixer_kind: ClassVar[str] = "swin"

    def block_parts(self, i):
        mixer = functools.partial(VideoSwinMixer, self.hidden, self.heads, tuple(self.window), i % 2 == 1,
                                  dtype=self.dtype)
        return mixer, _layer_norm(self.dtype), 0.0


class FocalGenerator(MixerGenerator):
    """Mixer: E2FGVI's temporal focal attention (focal level 2, 'fc' pooling, expand = window // 2)."""

    heads: int = 4
    window: tuple = (5, 9)
    focal_window: tuple = (5, 9)

    mixer_kind: ClassVar[str] = "focal"

    def block_parts(self, i):
        mixer = functools.partial(TemporalFocalMixer, self.hidden, self.heads, tuple(self.window),
                                  tuple(self.focal_window), dtype=self.dtype)
        return mixer, _layer_norm(self.dtype), 0.0


# --- registration ---------------------------------------------------------------------------------
def no_checkpoint(sd, model):
    raise CheckpointError(f"no official checkpoint exists for the {model.mixer_kind} video generator (it is a "
                          "FuseFormer with a swapped token mixer, defined in this package): train it, or load a "
                          "converted ecformer_jax checkpoint with convert.load")


def example_inputs(model):
    return (jnp.zeros((1, 2, 48, 96, 3), jnp.float32),)


for _name, _cls, _what in (("poolformer", PoolFormerGenerator, "spatio-temporal pooling"),
                           ("swin", SwinGenerator, "3-D shifted-window attention"),
                           ("focal", FocalGenerator, "temporal focal attention")):
    register(_name, _cls, no_checkpoint, example_inputs, kind="inpainting", size_rule=fuseformer.fuseformer_size,
             protocol=fuseformer.PROTOCOL, discriminator="fuseformer_discriminator",
             description=f"FuseFormer pipeline with {_what} as token mixer (no official weights)")
