"""The super-resolution task of the trainer (models of registry kind 'super_resolution', VSR-Transformer).

    python -m ecformer_jax.train --config configs/vsr_transformer.py:tiny --workdir /tmp/vsr
    python -m ecformer_jax.training.sr export --workdir /tmp/vsr --output /tmp/vsr_params
    python -m ecformer_jax.upscale --checkpoint /tmp/vsr_params --video lr/ --output sr/

`training/loop.py` calls `setup` here for such models; everything else (data, checkpoints, metrics,
sharding, the NaN guard) is the loop's. Pieces (spec section 8, BasicSR EDVRModel + the official ymls):

* the loss: Charbonnier sqrt((x - y)^2 + eps) (official, eps 1e-12, reduction 'sum' over every pixel of
  every frame of the batch) or L1; `loss.reduction` 'mean' is offered for readable numbers (Adam is
  nearly invariant to the loss scale);
* Adam (betas 0.9 / 0.99, eps 1e-8 as PyTorch) with BasicSR's CosineAnnealingRestartLR: `learning_rate`;
* SPyNet (the parameters under 'spynet') is its own group: no update at all for the first
  `optim.spynet_frozen_steps` steps (its Adam moments stay untouched, as a frozen PyTorch parameter with
  requires_grad=False), then the schedule times `optim.spynet_lr_mult`, with a fresh Adam (bias
  correction counted from the unfreezing). Official values: 0 and 1 (the options leave it out). Frozen for
  the whole run (spynet_frozen_steps >= num_steps), its gradient is not even computed;
* the state `SRState` (step, g_params, g_opt, rng, bad_step), created already sharded like TrainState.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ecformer_jax import models
from ecformer_jax.training import sharding as shd

SPYNET = "spynet"  # top-level parameter collection of the flow network


class SRState(flax.struct.PyTreeNode):
    step: jax.Array
    g_params: Any
    g_opt: Any
    rng: jax.Array
    bad_step: jax.Array  # -1, or the first step whose loss/gradients were not finite (then updates stop)


# --- schedule ------------------------------------------------------------------------------------------
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


# --- optimizer -----------------------------------------------------------------------------------------
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
    return optax.chain(*parts, optax.multi_transform({"main": main, SPYNET: spynet}, param_labels))


# --- losses --------------------------------------------------------------------------------------------
def pixel_loss(pred, target, kind: str = "charbonnier", eps: float = 1e-12, reduction: str = "sum"):
    """Charbonnier sqrt((pred - target)^2 + eps) or L1 |pred - target|, summed or averaged over everything."""
    diff = pred - target
    if kind == "charbonnier":
        err = jnp.sqrt(diff * diff + eps)
    elif kind == "l1":
        err = jnp.abs(diff)
    else:
        raise ValueError(f"unknown loss.kind {kind!r}: charbonnier | l1")
    if reduction == "sum":
        return jnp.sum(err)
    if reduction == "mean":
        return jnp.mean(err)
    raise ValueError(f"unknown loss.reduction {reduction!r}: sum | mean")


def batch_psnr(pred, target):
    """Mean over frames of the PSNR (dB) of pred clamped to [0, 1] against target (both in [0, 1])."""
    mse = jnp.mean((jnp.clip(pred, 0, 1) - target) ** 2, axis=(-3, -2, -1))
    return jnp.mean(-10.0 * jnp.log10(jnp.maximum(mse, 1e-10)))


# --- state and step ------------------------------------------------------------------------------------
def build_model(config):
    entry = models.get(config.model.name)
    if entry.kind != "super_resolution":
        raise ValueError(f"model '{config.model.name}' is a {entry.kind} model, not a super-resolution model")
    if config.model.get("remat", False):
        raise ValueError(f"model.remat: {config.model.name} has no rematerialisation option (the inpainting "
                         "generators have); set model.remat=False")
    return models.build(config.model.name, dtype=jnp.dtype(config.dtype), **dict(config.model.overrides))


def example_lr(config, model, batch: int = 1):
    return jnp.zeros((batch, int(config.data.num_frames), model.feat_size, model.feat_size, 3), jnp.float32)


def make_init(config, model):
    tx = optimizer(config)
    lr = example_lr(config, model)

    def init(rng, init_variables=None):
        rng, key = jax.random.split(rng)
        params = init_variables["params"] if init_variables is not None else model.init(key, lr)["params"]
        return SRState(step=jnp.zeros((), jnp.int32), g_params=params, g_opt=tx.init(params), rng=rng,
                       bad_step=jnp.full((), -1, jnp.int32))

    return init


def create_state(config, model, mesh, rng, init_variables=None):
    init = make_init(config, model)
    abstract = jax.eval_shape(init, rng, init_variables)
    shardings = shd.state_shardings(abstract, mesh, config.mesh.shard_params)
    return jax.jit(init, out_shardings=shardings)(rng, init_variables), shardings


def check_data(config, model):
    gt, scale = int(config.data.gt_size), int(config.data.scale)
    if scale != 4 or gt != 4 * model.feat_size:
        raise ValueError(f"data.gt_size={gt} / data.scale={scale}: {config.model.name} is x4 on "
                         f"{model.feat_size}x{model.feat_size} LR crops, so gt_size must be {4 * model.feat_size} "
                         "and scale 4")


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
        updates, g_opt = tx.update(grads, state.g_opt, state.g_params)
        g_params = optax.apply_updates(state.g_params, updates)

        g_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(g_norm)
        ok = finite & (state.bad_step < 0)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        new_state = state.replace(
            step=state.step + 1, g_params=keep(g_params, state.g_params), g_opt=keep(g_opt, state.g_opt),
            bad_step=jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step))
        metrics = {"g_loss": loss, "l1": jnp.mean(jnp.abs(out - hr)), "psnr": batch_psnr(out, hr),
                   "g_grad_norm": g_norm, "lr": lr_fn(state.step), "spynet_lr": spy_fn(state.step)}
        return new_state, metrics

    return train_step


def setup(config, mesh, init_variables=None):
    """(model, state, shardings, jitted step), as loop.setup returns for inpainting models."""
    model = build_model(config)
    check_data(config, model)
    state, shardings = create_state(config, model, mesh, jax.random.key(config.seed), init_variables)
    step_fn = jax.jit(make_train_step(config, model), in_shardings=(shardings, shd.batch_sharding(mesh)),
                      out_shardings=(shardings, shd.replicated(mesh)), donate_argnums=(0,))
    return model, state, shardings, step_fn


# --- previews ------------------------------------------------------------------------------------------
def make_preview(config, model):
    """preview(params, batch) -> uint8 grid: rows of LR bicubic-up | output | ground truth per sample."""
    from ecformer_jax.training.metrics import image_grid

    @jax.jit
    def run(params, lr_u8):
        lr = lr_u8.astype(jnp.float32) / 255.0
        out = model.apply({"params": params}, lr.astype(jnp.dtype(config.dtype))).astype(jnp.float32)
        b, t, h, w, c = lr.shape
        up = jax.image.resize(lr, (b, t, 4 * h, 4 * w, c), "bicubic")
        return up, out

    def preview(params, batch):
        lr, hr = batch["lr"][:2], batch["hr"][:2]
        up, out = jax.device_get(run(params, lr))
        hr = np.asarray(jax.device_get(hr), np.float32) / 255.0
        return image_grid(*(np.clip(v, 0, 1) * 2 - 1 for v in (up, out, hr)))

    return preview


# --- export for the upscale command -------------------------------------------------------------------
def read_workdir(workdir: str, step: int | None = None):
    """(model name, model options, {'params': generator parameters}, source) of training checkpoint `step`
    (default: the latest) of `workdir`; the model name and options come from <workdir>/config.json."""
    import orbax.checkpoint as ocp

    workdir = os.path.abspath(workdir)
    cfg_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{cfg_path} not found: is {workdir} a training workdir?")
    with open(cfg_path) as f:
        cfg = json.load(f)
    name, overrides = cfg["model"]["name"], dict(cfg["model"].get("overrides") or {})
    ckpt_dir = os.path.join(workdir, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) if os.path.isdir(ckpt_dir) else []
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {ckpt_dir}")
    step = steps[-1] if step is None else int(step)
    if step not in steps:
        raise ValueError(f"no checkpoint of step {step} in {ckpt_dir}; available: {steps}")
    state = ocp.StandardCheckpointer().restore(os.path.join(ckpt_dir, str(step), "state"))
    return name, overrides, {"params": jax.tree.map(np.asarray, state["g_params"])}, f"{ckpt_dir}/{step}"


def export(workdir: str, output: str, step: int | None = None, overwrite: bool = False) -> str:
    """Write the generator parameters of a training checkpoint of `workdir` (read_workdir) as a converted
    checkpoint folder (convert.save)."""
    from ecformer_jax import convert

    name, overrides, variables, source = read_workdir(workdir, step)
    return convert.save(output, name, variables, overrides, source=source, overwrite=overwrite)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ecformer_jax.training.sr")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="training checkpoint -> converted folder for the upscale command")
    e.add_argument("--workdir", required=True)
    e.add_argument("--output", required=True)
    e.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    e.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    try:
        path = export(args.workdir, args.output, args.step, args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
