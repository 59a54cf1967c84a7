"""SPyNet optical flow (Ranjan & Black, CVPR 2017), as packaged by mmediting for BasicVSR and used by
E2FGVI (`update_spynet`) and VSR-Transformer (`spynet.spynet`).

    flow = models.build("spynet").apply(variables, ref, supp)

ref, supp (N, H, W, 3) RGB in [0, 1]; flow (N, H, W, 2) float32 in pixels, channel 0 horizontal, such
that supp sampled at p + flow(p) matches ref(p). The module itself lives in layers/flow.py.

Checkpoints: the mmediting pretrained file (spynet_20210409-c6c1bd09.pth: {'state_dict': {...}} with keys
`basic_module.{L}.basic_module.{j}.conv.{weight,bias}`), a bare SPyNet state_dict (optionally with the
`mean` / `std` buffers), or one whose keys all carry a common prefix such as `spynet.` / `update_spynet.`.
"""
from __future__ import annotations

import jax.numpy as jnp

from ecformer_jax.layers.flow import SPyNet, spynet_from_torch
from ecformer_jax.models.registry import register

_ANCHOR = "basic_module.0.basic_module.0.conv.weight"


def _prefix(sd) -> str:
    """The common key prefix in front of the SPyNet keys ('' for a bare state_dict)."""
    hits = sorted(k[: -len(_ANCHOR)] for k in sd.keys() if k.endswith(_ANCHOR))
    if not hits:
        return ""  # the mapping then reports the missing keys by name
    return hits[0].rstrip(".")


def from_torch(sd, model: SPyNet) -> dict:
    return {"params": spynet_from_torch(sd, _prefix(sd))}


def example_inputs(model: SPyNet):
    x = jnp.zeros((1, 32, 32, 3), jnp.float32)
    return x, x


register("spynet", SPyNet, from_torch, example_inputs, kind="flow",
         description="SPyNet optical flow (mmediting / BasicVSR layout), images in [0, 1]")
