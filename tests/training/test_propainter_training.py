"""ProPainter training: the flow completion task and the generator's flow-guided inpainting recipe learn on a
fixed synthetic clip, and each loss term against hand-computed values."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from ecformer_jax import configs, models, tasks
from ecformer_jax.layers.edges import canny
from ecformer_jax.tasks import flow_completion as fc
from ecformer_jax.training import losses
from ecformer_jax.training import sharding as shd
from ecformer_jax.training.loop import setup
from tests.training import helpers


def _e(d):  # the generalised Charbonnier penalty of one difference
    return (d * d + 1e-6) ** 0.45


# --- loss terms ----------------------------------------------------------------------------------------------
def test_smoothness_terms_by_hand():
    # u = [[0, 1]] (1 x 2 frame), v = 0; zeros outside
    flow = jnp.array([[[[0.0, 0.0], [1.0, 0.0]]]])
    mask = jnp.ones((1, 1, 2, 1))
    # u: x differences f(p) - f(p + right) = -1, 1; y differences f(p) - f(p + down) = 0, 1; v: all 0
    want = (_e(-1) + _e(1) + _e(0) + _e(1)) / 4 + _e(0)
    np.testing.assert_allclose(float(fc.smoothness(flow, mask)), want, rtol=1e-6)
    # half the mask: only the first pixel counts, still divided by every element
    half = jnp.array([[[[1.0], [0.0]]]])
    np.testing.assert_allclose(float(fc.smoothness(flow, half)), (_e(-1) + _e(0)) / 4 + 2 * _e(0) / 4, rtol=1e-6)
    # u = [[0, 1, 0]]: x second differences 1, -2, 1; y and both diagonals -2u = 0, -2, 0
    flow3 = jnp.array([[[[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]]])
    want2 = (2 * _e(1) + _e(-2) + 3 * (2 * _e(0) + _e(-2))) / 12 + _e(0)
    np.testing.assert_allclose(float(fc.second_order_smoothness(flow3, jnp.ones((1, 1, 3, 1)))), want2, rtol=1e-6)


def test_ternary_loss_by_hand():
    # 1 x 2 frames: current all 0; shifted has a grey value a at pixel 0; zero flows (warping is the identity)
    a = 0.01
    current = jnp.zeros((1, 1, 2, 3))
    shifted = current.at[0, 0, 0].set(a)
    zero = jnp.zeros((1, 1, 2, 2))
    s = a * (0.299 + 0.587 + 0.110) * 255
    q = s / np.sqrt(0.81 + s * s)
    r = q * q / (0.1 + q * q)
    # pixel 0 differs from its 8 neighbours (7 outside + pixel 1), pixel 1 from one (pixel 0); the confidence of
    # pixel 0 is exp(-50 (3a)^2)
    want = (8 * r * np.exp(-50 * (3 * a) ** 2) + r) / 2
    got = fc.ternary_loss(current, shifted, zero, zero, jnp.ones((1, 1, 2, 1)))
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_flow_l1_terms_by_hand():
    # gt 0, prediction 1 in x everywhere, half of each frame a hole; frames 0 (the warp loss vanishes)
    b, t, h, w = 1, 3, 8, 8
    masks = jnp.zeros((b, t, h, w, 1)).at[:, :, :, : w // 2].set(1.0)
    gt = (jnp.zeros((b, t - 1, h, w, 2)),) * 2
    pred = (jnp.zeros((b, t - 1, h, w, 2)).at[..., 0].set(1.0),) * 2
    flow, warp = fc.flow_losses(pred, gt, masks, jnp.zeros((b, t, h, w, 3)))
    comb = (pred[0] * masks[:, :-1]).reshape(-1, h, w, 2)
    m = masks[:, :-1].reshape(-1, h, w, 1)
    smooth = fc.smoothness(comb, m) + fc.second_order_smoothness(comb, m)
    # per direction: hole mean|m p| / mean(m) = 0.5 (one channel of two), valid likewise
    np.testing.assert_allclose(float(flow), 2 * (0.5 + 0.5 + float(smooth)), rtol=1e-6)
    assert float(warp) == 0.0


def test_edge_losses_by_hand():
    target = jnp.array([1.0, 0.0, 0.0, 0.0]).reshape(1, 2, 2, 1)
    pred = jnp.array([0.9, 0.2, 0.1, 0.3]).reshape(1, 2, 2, 1)
    sp = lambda x: np.log1p(np.exp(x))  # noqa: E731
    # edges weighted by the non-edge fraction 0.75, the rest by 0.25; BCE with logits on the probabilities
    want = (0.75 * (sp(0.9) - 0.9) + 0.25 * (sp(0.2) + sp(0.1) + sp(0.3))) / 4
    np.testing.assert_allclose(float(fc.balanced_bce(pred, target)), want, rtol=1e-6)
    # edge_loss: bce(pred) + 5 bce(pred in the holes, target outside), both directions
    masks = jnp.zeros((1, 2, 2, 2, 1)).at[:, :, 0, 0].set(1.0)  # the hole is pixel (0, 0) of both frames
    comb = pred * masks[0, :1] + target * (1 - masks[0, :1])
    per_dir = want + 5 * float(fc.balanced_bce(comb, target))
    got = fc.edge_loss((pred[None],) * 2, (target[None],) * 2, masks)
    np.testing.assert_allclose(float(got), 2 * per_dir, rtol=1e-6)


def test_canny_finds_a_step_and_hysteresis_drops_lone_weak_edges():
    # a vertical step 0 -> 0.5 -> 1 (a step between two pixels has two equal maxima: NMS keeps neither)
    img = jnp.zeros((1, 16, 16, 1)).at[:, :, 9:].set(1.0).at[:, :, 8].set(0.5)
    mag, edges = canny(img, 0.1, 0.2, 5, 2.0)
    assert (np.asarray(edges[0, :, :, 0]) == (np.arange(16) == 8)[None, :]).all()
    assert set(np.unique(np.asarray(edges))) <= {0.0, 1.0}
    # a faint step (weak everywhere, strong nowhere) is dropped by hysteresis
    faint = img * 0.35
    _, weak_only = canny(faint, 0.1, 0.9, 5, 2.0)
    assert float(jnp.sum(weak_only)) == 0.0
    _, no_hyst = canny(faint, 0.1, 0.9, 5, 2.0, hysteresis=False)
    assert float(jnp.max(no_hyst)) == 0.5
    # flow edges: a flow whose largest magnitude is below 1 has none
    assert float(jnp.sum(fc.flow_edges(jnp.full((1, 1, 16, 16, 2), 0.5)))) == 0.0


def test_propainter_generator_loss_terms_by_hand():
    pred = jnp.array([0.5, -0.5, 1.0, 0.0]).reshape(1, 1, 2, 2, 1) * jnp.ones((1, 1, 2, 2, 3))
    gt = jnp.zeros_like(pred)
    m = jnp.array([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 2, 2, 1)
    hole, valid = losses.hole_valid_l1(pred, gt, m)
    np.testing.assert_allclose([float(hole), float(valid)], [0.5, (0.5 + 1.0 + 0.0) / 3], rtol=1e-6)
    real, fake = jnp.array([2.0, 0.5]), jnp.array([-2.0, 0.5])
    # hinge: D = (mean relu(1 - real) + mean relu(1 + fake)) / 2, G = -mean fake
    np.testing.assert_allclose(float(losses.discriminator_loss(real, fake, "hinge")), (0.25 + 0.75) / 2)
    np.testing.assert_allclose(float(losses.generator_adversarial_loss(fake, "hinge")), 0.75)


def test_registry_routes_the_propainter_networks_to_their_tasks():
    assert tasks.for_config(configs.get_config("recurrent_flow_completion:tiny")) is fc.TASK
    c = configs.get_config("propainter:tiny")
    assert tasks.for_config(c) is tasks.inpainting.TASK
    entry = models.get("propainter")
    assert entry.train_inputs == "flow_guided" and c.model.discriminator == "fuseformer_discriminator"
    assert models.get("raft").task is None


# --- learning on a fixed clip --------------------------------------------------------------------------------
def _learn(c, steps, key):
    c.async_checkpoints = False
    mesh = shd.make_mesh(1)
    _, state, _, step = setup(c, tasks.for_config(c), mesh)
    batch = shd.global_batch(helpers.fixed_batch(c), mesh)
    values = []
    for _ in range(steps):
        state, m = step(state, batch)
        values.append(float(key(m)))
    assert np.all(np.isfinite(values)), values
    assert int(state.step) == steps
    return values


@pytest.mark.slow
@pytest.mark.optimized
def test_flow_completion_loss_goes_down_on_a_fixed_clip():
    c = configs.get_config("recurrent_flow_completion:tiny")
    c.batch_size = 1
    c.data.num_local = 2  # one flow each way
    loss = _learn(c, 15, lambda m: m["g_loss"])
    print("flow completion loss:", np.round(loss, 4).tolist())
    assert np.mean(loss[-5:]) < 0.85 * np.mean(loss[:3]), loss


@pytest.mark.slow
@pytest.mark.optimized
def test_propainter_loss_goes_down_on_a_fixed_clip():
    c = configs.get_config("propainter:tiny")
    c.batch_size = 1
    c.loss.adversarial_weight = 0.0
    c.optim.lr = 1e-4
    c.model.raft_iters = 1
    # cheaper to compile: narrower tokens, 3x3 / stride-2 soft split
    c.model.overrides.update(hidden=128, ffn_hidden=252, kernel=3, stride=2, padding=1)
    l1 = _learn(c, 15, lambda m: m["hole_l1"] + m["valid_l1"])
    print("propainter hole + valid L1:", np.round(l1, 4).tolist())
    assert np.mean(l1[-5:]) < 0.85 * np.mean(l1[:3]), l1
