"""Parity of STTN, FuseFormer and their discriminators against the official PyTorch fixtures."""
from __future__ import annotations

from functools import partial

import jax
import numpy as np
import pytest

from ecformer_jax import models
from tests import parity

pytestmark = pytest.mark.optimized  # real-size frames through whole models: run-bound

# official module name -> our sown intermediate (where a submodule already uses the name)
OURS = {"encoder": "encoder_out", "decoder": "decoder_out", "sc": "sc_out"}


def _run_sttn(npz, variables):
    frames, masks = parity.inputs(npz)
    model = models.build("sttn")
    out, state = jax.jit(partial(model.apply, mutable=["intermediates"]))(variables, frames * (1 - masks), masks)
    inter = state["intermediates"]
    b, t = frames.shape[:2]
    flat = lambda a: np.asarray(a).reshape(b * t, *a.shape[2:]) if a.ndim == 5 else np.asarray(a)
    res = {"output/frames": parity.nhwc_to_nchw(flat(out))}
    for name in ("encoder", "transformer.0", "transformer.7", "decoder"):
        res[f"intermediate/{name}"] = parity.nhwc_to_nchw(flat(inter[OURS.get(name, name)][0]))
    return res


def _run_fuseformer(npz, variables):
    frames, masks = parity.inputs(npz)
    model = models.build("fuseformer")
    out, state = jax.jit(partial(model.apply, mutable=["intermediates"]))(variables, frames * (1 - masks))
    inter = state["intermediates"]
    b, t = frames.shape[:2]
    res = {"output/frames": parity.nhwc_to_nchw(np.asarray(out).reshape(b * t, *out.shape[2:]))}
    for name in ("encoder", "sc", "decoder"):
        res[f"intermediate/{name}"] = parity.nhwc_to_nchw(inter[OURS[name]][0])
    for name in ("transformer.0", "transformer.7"):
        res[f"intermediate/{name}"] = np.asarray(inter[name][0])
    return res


def _run_discriminator(name):
    def run(npz, variables):
        frames, _ = parity.inputs(npz)
        b, t = frames.shape[:2]
        clip = frames.reshape(1, b * t, *frames.shape[2:])  # the official D sees B*T frames as one clip
        if name == "sttn_discriminator":
            clip = frames[:1]
        logits, state = jax.jit(partial(models.build(name).apply, mutable=["intermediates"]))(variables, clip)
        res = {"output/logits": np.moveaxis(np.asarray(logits), -1, 2)}  # (1, T, C, H', W')
        for k, v in state["intermediates"].items():
            res[f"intermediate/{k}"] = np.moveaxis(np.asarray(v[0]), -1, 1)  # NCDHW
        return res

    return run


RUNNERS = {
    "sttn": _run_sttn,
    "fuseformer": _run_fuseformer,
    "sttn_discriminator": _run_discriminator("sttn_discriminator"),
    "fuseformer_discriminator": _run_discriminator("fuseformer_discriminator"),
}


@pytest.mark.parametrize("name", sorted(RUNNERS))
def test_parity(name, parity_dir, record_property):
    npz, meta = parity.load(parity_dir, name)
    variables = parity.convert_fixture(npz, name)
    ratios = parity.compare(npz, meta, RUNNERS[name](npz, variables))
    worst = max(ratios, key=ratios.get)
    record_property("worst_ratio", ratios[worst])
    print(f"\n[parity] {name}: worst ratio {ratios[worst]:.2e} ({worst})")
