"""Parity of DSTT (generator) and its discriminator alias against the official PyTorch fixtures."""
from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from ecformer_jax import convert, models
from ecformer_jax.convert.weight_rule import state_dict_from_fixture
from tests import parity
from tests.models.test_parity_foundation import _run_discriminator

pytestmark = pytest.mark.optimized  # real-size frames through whole models: run-bound

# official module name -> the name our model sows it under
OURS = {"hier_enc": "hier_enc_out", "vec2patch": "vec2patch_out", "decoder": "decoder_out"}


def _run_dstt(npz, variables):
    frames, masks = parity.inputs(npz)
    model = models.build("dstt")
    out, state = jax.jit(functools.partial(model.apply, mutable=["intermediates"]))(variables, frames * (1 - masks))
    inter = state["intermediates"]
    b, t = frames.shape[:2]
    res = {"output/frames": parity.nhwc_to_nchw(np.asarray(out).reshape(b * t, *out.shape[2:]))}
    for name in ("hier_enc", "vec2patch", "decoder"):
        res[f"intermediate/{name}"] = parity.nhwc_to_nchw(inter[OURS[name]][0])
    for name in ("transformer.0", "transformer.1"):
        res[f"intermediate/{name}"] = np.asarray(inter[name][0])  # (B*T, 720, 512) tokens
    return res


def test_parity_dstt(parity_dir, record_property):
    npz, meta = parity.load(parity_dir, "dstt")
    # the released dstt.pth wraps the generator under 'netG'; convert it in that form
    variables = convert.from_torch("dstt", {"netG": state_dict_from_fixture(npz)})
    ratios = parity.compare(npz, meta, _run_dstt(npz, variables))
    worst = max(ratios, key=ratios.get)
    record_property("worst_ratio", ratios[worst])
    print(f"\n[parity] dstt: worst ratio {ratios[worst]:.2e} ({worst})")
    for k in sorted(ratios):
        print(f"  {k}: {ratios[k]:.2e}")


def test_parity_dstt_discriminator(parity_dir, record_property):
    # DSTT trains with FuseFormer's nf=32 discriminator; no separate fixture exists.
    npz, meta = parity.load(parity_dir, "fuseformer_discriminator")
    variables = parity.convert_fixture(npz, "dstt_discriminator")
    ratios = parity.compare(npz, meta, _run_discriminator("dstt_discriminator")(npz, variables))
    worst = max(ratios, key=ratios.get)
    record_property("worst_ratio", ratios[worst])
    print(f"\n[parity] dstt_discriminator: worst ratio {ratios[worst]:.2e} ({worst})")
