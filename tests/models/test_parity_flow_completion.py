"""Parity of ProPainter's RecurrentFlowCompleteNet against the official PyTorch fixture: the recorded calls
`pred_flows_bi, _ = model.forward_bidirect_flow((flows_forward, flows_backward), masks)` then
`comb_flows_bi = model.combine_flow((flows_forward, flows_backward), pred_flows_bi, masks)`, every output (also the
edge detector's map of the forward prediction) and every intermediate of the first (forward-direction) call."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from ecformer_jax import models
from ecformer_jax.models.flow_completion import INTERMEDIATES
from tests import parity

pytestmark = pytest.mark.optimized  # real-size frames through whole models: run-bound


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


def test_params_and_converter_refusals(parity_dir):
    import pytest

    from ecformer_jax import convert
    from ecformer_jax.convert.weight_rule import state_dict_from_fixture

    model = models.build("recurrent_flow_completion")
    shapes = jax.eval_shape(lambda: models.init(model, "recurrent_flow_completion"))
    assert sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes)) == 5_079_555  # spec section 1
    npz, _ = parity.load(parity_dir, "recurrent_flow_completion")
    sd = state_dict_from_fixture(npz)
    assert len(sd) == 74
    with pytest.raises(convert.CheckpointError, match="RAFT optical-flow checkpoint"):
        convert.from_torch("recurrent_flow_completion", {"module.fnet.conv1.weight": np.zeros((64, 3, 7, 7))})
    generator = {"transformers.transformer.0.norm1.weight": np.zeros(512),
                 "feat_prop_module.deform_align.backward_1.weight": np.zeros((128, 256, 3, 3))}
    with pytest.raises(convert.CheckpointError, match="ProPainter InpaintGenerator"):
        convert.from_torch("recurrent_flow_completion", generator)
    with pytest.raises(convert.CheckpointError, match="not a RecurrentFlowCompleteNet"):
        convert.from_torch("recurrent_flow_completion", {"conv.weight": np.zeros((2, 2, 3, 3))})
    del sd["upsample.2.conv.bias"]
    with pytest.raises(convert.CheckpointError, match="upsample.2.conv.bias"):
        convert.from_torch("recurrent_flow_completion", sd)


@pytest.mark.slow
def test_calls_tuples_training_edges_and_bad_input():
    rng = np.random.default_rng(0)
    b, t, h, w = 1, 3, 16, 24
    flows = tuple(rng.standard_normal((b, t - 1, h, w, 2)).astype(np.float32) for _ in range(2))
    masks = (rng.random((b, t, h, w, 1)) > 0.7).astype(np.float32)
    model = models.build("recurrent_flow_completion", training=True)
    eval_model = models.build("recurrent_flow_completion")
    variables = jax.jit(lambda: models.init(model))()

    @jax.jit
    def run(variables, flows, masks):
        pred, edges = model.apply(variables, flows, masks, method="forward_bidirect_flow")
        # the backward direction is the same network on the time-reversed, hole-zeroed flows
        again = model.apply(variables, (flows[1] * (1 - masks[:, 1:]))[:, ::-1], masks[:, 1:][:, ::-1])
        comb = model.apply(variables, flows, pred, masks, method="combine_flow")
        eval_pred, none = eval_model.apply(variables, flows, masks, method="forward_bidirect_flow")
        assert none == (None, None)
        return pred, edges, again, comb, eval_pred

    pred, edges, again, comb, eval_pred = jax.tree_util.tree_map(np.asarray, run(variables, flows, masks))
    assert isinstance(pred, tuple) and isinstance(edges, tuple) and isinstance(comb, tuple)
    assert pred[0].shape == pred[1].shape == (b, t - 1, h, w, 2) and edges[1].shape == (b, t - 1, h, w, 1)
    np.testing.assert_allclose(pred[1], again[0][:, ::-1], atol=1e-5)
    np.testing.assert_allclose(edges[1], again[1][:, ::-1], atol=1e-6)
    for c, f, p, m in zip(comb, flows, pred, (masks[:, :-1], masks[:, 1:])):
        np.testing.assert_array_equal(c, np.where(m > 0, p, f))
    np.testing.assert_allclose(eval_pred[0], pred[0], atol=1e-6)
    bad = jax.ShapeDtypeStruct
    with pytest.raises(ValueError, match="multiples of 8"):
        jax.eval_shape(model.apply, variables, bad((1, 2, 12, 24, 2), np.float32), bad((1, 2, 12, 24, 1), np.float32))
    with pytest.raises(ValueError, match="one more than the flows"):
        jax.eval_shape(lambda: model.apply(variables, flows, masks[:, :-1], method="forward_bidirect_flow"))


@pytest.mark.slow
def test_long_clips_encode_and_decode_a_few_frames_at_a_time(monkeypatch):
    """Long clips: the encoder runs chunk by chunk with HALO frames of context (the chunks' edges cut the clip),
    the decoder group by group (the last padded; each clip of the batch grouped along its own time axis), with the
    same flows."""
    import jax.numpy as jnp

    from ecformer_jax.models import flow_completion as fc

    model = models.build("recurrent_flow_completion")
    variables = models.init(model, "recurrent_flow_completion")
    rng = np.random.default_rng(3)
    flows = jnp.asarray(rng.standard_normal((2, 21, 16, 24, 2)), jnp.float32)
    masks = jnp.asarray(rng.random((2, 22, 16, 24, 1)) > 0.6, jnp.float32)
    run = lambda: jax.jit(lambda v: model.apply(v, (flows, flows[:, ::-1]), masks,  # noqa: E731
                                                method="forward_bidirect_flow")[0])(variables)
    monkeypatch.setattr(fc, "DECODE_FRAMES", 32)
    whole = run()  # 21 frames: encoded at once (21 <= 16 + 2 * HALO) and decoded at once
    monkeypatch.setattr(fc, "ENCODE_FRAMES", 4)  # 21 frames: 6 chunks of 4 (+3 padding), each 4 + 16 frames
    monkeypatch.setattr(fc, "DECODE_FRAMES", 8)  # groups of 8, 8 and 5 (+3 padding)
    grouped = run()
    for a, b in zip(grouped, whole):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5 * float(jnp.abs(b).max()))
