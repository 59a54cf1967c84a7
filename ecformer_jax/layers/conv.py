"""Channels-last convolutions with PyTorch-style explicit padding and the official init."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecformer_jax.layers.resize import upsample_bilinear

# BaseNetwork.init_weights('normal', 0.02) of the official repositories.
normal_init = nn.initializers.normal(0.02)


def leaky_relu(x):
    return jax.nn.leaky_relu(x, 0.2)


def conv2d(features: int, kernel: int = 3, stride: int = 1, padding: int | None = None, dilation: int = 1,
           groups: int = 1, use_bias: bool = True, dtype: Any = jnp.float32, name: str | None = None) -> nn.Conv:
    """nn.Conv2d(in, features, kernel, stride, padding, dilation, groups) for NHWC input.

    padding defaults to kernel // 2 * dilation (size preserving at stride 1); weights use the
    official N(0, 0.02) init.
    """
    p = kernel // 2 * dilation if padding is None else padding
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((p, p), (p, p)),
                   kernel_dilation=(dilation, dilation), feature_group_count=groups, use_bias=use_bias,
                   dtype=dtype, kernel_init=normal_init, name=name)


class Deconv(nn.Module):
    """The official "deconv": bilinear x2 upsampling (align_corners=True), then a 3x3 conv."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        n, h, w, _ = x.shape
        x = upsample_bilinear(x, (2 * h, 2 * w), align_corners=True)
        return conv2d(self.features, 3, dtype=self.dtype, name="conv")(x)


def grouped_concat(x0, a, groups: int):
    """Interleave two NHWC tensors group by group: [x0_g0, a_g0, x0_g1, a_g1, ...] on channels.

    This is FuseFormer's hierarchical encoder input: a grouped conv with `groups` groups then sees
    one (x0 slice, a slice) pair per group.
    """
    *lead, c0 = x0.shape
    ca = a.shape[-1]
    if c0 % groups or ca % groups:
        raise ValueError(f"grouped_concat: channels {c0} and {ca} must be divisible by groups={groups}")
    x0 = x0.reshape(*lead, groups, c0 // groups)
    a = a.reshape(*lead, groups, ca // groups).astype(x0.dtype)
    return jnp.concatenate([x0, a], axis=-1).reshape(*lead, c0 + ca)



class Decoder(nn.Module):
    """The inpainting decoder of STTN / FuseFormer / DSTT / E2FGVI: two (bilinear x2 + conv) stages
    back to RGB at 4x the feature resolution. Returns pre-tanh values."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = leaky_relu(Deconv(128, self.dtype, name="up0")(x))
        x = leaky_relu(conv2d(64, 3, dtype=self.dtype, name="conv0")(x))
        x = leaky_relu(Deconv(64, self.dtype, name="up1")(x))
        return conv2d(3, 3, dtype=self.dtype, name="conv1")(x)


def decoder_from_torch(sd, prefix: str = "decoder") -> dict:
    """Key mapping of the official nn.Sequential decoder (deconv, LReLU, conv, LReLU, deconv, LReLU, conv)."""
    return {
        "up0": {"conv": sd.conv(f"{prefix}.0.conv")},
        "conv0": sd.conv(f"{prefix}.2"),
        "up1": {"conv": sd.conv(f"{prefix}.4.conv")},
        "conv1": sd.conv(f"{prefix}.6"),
    }
