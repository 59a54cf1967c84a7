"""Binarized layers with a straight-through estimator (XNOR-Net style), channels-last.

    y = conv(sign(x), alpha * sign(W)) + b        alpha[o] = mean |W[..., o]|  (one scale per output channel)

Forward: activations become +-1 and weights +-alpha (sign(0) = +1). Backward (straight-through
estimator): d sign(x) / dx = 1 where |x| <= 1, else 0 (the hard-tanh STE) for activations; weights get
alpha * STE + the gradient through alpha, so the float ("latent") weights keep training.

`BinaryConv` / `BinaryDense` have exactly the parameters of `nn.Conv` / `nn.Dense` ('kernel', 'bias',
same shapes), so a float checkpoint initialises a binarized model and the same optimiser / trainer
trains it. `conv2d` / `dense` pick the float or binary layer with one flag, and `BinaryDecoder` is the
inpainting decoder of layers/conv.py with the same parameter names and binarizable inner convs.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecformer_jax.layers.conv import conv2d as float_conv2d
from ecformer_jax.layers.conv import leaky_relu, normal_init, split_group_conv
from ecformer_jax.layers.resize import upsample_bilinear


def sign(x):
    """+1 where x >= 0, -1 elsewhere (no zeros, unlike jnp.sign)."""
    return jnp.where(x >= 0, jnp.ones((), x.dtype), -jnp.ones((), x.dtype))


@jax.custom_vjp
def ste_sign(x):
    """sign(x) forward; gradient 1 where |x| <= 1 and 0 elsewhere (straight-through, hard-tanh)."""
    return sign(x)


def _ste_fwd(x):
    return sign(x), x


def _ste_bwd(x, g):
    return (g * (jnp.abs(x) <= 1).astype(g.dtype),)


ste_sign.defvjp(_ste_fwd, _ste_bwd)


def binarize_weights(w, reduce_axes):
    """alpha * sign(w) with alpha = mean |w| over `reduce_axes` (per output channel), STE gradient."""
    alpha = jnp.mean(jnp.abs(w), axis=reduce_axes, keepdims=True)
    return alpha * ste_sign(w)


class BinaryConv(nn.Module):
    """2-D convolution on binarized activations and weights (parameters as nn.Conv)."""

    features: int
    kernel_size: tuple = (3, 3)
    strides: tuple = (1, 1)
    padding: Any = ((1, 1), (1, 1))
    kernel_dilation: tuple = (1, 1)
    feature_group_count: int = 1
    use_bias: bool = True
    binarize_input: bool = True
    dtype: Any = jnp.float32
    kernel_init: Callable = normal_init

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        g = self.feature_group_count
        if cin % g:
            raise ValueError(f"BinaryConv: {cin} input channels are not divisible by {g} groups")
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, cin // g, self.features), jnp.float32)
        w = binarize_weights(kernel, (0, 1, 2)).astype(self.dtype)
        xb = (ste_sign(x) if self.binarize_input else x).astype(self.dtype)
        y = split_group_conv(xb, w, tuple(self.strides), [tuple(p) for p in self.padding],
                             rhs_dilation=tuple(self.kernel_dilation),
                             dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=g)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
        return y


class BinaryDense(nn.Module):
    """Linear layer on binarized activations and weights (parameters as nn.Dense)."""

    features: int
    use_bias: bool = True
    binarize_input: bool = True
    dtype: Any = jnp.float32
    kernel_init: Callable = normal_init

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
        w = binarize_weights(kernel, (0,)).astype(self.dtype)
        xb = (ste_sign(x) if self.binarize_input else x).astype(self.dtype)
        y = jnp.dot(xb, w)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
        return y


def conv2d(features: int, kernel: int = 3, stride: int = 1, padding: int | None = None, dilation: int = 1,
           groups: int = 1, use_bias: bool = True, dtype: Any = jnp.float32, name: str | None = None,
           binarize: bool = False):
    """layers.conv.conv2d, or its binarized twin (same parameters) when `binarize`."""
    if not binarize:
        return float_conv2d(features, kernel, stride, padding, dilation, groups, use_bias, dtype, name)
    p = kernel // 2 * dilation if padding is None else padding
    return BinaryConv(features, (kernel, kernel), (stride, stride), ((p, p), (p, p)), (dilation, dilation), groups,
                      use_bias, dtype=dtype, name=name)


def dense(features: int, dtype: Any = jnp.float32, name: str | None = None, binarize: bool = False,
          kernel_init: Callable = normal_init, use_bias: bool = True):
    if binarize:
        return BinaryDense(features, use_bias, dtype=dtype, kernel_init=kernel_init, name=name)
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, kernel_init=kernel_init, name=name)


class BinaryDeconv(nn.Module):
    """Bilinear x2 (align_corners=True) then a 3x3 conv (binarized when `binarize`); as layers.conv.Deconv."""

    features: int
    dtype: Any = jnp.float32
    binarize: bool = False

    @nn.compact
    def __call__(self, x):
        n, h, w, _ = x.shape
        x = upsample_bilinear(x, (2 * h, 2 * w), align_corners=True)
        return conv2d(self.features, 3, dtype=self.dtype, name="conv", binarize=self.binarize)(x)


class BinaryDecoder(nn.Module):
    """layers.conv.Decoder with binarizable convs (same parameter names). The last conv (to RGB) stays
    real-valued, as usual for binary networks. Returns pre-tanh values."""

    dtype: Any = jnp.float32
    binarize: bool = False

    @nn.compact
    def __call__(self, x):
        x = leaky_relu(BinaryDeconv(128, self.dtype, self.binarize, name="up0")(x))
        x = leaky_relu(conv2d(64, 3, dtype=self.dtype, name="conv0", binarize=self.binarize)(x))
        x = leaky_relu(BinaryDeconv(64, self.dtype, self.binarize, name="up1")(x))
        return float_conv2d(3, 3, dtype=self.dtype, name="conv1")(x)
