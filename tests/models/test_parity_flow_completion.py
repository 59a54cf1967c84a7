"""Parity of ProPainter's RecurrentFlowCompleteNet against the official PyTorch fixture: the recorded calls
`pred_flows_bi, _ = model.forward_bidirect_flow((flows_forward, flows_backward), masks)` then
`comb_flows_bi = model.combine_flow((flows_forward, flows_backward), pred_flows_bi, masks)`, every output (also the
edge detector's map of the forward prediction) and every intermediate of the first (forward-direction) call."""
from __future__ import annotations

import jax
import numpy as np

from ecformer_jax import models
from ecformer_jax.models.flow_completion import INTERMEDIATES
from tests import parity


def fixture_inputs(npz):
    """flows (B, T-1, H, W, 2) = numerators / 32 and masks (B, T, H, W, 1), channels-last float32 (the recipe)."""
    flows = [np.moveaxis(npz[f"input/flows_{d}_q"].astype(np.float32) / np.float32(32), 2, -1)
             for d in ("forward", "backward")]
    return tuple(flows), npz["input/masks_u8"].astype(np.float32)[..., None]


def test_parity(parity_dir, record_property):
    npz, meta = parity.load(parity_dir, "recurrent_flow_completion")
    assert "model.forward_bidirect_flow((flows_forward, flows_backward), masks)" in meta["call"]
    assert "model.combine_flow((flows_forward, flows_backward), pred_flows_bi, masks)" in meta["call"]
    flows, masks = fixture_inputs(npz)
    variables = parity.convert_fixture(npz, "recurrent_flow_completion")
    model = models.build("recurrent_flow_completion")

    @jax.jit
    def run(variables, flows, masks):
        (pred, _), state = model.apply(variables, flows, masks, method="forward_bidirect_flow",
                                       mutable=["intermediates"])
        comb = model.apply(variables, flows, pred, masks, method="combine_flow")
        edges = model.apply(variables, pred[0], method="detect_edges")
        return pred, comb, edges, state["intermediates"]

    pred, comb, edges, inter = run(variables, flows, masks)
    to_torch = lambda a: np.moveaxis(np.asarray(a), -1, 2)  # noqa: E731  (B, N, H, W, C) -> (B, N, C, H, W)
    ours = {"output/pred_flows_forward": to_torch(pred[0]), "output/pred_flows_backward": to_torch(pred[1]),
            "output/comb_flows_forward": to_torch(comb[0]), "output/comb_flows_backward": to_torch(comb[1]),
            "output/edges_forward": to_torch(edges)}
    for official, key in INTERMEDIATES.items():
        ours[f"intermediate/{official}"] = parity.nhwc_to_nchw(inter[key][0])  # [0]: the forward-direction call
    ratios = parity.compare(npz, meta, ours)
    worst = max(ratios, key=ratios.get)
    record_property("worst_ratio", ratios[worst])
    print(f"\n[parity] recurrent_flow_completion: worst ratio {ratios[worst]:.2e} ({worst}); "
          + ", ".join(f"{k.split('/', 1)[1]} {v:.1e}" for k, v in ratios.items()))
