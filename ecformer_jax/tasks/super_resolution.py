"""Video super-resolution: models of registry task 'super_resolution' (VSR-Transformer), x4, a pixel loss.

    python -m ecformer_jax.train --config vsr_transformer:tiny --workdir /tmp/vsr
    python -m ecformer_jax.upscale --checkpoint /tmp/vsr --video lr/ --output sr/

Pieces (BasicSR EDVRModel + the official VSR-Transformer options):

* the loss: Charbonnier sqrt((x - y)^2 + eps) (official, eps 1e-12, reduction 'sum' over every pixel of
  every frame of the batch) or L1; `loss.reduction` 'mean' is offered for readable numbers (Adam is
  nearly invariant to the loss scale);
* Adam (betas 0.9 / 0.99, eps 1e-8 as PyTorch) with BasicSR's CosineAnnealingRestartLR: `learning_rate`;
* SPyNet (the parameters under 'spynet') is its own group: no update at all for the first
  `optim.spynet_frozen_steps` steps (its Adam moments stay untouched, as a frozen PyTorch parameter with
  requires_grad=False), then the schedule times `optim.spynet_lr_mult`, with a fresh Adam (bias
  correction counted from the unfreezing). Official values: 0 and 1 (the options leave it out). Frozen for
  the whole run (spynet_frozen_steps >= num_steps), its gradient is not even computed;
* the state `SRState` (step, g_params, g_opt, rng, bad_step).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ecformer_jax import models
from ecformer_jax.data import pipeline
from ecformer_jax.data.config import data_config
from ecformer_jax.inference.vsr import VSRUpscaler
from ecformer_jax.tasks.base import Task
from ecformer_jax.training.config import base_config
from ecformer_jax.training.losses import pixel_loss
from ecformer_jax.training.metrics import image_grid
from ecformer_jax.training.sharding import gathered_updates
from ecformer_jax.training.state import all_finite, guarded_update

SPYNET = "spynet"  # top-level parameter collection of the flow network


# --- config ------------------------------------------------------------------------------------------------
def sr_config(model: str, **overrides) -> ml_collections.ConfigDict:
    """The schema of the super-resolution task: no discriminator, a pixel loss (Charbonnier or L1), Adam with
    the cosine-annealing-with-restarts schedule (BasicSR CosineAnnealingRestartLR) and a separate parameter
    group for SPyNet (frozen for optim.spynet_frozen_steps steps, then lr * optim.spynet_lr_mult). Defaults:
    the official VSR-Transformer REDS recipe."""
    c = base_config(model, batch_size=32, num_steps=1_200_000, seed=10, image_every=5_000, checkpoint_every=5_000)

    c.loss = ml_collections.ConfigDict()
    c.loss.kind = "charbonnier"  # charbonnier: sqrt((x - y)^2 + eps) | l1
    c.loss.eps = 1e-12
    c.loss.reduction = "sum"  # sum (official: over all pixels and frames of the batch) | mean
    c.loss.weight = 1.0

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 2e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.99
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0  # PyTorch Adam's L2 term (added to the gradient)
    c.optim.grad_clip = 0.0  # global-norm clipping, 0 = off
    c.optim.periods = (300_000, 300_000, 300_000, 300_000)  # CosineAnnealingRestartLR
    c.optim.restart_weights = (1.0, 0.5, 0.5, 0.5)
    c.optim.eta_min = 1e-7
    c.optim.spynet_frozen_steps = 0  # official: the fixed-iterations option is commented out (0)
    c.optim.spynet_lr_mult = 1.0  # official: one lr for every parameter

    c.data = data_config(num_frames=5, width=1280, height=720, layout="frames", flip=True)
    c.data.interval = 1  # frame interval of a sample (interval_list [1])
    c.data.gt_size = 256  # HR crop side (the LR crop is gt_size // scale = 64, the model's input size)
    c.data.scale = 4
    c.data.random_reverse = True  # temporal reverse, p 0.5
    c.data.rotate = True  # vertical flip and transpose (BasicSR use_rot), each p 0.5
    c.update(overrides)
    return c


# --- state and schedule ------------------------------------------------------------------------------------
class SRState(flax.struct.PyTreeNode):
    step: jax.Array
    g_params: Any
    g_opt: Any
    rng: jax.Array
    bad_step: jax.Array  # -1, or the first step whose loss/gradients were not finite (then updates stop)


def cosine_restart_lr(iteration, base_lr: float, periods, restart_weights, eta_min: float):
    """BasicSR CosineAnnealingRestartLR at scheduler position `iteration` (jnp scalar or int):
    in period i (iteration in (cum[i-1], cum[i]], cum = cumulative periods, cum[-1] = 0),
    eta_min + w_i / 2 * (base_lr - eta_min) * (1 + cos(pi * (iteration - cum[i-1]) / periods[i])).
    Past the last period the last value (eta_min) is kept."""
    periods = [int(p) for p in periods]
    weights = [float(w) for w in restart_weights]
    if not periods or len(periods) != len(weights) or min(periods) < 1:
        raise ValueError(f"optim.periods {periods} and optim.restart_weights {weights} must be non-empty, of the "
                         "same length, with positive periods")
    cum = np.cumsum(periods)
    e = jnp.clip(jnp.asarray(iteration, jnp.float32), 0, float(cum[-1]))
    idx = jnp.clip(jnp.searchsorted(jnp.asarray(cum, jnp.float32), e, side="left"), 0, len(periods) - 1)
    start = jnp.asarray(np.concatenate([[0], cum[:-1]]), jnp.float32)[idx]
    period = jnp.asarray(periods, jnp.float32)[idx]
    weight = jnp.asarray(weights, jnp.float32)[idx]
    return eta_min + weight * 0.5 * (base_lr - eta_min) * (1 + jnp.cos(jnp.pi * (e - start) / period))


def learning_rate(config):
    """lr(step), step = updates done so far (0 for the first). BasicSR steps its scheduler before each
    iteration (current_iter from 1), so the k-th update (k = step + 1) uses the schedule at position k."""
    o = config.optim
    return lambda step: cosine_restart_lr(jnp.asarray(step) + 1, o.lr, o.periods, o.restart_weights, o.eta_min)


def spynet_learning_rate(config):
    """The SPyNet group's lr(step): 0 while frozen, then lr(step) * spynet_lr_mult."""
    base, o = learning_rate(config), config.optim
    return lambda step: jnp.where(jnp.asarray(step) < o.spynet_frozen_steps, 0.0, base(step) * o.spynet_lr_mult)


class FrozenState(NamedTuple):
    count: jax.Array
    inner: Any


def frozen_for(inner: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
    """Zero updates and an untouched `inner` state for the first `steps` calls, then `inner`."""

    def init(params):
        return FrozenState(jnp.zeros((), jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        new_updates, new_inner = inner.update(updates, state.inner, params)
        active = state.count >= steps
        new_updates = jax.tree.map(lambda u: jnp.where(active, u, jnp.zeros_like(u)), new_updates)
        new_inner = jax.tree.map(lambda a, b: jnp.where(active, a, b), new_inner, state.inner)
        return new_updates, FrozenState(optax.safe_int32_increment(state.count), new_inner)

    return optax.GradientTransformation(init, update)


def param_labels(params):
    """'spynet' for the flow network's parameters, 'main' for the rest."""
    return {k: jax.tree.map(lambda _, k=k: SPYNET if k == SPYNET else "main", v) for k, v in params.items()}


def optimizer(config) -> optax.GradientTransformation:
    o = config.optim

    def adam():
        parts = [optax.add_decayed_weights(o.weight_decay)] if o.weight_decay > 0 else []
        return optax.chain(*parts, optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps))

    main = optax.chain(adam(), optax.scale_by_learning_rate(learning_rate(config)))
    spynet = optax.chain(frozen_for(adam(), int(o.spynet_frozen_steps)),
                         optax.scale_by_learning_rate(spynet_learning_rate(config)))
    parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
    by_label = optax.multi_transform({"main": main, SPYNET: spynet}, param_labels)
    return gathered_updates(optax.chain(*parts, by_label))  # whole gradients under FSDP


def batch_psnr(pred, target):
    """Mean over frames of the PSNR (dB) of pred clamped to [0, 1] against target (both in [0, 1])."""
    mse = jnp.mean((jnp.clip(pred, 0, 1) - target) ** 2, axis=(-3, -2, -1))
    return jnp.mean(-10.0 * jnp.log10(jnp.maximum(mse, 1e-10)))


# --- batch, data, model ------------------------------------------------------------------------------------
def batch_spec(config, batch: int = 1) -> dict:
    """uint8 LR clips (B, T, h, w, 3) and their HR ground truth (B, T, scale h, scale w, 3)."""
    t, gt, scale = int(config.data.num_frames), int(config.data.gt_size), int(config.data.scale)
    return {"lr": jax.ShapeDtypeStruct((batch, t, gt // scale, gt // scale, 3), jnp.uint8),
            "hr": jax.ShapeDtypeStruct((batch, t, gt, gt, 3), jnp.uint8)}


def dataset(config, process_index: int = 0, process_count: int = 1):
    return pipeline.make_dataset(config.data, config.batch_size, process_index, process_count, seed=config.seed,
                                 task="sr")


def build(config, init_variables=None):
    """The model (flax module); checks that the config's crops fit it."""
    del init_variables  # nothing of the task depends on them
    entry = models.get(config.model.name)
    if entry.kind != "super_resolution":
        raise ValueError(f"model '{config.model.name}' is a {entry.kind} model, not a super-resolution model")
    remat = {"remat": True} if config.model.get("remat", False) else {}  # layers recomputed in the backward pass
    model = models.build(config.model.name, dtype=jnp.dtype(config.dtype), **remat, **dict(config.model.overrides))
    gt, scale = int(config.data.gt_size), int(config.data.scale)
    if scale != 4 or gt != 4 * model.feat_size:
        raise ValueError(f"data.gt_size={gt} / data.scale={scale}: {config.model.name} is x4 on "
                         f"{model.feat_size}x{model.feat_size} LR crops, so gt_size must be {4 * model.feat_size} "
                         "and scale 4")
    return model


def make_init(config, model):
    """init(rng, init_variables=None) -> SRState (pure)."""
    tx = optimizer(config)
    lr = jnp.zeros((1, int(config.data.num_frames), model.feat_size, model.feat_size, 3), jnp.float32)

    def init(rng, init_variables=None):
        rng, key = jax.random.split(rng)
        params = init_variables["params"] if init_variables is not None else model.init(key, lr)["params"]
        return SRState(step=jnp.zeros((), jnp.int32), g_params=params, g_opt=tx.init(params), rng=rng,
                       bad_step=jnp.full((), -1, jnp.int32))

    return init


# --- the step ----------------------------------------------------------------------------------------------
def make_train_step(config, model):
    """train_step(state, batch) -> (state, metrics); batch {"lr": uint8 (B,T,h,w,3), "hr": uint8 (B,T,4h,4w,3)}."""
    tx = optimizer(config)
    lr_fn, spy_fn = learning_rate(config), spynet_learning_rate(config)
    cl = config.loss
    dtype = jnp.dtype(config.dtype)
    if cl.kind not in ("charbonnier", "l1") or cl.reduction not in ("sum", "mean"):
        raise ValueError(f"loss.kind {cl.kind!r} / loss.reduction {cl.reduction!r}: expected charbonnier | l1 "
                         "and sum | mean")

    # SPyNet frozen for the whole run: no gradient for it at all (as PyTorch's requires_grad=False), which
    # skips its backward pass (about half of the tiny model's step) and leaves it out of g_grad_norm and
    # grad_clip; its updates would be zero anyway, so the parameters are the same.
    spynet_always_frozen = int(config.optim.spynet_frozen_steps) >= int(config.num_steps)

    def train_step(state: SRState, batch):
        lr = batch["lr"].astype(jnp.float32) / 255.0
        hr = batch["hr"].astype(jnp.float32) / 255.0

        def loss_fn(params):
            if spynet_always_frozen and SPYNET in params:
                params = {**params, SPYNET: jax.lax.stop_gradient(params[SPYNET])}
            out = model.apply({"params": params}, lr.astype(dtype)).astype(jnp.float32)
            return cl.weight * pixel_loss(out, hr, cl.kind, cl.eps, cl.reduction), out

        (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g_params)
        g_norm = optax.tree.norm(grads)
        new_state = guarded_update(state, all_finite(loss, g_norm), tx, {"g": grads})
        metrics = {"g_loss": loss, "l1": jnp.mean(jnp.abs(out - hr)), "psnr": batch_psnr(out, hr),
                   "g_grad_norm": g_norm, "lr": lr_fn(state.step), "spynet_lr": spy_fn(state.step)}
        return new_state, metrics

    return train_step


# --- preview -----------------------------------------------------------------------------------------------
def make_preview(config, model):
    """preview(g_params, batch) -> {"lr_bicubic_output_target": grid}: rows of LR bicubic-up | output | ground
    truth per sample."""

    @jax.jit
    def run(params, lr_u8):
        lr = lr_u8.astype(jnp.float32) / 255.0
        out = model.apply({"params": params}, lr.astype(jnp.dtype(config.dtype))).astype(jnp.float32)
        b, t, h, w, c = lr.shape
        up = jax.image.resize(lr, (b, t, 4 * h, 4 * w, c), "bicubic")
        return up, out

    def preview(g_params, batch):
        lr, hr = batch["lr"][:2], batch["hr"][:2]
        up, out = jax.device_get(run(g_params, lr))
        hr = np.asarray(jax.device_get(hr), np.float32) / 255.0
        return {"lr_bicubic_output_target": image_grid(*(np.clip(v, 0, 1) * 2 - 1 for v in (up, out, hr)))}

    return preview


TASK = Task(name="super_resolution", config=sr_config, batch_spec=batch_spec, dataset=dataset, build=build,
            make_init=make_init, make_train_step=make_train_step, make_preview=make_preview, runner=VSRUpscaler)
