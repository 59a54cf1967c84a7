"""Parity of RAFT (ProPainter's large raft-things configuration) against the official PyTorch fixture: the
recorded call `flow_low, flow_up = model(image1, image2, iters, test_mode=True)` with frames in [-1, 1], every
output and intermediate (fnet, cnet, first iteration's update_block.*), with the dense correlation pyramid and
with the chunked lookup that never builds it."""
from __future__ import annotations

from functools import partial

import jax
import pytest

from ecformer_jax import models
from ecformer_jax.models.raft import INTERMEDIATES
from tests import parity

pytestmark = pytest.mark.optimized  # real-size frames through whole models: run-bound


# the chunked lookup equals the dense one on random features in the quick run (test_raft.py); here in the full run
@pytest.mark.parametrize("corr", ["dense", pytest.param("chunked", marks=pytest.mark.slow)])
def test_parity(corr, parity_dir, record_property):
    npz, meta = parity.load(parity_dir, "raft")
    assert "test_mode=True" in meta["call"] and "model(image1, image2" in meta["call"]
    frames, _ = parity.inputs(npz)  # (B, 2, H, W, 3) = u8 / 255 * 2 - 1, the recipe of the fixture
    variables = parity.convert_fixture(npz, "raft")
    model = models.build("raft", corr=corr, corr_chunk=512)
    run = jax.jit(partial(model.apply, iters=int(meta["iters"]), mutable=["intermediates"]))
    (flow_low, flow_up), state = run(variables, frames[:, 0], frames[:, 1])
    inter = state["intermediates"]
    ours = {"output/flow_low": parity.nhwc_to_nchw(flow_low), "output/flow_up": parity.nhwc_to_nchw(flow_up)}
    for official, key in INTERMEDIATES.items():
        ours[f"intermediate/{official}"] = parity.nhwc_to_nchw(inter[key][0])
    ratios = parity.compare(npz, meta, ours)
    worst = max(ratios, key=ratios.get)
    record_property("worst_ratio", ratios[worst])
    print(f"\n[parity] raft ({corr}): worst ratio {ratios[worst]:.2e} ({worst}); "
          + ", ".join(f"{k.split('/', 1)[1]} {v:.1e}" for k, v in ratios.items()))
