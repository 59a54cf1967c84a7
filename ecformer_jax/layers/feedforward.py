"""FuseFormer's fusion feed-forward network (F3N), shared by FuseFormer, the mixer generators, ECFormer
(ReLU) and E2FGVI (exact GELU)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecformer_jax.layers.patches import PatchDense, fold, grid_size, overlap_count, unfold

ACTIVATIONS = {"relu": jax.nn.relu, "gelu": lambda x: jax.nn.gelu(x, approximate=False)}


class FusionFeedForward(nn.Module):
    """Linear up ("fc1"); fold the per-token features onto the feature map, divided by the overlap count;
    unfold; activation; linear down ("fc2").

    __call__(x, feature_size): tokens x (..., C) whose leading axes hold whole frames of the token grid
    that soft split made from a `feature_size` = (h, w) map (e.g. (B, T * nh * nw, C) or (B, T, nh, nw, C));
    returns the same shape."""

    dim: int
    ffn_hidden: int
    kernel: int
    stride: int
    padding: int
    activation: str = "relu"  # 'relu' (FuseFormer) | 'gelu' (E2FGVI: exact GELU)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, feature_size):
        k, s, p = self.kernel, self.stride, self.padding
        feature_size = tuple(feature_size)
        if self.ffn_hidden % (k * k):
            raise ValueError(f"FusionFeedForward: ffn_hidden {self.ffn_hidden} must be a multiple of {k * k}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"FusionFeedForward: activation must be one of {sorted(ACTIVATIONS)}; "
                             f"got {self.activation!r}")
        nh, nw = grid_size(*feature_size, k, s, p)
        y = PatchDense(self.ffn_hidden, k * k, "out", self.dtype, name="fc1")(x)
        y = fold(y.reshape(-1, nh, nw, self.ffn_hidden), feature_size, k, s, p)
        y = y / jnp.asarray(overlap_count(feature_size, k, s, p), y.dtype)
        y = unfold(y, k, s, p).reshape(*x.shape[:-1], self.ffn_hidden)
        return PatchDense(self.dim, k * k, "in", self.dtype, name="fc2")(ACTIVATIONS[self.activation](y))
