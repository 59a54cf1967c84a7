"""Flow completion: ProPainter's recurrent flow completion network trained on its own (the official
core/trainer_flow_w_edge.py recipe; no discriminator).

One iteration (`make_train_step`): a frozen RAFT (`loss.raft_checkpoint`; untrained with a warning when absent)
gives the forward and backward flows of the clean local frames; the network completes them inside the holes in
both directions (forward_bidirect_flow, training mode: with the edge maps of its predictions); the loss is

    flow_weight * sum_dir [hole L1 + valid L1 + smoothness + second-order smoothness]
    + warp_weight * sum_dir ternary census loss of the frame warped by the combined flow
    + edge_weight * sum_dir [edge BCE(pred) + 5 * edge BCE(pred in the holes, target outside)]

(official weights 0.25, 0.01, 1). The edge targets are Canny edges (sigma 2, thresholds 0.1 / 0.2) of the
ground-truth flow magnitude divided by its maximum over the batch (all zero when that maximum is below 1).
As in the official code the edge BCE is the logits form applied to the network's sigmoid outputs, weighted
per frame by the edge / non-edge balance (edge pixels by the non-edge fraction and the reverse), and the
smoothness terms are generalised Charbonnier penalties of the combined flow's first and second differences
weighted by the hole mask. Adam (b1 0, b2 0.99), lr 5e-5 x 0.2 at 300k/400k/500k/600k.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from ecformer_jax import convert, models
from ecformer_jax.data import pipeline
from ecformer_jax.data.config import data_config
from ecformer_jax.layers.edges import canny
from ecformer_jax.layers.flow import flow_warp
from ecformer_jax.tasks.base import Task
from ecformer_jax.training.config import base_config
from ecformer_jax.training.metrics import image_grid
from ecformer_jax.training.sharding import gathered_updates
from ecformer_jax.training.state import all_finite, guarded_update


# --- config ------------------------------------------------------------------------------------------------
def flow_completion_config(model: str = "recurrent_flow_completion", **overrides) -> ml_collections.ConfigDict:
    """The schema of the flow-completion task with the official recipe (configs/train_flowcomp.json)."""
    c = base_config(model, batch_size=8, num_steps=700_000, seed=2023, image_every=1000, checkpoint_every=5_000)
    c.loss = ml_collections.ConfigDict()
    c.loss.flow_weight = 0.25  # x (hole L1 + valid L1 + smoothness + second-order smoothness), per direction
    c.loss.warp_weight = 0.01  # x ternary (census) loss of the frame warped by the combined flow
    c.loss.edge_weight = 1.0  # x (edge BCE + combined_edge_weight x edge BCE of the combined edges)
    c.loss.combined_edge_weight = 5.0
    c.loss.raft_checkpoint = ""  # raft-things.pth or a converted folder: the ground-truth flows
    c.loss.raft_iters = 20  # RAFT refinement iterations for the targets (official 20)
    c.loss.canny_sigma = 2.0
    c.loss.canny_low = 0.1
    c.loss.canny_high = 0.2

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 5e-5
    c.optim.b1 = 0.0
    c.optim.b2 = 0.99
    c.optim.milestones = (300_000, 400_000, 500_000, 600_000)
    c.optim.gamma = 0.2
    c.optim.grad_clip = 0.0

    c.data = data_config(sampling="local_ref", num_local=10, num_ref=1)  # the flows join the local frames
    c.update(overrides)
    return c


def variant(config, arg: str | None):
    """'tiny': 64x64 synthetic clips of 3 local frames, 2 RAFT iterations, a minute on a CPU."""
    if not arg:
        return config
    if arg != "tiny":
        raise ValueError(f"unknown config variant {arg!r}; available: 'tiny' (or nothing for the paper recipe)")
    config.data.path = ""
    config.data.width = config.data.height = 64  # RAFT needs >= 64
    config.data.num_local, config.data.num_ref = 3, 1
    config.data.num_workers = 0
    config.batch_size = 2
    config.num_steps = 60
    config.log_every = 10
    config.image_every = 30
    config.checkpoint_every = 30
    config.loss.raft_iters = 2
    config.optim.lr = 3e-4
    config.optim.milestones = (1_000_000,)
    return config


# --- state, schedule, batch ----------------------------------------------------------------------------------
class FlowState(flax.struct.PyTreeNode):
    step: jax.Array
    g_params: dict
    g_opt: optax.OptState
    rng: jax.Array
    bad_step: jax.Array


def learning_rate(config):
    return optax.piecewise_constant_schedule(config.optim.lr, {int(m): config.optim.gamma
                                                               for m in config.optim.milestones})


def optimizer(config):
    parts = [optax.clip_by_global_norm(config.optim.grad_clip)] if config.optim.grad_clip > 0 else []
    adam = optax.adam(learning_rate(config), b1=config.optim.b1, b2=config.optim.b2)
    return gathered_updates(optax.chain(*parts, adam))  # whole gradients under FSDP


def num_local(config) -> int:
    return config.data.num_local if config.data.sampling == "local_ref" else config.data.num_frames


def batch_spec(config, batch: int = 1) -> dict:
    """uint8 frames (B, T, H, W, 3) and masks (B, T, H, W, 1), 1 = hole (the inpainting batches; the first
    num_local frames are used)."""
    t = config.data.num_frames if config.data.sampling != "local_ref" else config.data.num_local + config.data.num_ref
    shape = (batch, t, config.data.height, config.data.width)
    return {"frames": jax.ShapeDtypeStruct(shape + (3,), jnp.uint8),
            "masks": jax.ShapeDtypeStruct(shape + (1,), jnp.uint8)}


def dataset(config, process_index: int = 0, process_count: int = 1):
    return pipeline.make_dataset(config.data, config.batch_size, process_index, process_count, seed=config.seed,
                                 task="inpainting")


# --- the loss terms (channels-last; flows (N, H, W, 2), masks (N, H, W, 1)) -----------------------------------
def charbonnier(x, mask, alpha: float = 0.45, eps: float = 1e-3):
    """sum(mask * ((x)^2 + eps^2)^alpha) / x.size (the official generalised Charbonnier)."""
    return jnp.sum(mask * (x * x + eps * eps) ** alpha) / x.size


def _shifted(x, dy: int, dx: int):
    """x[y + dy, x + dx], zeros outside (N, H, W, C)."""
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return xp[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def smoothness(flow, mask):
    """First differences f(p) - f(p + right) and f(p) - f(p + down) (zeros outside) of each flow component,
    Charbonnier-penalised where mask = 1."""
    total = 0.0
    for c in range(2):
        f = flow[..., c:c + 1]
        d = jnp.concatenate([f - _shifted(f, 0, 1), f - _shifted(f, 1, 0)], axis=-1)
        total = total + charbonnier(d, mask)
    return total


def second_order_smoothness(flow, mask):
    """Second differences along x, y and both diagonals (zeros outside), Charbonnier-penalised where mask = 1."""
    total = 0.0
    for c in range(2):
        f = flow[..., c:c + 1]
        d = jnp.concatenate([_shifted(f, 0, -1) - 2 * f + _shifted(f, 0, 1),
                             _shifted(f, -1, 0) - 2 * f + _shifted(f, 1, 0),
                             _shifted(f, -1, -1) - 2 * f + _shifted(f, 1, 1),
                             _shifted(f, -1, 1) - 2 * f + _shifted(f, 1, -1)], axis=-1)
        total = total + charbonnier(d, mask)
    return total


def ternary_transform(image):
    """Census-like transform of images in [-1, 1] (N, H, W, 3): grey (0.299, 0.587, 0.110) x 255, each 3x3
    neighbour (zeros outside) minus the centre, soft-normalised d / sqrt(0.81 + d^2) -> (N, H, W, 9)."""
    gray = (image[..., 0:1] * 0.299 + image[..., 1:2] * 0.587 + image[..., 2:3] * 0.110) * 255
    d = jnp.concatenate([_shifted(gray, dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=-1) - gray
    return d / jnp.sqrt(0.81 + d * d)


def ternary_loss(current, shifted, flow_comp, flow_gt, mask):
    """The census loss of `shifted` warped by the completed flow against `current`, in the holes, weighted by
    a non-occlusion confidence exp(-50 (sum_c |current - shifted warped by the true flow|)^2)."""
    warped_gt = flow_warp(shifted, flow_gt)
    conf = jnp.exp(-50.0 * jnp.sum(jnp.abs(current - warped_gt), axis=-1, keepdims=True) ** 2)
    warped = flow_warp(shifted, flow_comp)
    d = (ternary_transform(current) - ternary_transform(warped)) ** 2
    dist = jnp.sum(d / (0.1 + d), axis=-1, keepdims=True)
    return jnp.mean(dist * conf * mask) / jnp.mean(mask)


def flow_losses(pred_bi, gt_bi, masks, frames):
    """(flow loss, warp loss) summed over the two directions. pred_bi, gt_bi: (forward, backward) flows
    (B, T-1, H, W, 2); masks (B, T, H, W, 1); frames (B, T, H, W, 3) in [-1, 1]."""
    b, n, h, w, _ = pred_bi[0].shape
    dir_masks = (masks[:, :-1], masks[:, 1:])
    current, shifted = (frames[:, :-1], frames[:, 1:]), (frames[:, 1:], frames[:, :-1])
    flow, warp = 0.0, 0.0
    for i in range(2):
        p, g, m = pred_bi[i], gt_bi[i], dir_masks[i]
        hole = jnp.mean(jnp.abs(p * m - g * m)) / jnp.mean(m)
        valid = jnp.mean(jnp.abs(p * (1 - m) - g * (1 - m))) / jnp.mean(1 - m)
        comb = (p * m + g * (1 - m)).reshape(b * n, h, w, 2)
        mf = m.reshape(b * n, h, w, 1)
        flow = flow + hole + valid + smoothness(comb, mf) + second_order_smoothness(comb, mf)
        warp = warp + ternary_loss(current[i].reshape(b * n, h, w, 3), shifted[i].reshape(b * n, h, w, 3), comb,
                                   g.reshape(b * n, h, w, 2), mf)
    return flow, warp


def balanced_bce(pred, target):
    """The official edge BCE: binary_cross_entropy_with_logits(pred, target) (on the network's probabilities,
    as the official code does), edge pixels (target > 0.5) weighted by the non-edge fraction of their frame and
    the others by the edge fraction; mean over everything. pred, target (N, H, W, 1)."""
    edge = (target > 0.5).astype(jnp.float32)
    pos = jnp.mean(edge, axis=(1, 2, 3), keepdims=True)
    weight = (1 - pos) * edge + pos * (1 - edge)
    bce = jnp.maximum(pred, 0) - pred * target + jnp.log1p(jnp.exp(-jnp.abs(pred)))
    return jnp.mean(weight * bce)


def edge_loss(pred_edges_bi, gt_edges_bi, masks, combined_weight: float = 5.0):
    """sum_dir [bce(pred) + combined_weight * bce(pred * m + gt * (1 - m))] (edges (B, T-1, H, W, 1))."""
    total = 0.0
    for pe, ge, m in zip(pred_edges_bi, gt_edges_bi, (masks[:, :-1], masks[:, 1:])):
        shape = (-1,) + pe.shape[2:]
        comb = pe * m + ge * (1 - m)
        total = total + balanced_bce(pe.reshape(shape), ge.reshape(shape)) \
            + combined_weight * balanced_bce(comb.reshape(shape), ge.reshape(shape))
    return total


def flow_edges(flows, sigma: float = 2.0, low: float = 0.1, high: float = 0.2):
    """Edge targets of flows (B, N, H, W, 2): Canny of the magnitude over its maximum over all frames (zeros
    when the maximum is below 1) -> (B, N, H, W, 1) in {0, 1}."""
    b, n, h, w, _ = flows.shape
    mag = jnp.sqrt(jnp.sum(flows * flows, axis=-1, keepdims=True)).reshape(b * n, h, w, 1)
    top = jnp.max(mag)
    mag = jnp.where(top < 1, 0.0, mag / jnp.maximum(top, 1e-12))
    return canny(mag, low, high, 5, sigma)[1].reshape(b, n, h, w, 1)


# --- models ------------------------------------------------------------------------------------------------
def raft_flows(checkpoint: str, iters: int, dtype="float32"):
    """fn(clip in [-1, 1] (B, T, H, W, 3)) -> (forward, backward) flows (B, T-1, H, W, 2) of a frozen RAFT
    (`iters` refinement iterations); checkpoint '' = an untrained RAFT, with a warning."""
    ckpt = checkpoint
    if ckpt:
        variables = convert.resolve(ckpt, model="raft").variables
    else:
        variables = models.init(models.build("raft"), "raft", jax.random.key(1))
        logging.warning("no raft_checkpoint given: the ground-truth flows come from an UNTRAINED RAFT (fine for "
                        "smoke tests, not for real training)")
    net = models.build("raft", dtype=jnp.dtype(dtype))
    n_iter = int(iters)

    def flows(clip):
        return net.apply(variables, clip, iters=n_iter, method="bidirectional")

    return flows


class Built(NamedTuple):
    net: Any  # the flow completion network in training mode
    raft: Any  # fn(clip) -> (forward, backward) flows of the frozen RAFT


def build(config, init_variables=None) -> Built:
    if int(num_local(config)) < 2:
        raise ValueError("flow completion needs at least 2 local frames (data.num_local / data.num_frames)")
    if config.data.height % 8 or config.data.width % 8 or min(config.data.height, config.data.width) < 64:
        raise ValueError(f"flow completion: frames must be multiples of 8 and at least 64 (RAFT); got "
                         f"{config.data.height}x{config.data.width}")
    net = models.build(config.model.name, training=True, dtype=jnp.dtype(config.dtype),
                       **dict(config.model.overrides))
    return Built(net, raft_flows(config.loss.raft_checkpoint, config.loss.raft_iters, config.dtype))


def make_init(config, built: Built):
    tx = optimizer(config)
    nl, h, w = int(num_local(config)), config.data.height, config.data.width
    flows = jnp.zeros((1, nl - 1, h, w, 2), jnp.float32)
    masks = jnp.zeros((1, nl - 1, h, w, 1), jnp.float32)

    def init(rng, init_variables=None):
        rng, key = jax.random.split(rng)
        params = init_variables["params"] if init_variables is not None else built.net.init(key, flows,
                                                                                             masks)["params"]
        return FlowState(step=jnp.zeros((), jnp.int32), g_params=params, g_opt=tx.init(params), rng=rng,
                         bad_step=jnp.full((), -1, jnp.int32))

    return init


def targets(config, built: Built, frames):
    """(gt flows (forward, backward), gt edges (forward, backward)) of the clean local frames, no gradient."""
    gt = built.raft(frames)
    cl = config.loss
    edges = tuple(flow_edges(f, cl.canny_sigma, cl.canny_low, cl.canny_high) for f in gt)
    return jax.lax.stop_gradient((gt, edges))


# --- the step ----------------------------------------------------------------------------------------------
def make_train_step(config, built: Built):
    tx, lr_fn, cl, nl = optimizer(config), learning_rate(config), config.loss, int(num_local(config))

    def train_step(state: FlowState, batch):
        frames = batch["frames"][:, :nl].astype(jnp.float32) / 127.5 - 1.0
        masks = batch["masks"][:, :nl].astype(jnp.float32)
        gt, gt_edges = targets(config, built, frames)

        def loss_fn(params):
            pred, edges = built.net.apply({"params": params}, gt, masks, method="forward_bidirect_flow")
            flow, warp = flow_losses(pred, gt, masks, frames)
            edge = edge_loss(edges, gt_edges, masks, cl.combined_edge_weight)
            terms = {"flow_loss": cl.flow_weight * flow, "warp_loss": cl.warp_weight * warp,
                     "edge_loss": cl.edge_weight * edge}
            return sum(terms.values()), terms

        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g_params)
        g_norm = optax.tree.norm(grads)
        new = guarded_update(state, all_finite(loss, g_norm), tx, {"g": grads})
        return new, {"g_loss": loss, **terms, "g_grad_norm": g_norm, "lr": lr_fn(state.step)}

    return train_step


# --- preview -----------------------------------------------------------------------------------------------
def _flow_rgb(flows):
    """A flow picture in [-1, 1]: x and y (scaled by the largest magnitude) as red and green, blue 0."""
    scale = np.maximum(np.abs(flows).max(), 1e-6)
    f = flows / scale
    return np.concatenate([f, np.zeros(f.shape[:-1] + (1,), f.dtype)], axis=-1)


def make_preview(config, built: Built):
    """preview(g_params, batch) -> {"masked_output_target": grid} of forward flows: masked | completed | RAFT."""
    nl = int(num_local(config))

    @jax.jit
    def run(params, frames, masks):
        gt, _ = targets(config, built, frames)
        pred, _ = built.net.apply({"params": params}, gt, masks, method="forward_bidirect_flow")
        m = masks[:, :-1]
        return gt[0] * (1 - m), pred[0] * m + gt[0] * (1 - m), gt[0]

    def preview(g_params, batch):
        frames = batch["frames"][:, :nl].astype(jnp.float32) / 127.5 - 1
        masks = batch["masks"][:, :nl].astype(jnp.float32)
        masked, comp, gt = (np.asarray(v) for v in jax.device_get(run(g_params, frames, masks)))
        return {"masked_output_target": image_grid(*(_flow_rgb(v) for v in (masked, comp, gt)))}

    return preview


TASK = Task(name="flow_completion", config=flow_completion_config, batch_spec=batch_spec, dataset=dataset,
            build=build, make_init=make_init, make_train_step=make_train_step, make_preview=make_preview,
            runner=None)  # no runner of its own: inference.propainter runs the trained network
