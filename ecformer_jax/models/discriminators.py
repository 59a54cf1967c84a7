"""T-PatchGAN discriminators with spectral normalisation (STTN: nf=64; FuseFormer and DSTT: nf=32).

    logits = models.build("sttn_discriminator").apply(variables, frames)                  # eval: stored u, v
    logits, upd = disc.apply(variables, frames, train=True, mutable=["spectral"])         # one power iteration

frames (B, T, H, W, 3) in [-1, 1]; logits (B, T, H', W', C). Each sample is one clip (time kernels
span its T frames). The official trainers feed the whole per-GPU batch as ONE clip; to reproduce that,
reshape to (1, B*T, H, W, 3) first.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ecformer_jax.layers.checks import check_video
from ecformer_jax.layers.conv import Conv3d, leaky_relu
from ecformer_jax.layers.spectral import SpectralNormConv3d
from ecformer_jax.models.registry import register


class Discriminator(nn.Module):
    nf: int = 64
    use_spectral_norm: bool = True
    use_sigmoid: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, frames, train: bool = False):
        check_video(frames, "frames", 3)
        x = frames.astype(self.dtype)
        widths = (self.nf, self.nf * 2, self.nf * 4, self.nf * 4, self.nf * 4)
        for i, features in enumerate(widths):
            pad = (1, 1, 1) if i == 0 else (1, 2, 2)
            if self.use_spectral_norm:
                x = SpectralNormConv3d(features, padding=pad, dtype=self.dtype, name=f"conv{i}")(x, update_stats=train)
            else:
                x = Conv3d(features, padding=pad, use_bias=False, dtype=self.dtype, name=f"conv{i}")(x)
            self.sow("intermediates", f"conv.{2 * i}", x)
            x = leaky_relu(x)
        x = Conv3d(self.nf * 4, dtype=self.dtype, name="conv5")(x)
        self.sow("intermediates", "conv.10", x)
        return nn.sigmoid(x) if self.use_sigmoid else x


def from_torch(sd, model: Discriminator) -> dict:
    params, spectral = {}, {}
    for i in range(5):
        key = f"conv.{2 * i}"
        if model.use_spectral_norm:
            params[f"conv{i}"] = sd.conv(key, bias=False, weight="weight_orig")
            spectral[f"conv{i}"] = {"u": sd.tensor(f"{key}.weight_u"), "v": sd.tensor(f"{key}.weight_v")}
        else:
            params[f"conv{i}"] = sd.conv(key, bias=False)
    params["conv5"] = sd.conv("conv.10")
    return {"params": params, "spectral": spectral} if spectral else {"params": params}


def example_inputs(model: Discriminator):
    return (jnp.zeros((1, 1, 64, 64, 3), jnp.float32),)


register("sttn_discriminator", Discriminator, from_torch, example_inputs, kind="discriminator",
         defaults={"nf": 64}, description="STTN T-PatchGAN discriminator (nf=64)")
register("fuseformer_discriminator", Discriminator, from_torch, example_inputs, kind="discriminator",
         defaults={"nf": 32}, description="FuseFormer / DSTT T-PatchGAN discriminator (nf=32)")
register("dstt_discriminator", Discriminator, from_torch, example_inputs, kind="discriminator",
         defaults={"nf": 32}, description="DSTT T-PatchGAN discriminator (nf=32; the same network as FuseFormer's)")
