"""Video inpainting: generators of registry task 'inpainting' trained against a T-PatchGAN discriminator.

One iteration (`make_train_step`): the generator runs once (jax.vjp); its output feeds the discriminator
update (stop-gradient), then the generator update with the updated discriminator: hole L1 + valid L1 +
adversarial weight x GAN loss (+ flow weight x L1 to a frozen SPyNet's flows for models that declare the
'flow' loss, E2FGVI). Spectral-norm vectors do one power iteration per D forward as in the official trainers
(D(real), D(fake) for D; D(comp) for G). Adam with step decay at the milestones, for G and D. With
loss.adversarial_weight = 0 (pure L1 training) the discriminator is neither run nor updated: the step is the
generator's alone and d_loss / g_adv / d_grad_norm are not logged.

Generators whose registry entry has train_inputs='flow_guided' (ProPainter) get the inputs of the official
ProPainter trainer, built without gradient: a frozen RAFT (model.raft_checkpoint, model.raft_iters) gives the
flows of the clean local frames, the frozen flow completion network (model.flow_completion_checkpoint)
completes them inside the local holes (prediction in the holes, RAFT outside), image propagation
(model.interp_mode) fills the local holes it can reach and updates their masks; the generator (built with
training=True: it decodes every frame) gets the propagated local frames + masked reference frames, the
completed flows, the masks and the updated masks. Untrained RAFT / flow completion (with a warning) when no
checkpoint is given: fine for smoke tests only.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from ecformer_jax import convert, models
from ecformer_jax.data import pipeline
from ecformer_jax.data.config import data_config
from ecformer_jax.inference.protocol import Inpainter
from ecformer_jax.layers.flow import SPyNet
from ecformer_jax.layers.tiling import lane_dense
from ecformer_jax.models.e2fgvi import local_flows
from ecformer_jax.tasks.base import Task
from ecformer_jax.training import losses
from ecformer_jax.training.config import base_config
from ecformer_jax.training.metrics import image_grid
from ecformer_jax.training.sharding import gathered_once, gathered_updates
from ecformer_jax.training.state import all_finite, guarded_update


# --- config ------------------------------------------------------------------------------------------------
def inpainting_config(model: str, discriminator: str | None = None, **overrides) -> ml_collections.ConfigDict:
    """The one config schema every inpainting model trains with; `ecformer_jax/configs/<model>.py` call it with
    the paper recipe. discriminator: default the model's registered one (`models.get(model).discriminator`)."""
    c = base_config(model, batch_size=8, num_steps=500_000, seed=0, image_every=1000, checkpoint_every=10_000)
    c.model.discriminator = discriminator or models.get(model).discriminator
    c.model.disc_joint_clip = False  # True: D sees the whole per-process batch as ONE clip (official trainers)

    c.loss = ml_collections.ConfigDict()
    c.loss.hole_weight = 1.0
    c.loss.valid_weight = 1.0
    c.loss.adversarial_weight = 0.01
    c.loss.gan_type = "hinge"  # hinge | nsgan | lsgan
    c.loss.flow_weight = 0.0  # E2FGVI: 1.0 (L1 to a frozen SPyNet's flows)
    c.loss.spynet_checkpoint = ""  # converted dir or .pth of the pretrained SPyNet for the flow loss

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-4
    c.optim.b1 = 0.0
    c.optim.b2 = 0.99
    c.optim.weight_decay = 0.0
    c.optim.milestones = (400_000,)  # lr *= gamma at each milestone (both G and D)
    c.optim.gamma = 0.1
    c.optim.grad_clip = 0.0  # global-norm clipping, 0 = off

    c.data = data_config()
    c.update(overrides)
    return c


def variant(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Apply the 'tiny' variant shared by all inpainting configs: small frames, few steps, synthetic data,
    on a CPU in a few minutes."""
    if not arg:
        return config
    if arg != "tiny":
        raise ValueError(f"unknown config variant {arg!r}; available: 'tiny' (or nothing for the paper recipe)")
    config.data.path = ""
    config.data.width = 96
    config.data.height = 48
    config.data.num_workers = 0
    config.batch_size = 2
    config.num_steps = 60
    config.log_every = 10
    config.image_every = 30
    config.checkpoint_every = 30
    config.optim.lr = 3e-4
    config.optim.milestones = (1_000_000,)
    return config


# --- state, schedule, batch ----------------------------------------------------------------------------------
class TrainState(flax.struct.PyTreeNode):
    step: jax.Array
    g_params: Any
    d_params: Any
    d_spectral: Any  # spectral-norm vectors of the discriminator (updated every forward in training)
    g_opt: Any
    d_opt: Any
    rng: jax.Array
    bad_step: jax.Array  # -1, or the first step whose losses/gradients were not finite (then updates stop)


def learning_rate(config):
    """Step decay at the milestones (applied to G and D), as the official trainers do."""
    boundaries = {int(m): config.optim.gamma for m in config.optim.milestones}
    return optax.piecewise_constant_schedule(config.optim.lr, boundaries)


def optimizer(config) -> optax.GradientTransformation:
    parts = []
    if config.optim.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(config.optim.grad_clip))
    if config.optim.weight_decay > 0:
        parts.append(optax.adamw(learning_rate(config), b1=config.optim.b1, b2=config.optim.b2,
                                 weight_decay=config.optim.weight_decay))
    else:
        parts.append(optax.adam(learning_rate(config), b1=config.optim.b1, b2=config.optim.b2))
    return gathered_updates(optax.chain(*parts))  # whole gradients under FSDP


def num_local(config) -> int | None:
    return config.data.num_local if config.data.sampling == "local_ref" else None


def batch_spec(config, batch: int = 1) -> dict:
    """uint8 frames (B, T, H, W, 3) and masks (B, T, H, W, 1), 1 = hole."""
    t = config.data.num_frames if config.data.sampling != "local_ref" else config.data.num_local + config.data.num_ref
    shape = (batch, t, config.data.height, config.data.width)
    return {"frames": jax.ShapeDtypeStruct(shape + (3,), jnp.uint8),
            "masks": jax.ShapeDtypeStruct(shape + (1,), jnp.uint8)}


def dataset(config, process_index: int = 0, process_count: int = 1):
    return pipeline.make_dataset(config.data, config.batch_size, process_index, process_count, seed=config.seed,
                                 task="inpainting")


# --- models ------------------------------------------------------------------------------------------------
class Models(NamedTuple):
    generator: Any
    disc: Any
    flow_targets: Any  # None, or fn(frames in [-1, 1], num_local) -> (forward, backward) flows (E2FGVI)
    guide: Any = None  # None, or fn(frames, masks, g_params) -> generator apply args ('flow_guided' inputs)


def build(config, init_variables=None) -> Models:
    dtype = jnp.dtype(config.dtype)
    remat = {"remat": True} if config.model.get("remat", False) else {}  # blocks recomputed in the backward pass
    entry = models.get(config.model.name)
    guided = entry.train_inputs == "flow_guided"
    training = {"training": True} if guided else {}  # ProPainter's training mode: every frame decoded
    generator = models.build(config.model.name, dtype=dtype, **remat, **training, **dict(config.model.overrides))
    disc = models.build(config.model.discriminator, dtype=dtype)
    guide = make_flow_guide(config, generator) if guided else None
    return Models(generator, disc, make_flow_targets(config, init_variables), guide)


def make_flow_guide(config, generator):
    """ProPainter's training inputs (see the module docstring): fn(frames, masks, g_params) -> the generator's
    apply args (updated frames, (flows_f, flows_b), masks, updated masks, num_local), no gradient."""
    from ecformer_jax.tasks.flow_completion import raft_flows

    cm = config.model
    raft = raft_flows(cm.raft_checkpoint, cm.raft_iters, config.dtype)
    if cm.flow_completion_checkpoint:
        fc_vars = convert.resolve(cm.flow_completion_checkpoint, model="recurrent_flow_completion").variables
    else:
        fc_vars = models.init(models.build("recurrent_flow_completion"), "recurrent_flow_completion",
                              jax.random.key(2))
        logging.warning("no model.flow_completion_checkpoint given: the flows are completed by an UNTRAINED flow "
                        "completion network (fine for smoke tests, not for real training)")
    fc = models.build("recurrent_flow_completion", dtype=jnp.dtype(config.dtype))
    nl_cfg = num_local(config)

    def guide(frames, masks, g_params):
        nl = nl_cfg or frames.shape[1]
        local, local_masks = frames[:, :nl], masks[:, :nl]
        masked = frames * (1 - masks)
        flows = raft(local)
        pred, _ = fc.apply(fc_vars, flows, local_masks, method="forward_bidirect_flow")
        flows = fc.apply(fc_vars, flows, pred, local_masks, method="combine_flow")
        prop, upd = generator.apply({"params": g_params}, masked[:, :nl], flows, local_masks,
                                    interpolation=cm.interp_mode, method="img_propagation")
        frames_in = jnp.concatenate([local * (1 - local_masks) + prop * local_masks, masked[:, nl:]], axis=1)
        masks_upd = jnp.concatenate([upd, masks[:, nl:]], axis=1)
        return jax.lax.stop_gradient((frames_in, flows, masks, masks_upd)) + (nl,)

    return guide


def make_flow_targets(config, init_variables=None):
    """Frozen SPyNet flows of the unmasked local frames (E2FGVI's flow loss); None without that loss."""
    entry = models.get(config.model.name)
    if "flow" not in entry.extra_losses or config.loss.flow_weight <= 0:
        return None
    if config.loss.spynet_checkpoint:
        variables = convert.resolve(config.loss.spynet_checkpoint, model="spynet").variables
    elif init_variables is not None and "update_spynet" in init_variables["params"]:
        variables = {"params": init_variables["params"]["update_spynet"]}
        logging.warning("flow loss: no loss.spynet_checkpoint given; using the SPyNet of init_from, frozen")
    else:
        variables = models.init(models.build("spynet"), "spynet", jax.random.key(1))
        logging.warning("flow loss: no loss.spynet_checkpoint given; the targets come from an UNTRAINED SPyNet "
                        "(fine for smoke tests, not for real training)")
    net = SPyNet()

    def flow_targets(frames, nl):
        return local_flows(lambda ref, supp: net.apply(variables, ref, supp), frames, nl)

    return flow_targets


def make_init(config, built: Models):
    """init(rng, init_variables=None) -> TrainState (pure). init_variables: generator variables to start from
    (finetuning) instead of a fresh init."""
    tx = optimizer(config)
    spec = batch_spec(config)
    frames = jnp.zeros(spec["frames"].shape, jnp.float32)
    masks = jnp.zeros(spec["masks"].shape, jnp.float32)
    generator, disc = built.generator, built.disc

    def init(rng, init_variables=None):
        rng, g_key, d_key = jax.random.split(rng, 3)
        g_vars = init_variables if init_variables is not None else _init_generator(config, generator, g_key,
                                                                                   frames, masks)
        d_vars = disc.init(d_key, frames)
        return TrainState(
            step=jnp.zeros((), jnp.int32), g_params=g_vars["params"], d_params=d_vars["params"],
            d_spectral=d_vars.get("spectral", {}), g_opt=tx.init(g_vars["params"]), d_opt=tx.init(d_vars["params"]),
            rng=rng, bad_step=jnp.full((), -1, jnp.int32),
        )

    return init


def _init_generator(config, generator, key, frames, masks):
    nl = num_local(config)
    if models.get(config.model.name).train_inputs == "flow_guided":
        n = nl or frames.shape[1]
        flows = jnp.zeros(frames.shape[:1] + (n - 1,) + frames.shape[2:4] + (2,), jnp.float32)
        return generator.init(key, frames, (flows, flows), masks, masks, n)
    args, kwargs = models.get(config.model.name).call_args(frames, masks, nl if nl is not None else frames.shape[1])
    return generator.init(key, *args, **kwargs)


# --- the step ----------------------------------------------------------------------------------------------
def make_train_step(config, built: Models):
    """train_step(state, batch) -> (state, metrics). batch: uint8 frames (B,T,H,W,3), masks (B,T,H,W,1)."""
    generator, disc, flow_targets, guide = built
    tx = optimizer(config)
    lr_fn = learning_rate(config)
    name = config.model.name
    nl = num_local(config)
    cl = config.loss
    joint = config.model.disc_joint_clip
    dtype = jnp.dtype(config.dtype)
    with_flows = flow_targets is not None and cl.flow_weight > 0
    adversarial = cl.adversarial_weight != 0

    def d_apply(params, spectral, clip):
        clip = clip.reshape(*clip.shape[:-1], -1, 3)  # from the lane-dense (B, T, H, W * 3)
        if joint:  # the official trainers: all B*T frames of the (per-device) batch form one clip
            clip = clip.reshape(1, -1, *clip.shape[2:])
        logits, upd = disc.apply({"params": params, "spectral": spectral}, clip.astype(dtype), train=True,
                                 mutable=["spectral"])
        return logits.astype(jnp.float32), upd["spectral"]

    def train_step(state: TrainState, batch):
        frames = batch["frames"].astype(jnp.float32) / 127.5 - 1.0
        masks = batch["masks"].astype(jnp.float32)
        masked = frames * (1.0 - masks)

        guided = guide(frames, masks, state.g_params) if guide is not None else None

        def g_forward(g_params):
            if guided is not None:
                return generator.apply({"params": g_params}, *guided).astype(jnp.float32), ()
            pred, extras = models.generate(name, generator, {"params": g_params}, masked.astype(dtype),
                                           masks.astype(dtype), num_local_frames=nl)
            return pred.astype(jnp.float32), (extras.get("flows", ()) if with_flows else ())

        (pred, flows), g_vjp = jax.vjp(g_forward, state.g_params)
        # The full-resolution images of the losses and of D's input are kept lane-dense, (B, T, H, W * 3): a TPU
        # stores the minor axis in 128-wide lanes, where 3 channels would take 43x their size in HBM.
        frames_d, pred_d = lane_dense(frames), lane_dense(pred)
        masks_d = lane_dense(jnp.broadcast_to(masks, frames.shape))
        comp = frames_d * (1.0 - masks_d) + pred_d * masks_d

        def reconstruction(pred_d, flows):  # the generator's terms without D: hole / valid L1 (+ flow L1)
            hole, valid = losses.hole_valid_l1(pred_d, frames_d, masks_d)
            terms = {"hole_l1": hole, "valid_l1": valid}
            total = cl.hole_weight * hole + cl.valid_weight * valid
            if with_flows:
                terms["flow_l1"] = losses.flow_l1(flows, jax.lax.stop_gradient(flow_targets(frames, nl)))
                total = total + cl.flow_weight * terms["flow_l1"]
            return total, terms

        if not adversarial:  # no GAN term: D is neither run nor updated (the state keeps it as it is)
            (g_loss, terms), (d_pred, d_flows) = jax.value_and_grad(
                reconstruction, argnums=(0, 1), has_aux=True)(pred_d, flows)
            (g_grads,) = g_vjp((d_pred.reshape(pred.shape), d_flows))
            g_norm = optax.tree.norm(g_grads)
            new_state = guarded_update(state, all_finite(g_loss, g_norm), tx, {"g": g_grads})
            return new_state, {"g_loss": g_loss, **terms, "g_grad_norm": g_norm, "lr": lr_fn(state.step)}

        # --- discriminator step ------------------------------------------------------------------
        def d_loss_fn(d_params):
            real, spectral = d_apply(d_params, state.d_spectral, frames_d)
            fake, spectral = d_apply(d_params, spectral, jax.lax.stop_gradient(comp))
            return losses.discriminator_loss(real, fake, cl.gan_type), spectral

        (d_loss, spectral), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(state.d_params)
        # the updated D for the generator's adversarial term (the state's D takes the same step under the guard below)
        d_updates, _ = tx.update(d_grads, state.d_opt, state.d_params)
        d_params = gathered_once(optax.apply_updates(state.d_params, d_updates))  # whole under FSDP

        # --- generator step (adversarial term with the updated D) ---------------------------------
        def g_loss_fn(pred_d, flows):
            total, terms = reconstruction(pred_d, flows)
            fake, new_spectral = d_apply(d_params, spectral, frames_d * (1.0 - masks_d) + pred_d * masks_d)
            terms["g_adv"] = losses.generator_adversarial_loss(fake, cl.gan_type)
            return total + cl.adversarial_weight * terms["g_adv"], (terms, new_spectral)

        (g_loss, (terms, spectral)), (d_pred, d_flows) = jax.value_and_grad(
            g_loss_fn, argnums=(0, 1), has_aux=True)(pred_d, flows)
        (g_grads,) = g_vjp((d_pred.reshape(pred.shape), d_flows))
        g_norm, d_norm = optax.tree.norm(g_grads), optax.tree.norm(d_grads)
        new_state = guarded_update(state, all_finite(g_loss, d_loss, g_norm, d_norm), tx,
                                   {"g": g_grads, "d": d_grads}, d_spectral=spectral)
        metrics = {"g_loss": g_loss, "d_loss": d_loss, **terms, "g_grad_norm": g_norm, "d_grad_norm": d_norm,
                   "lr": lr_fn(state.step)}
        return new_state, metrics

    return train_step


# --- preview -----------------------------------------------------------------------------------------------
def make_preview(config, built: Models):
    """preview(g_params, batch) -> {"masked_output_target": grid}: rows of masked input | composited output |
    ground truth for the first samples."""
    name, generator, nl, guide = config.model.name, built.generator, num_local(config), built.guide

    @jax.jit
    def run(p, frames, masks):
        if guide is not None:
            return generator.apply({"params": p}, *guide(frames, masks, p))
        return models.generate(name, generator, {"params": p}, frames * (1 - masks), masks, num_local_frames=nl)[0]

    def preview(g_params, batch):
        frames = batch["frames"].astype(jnp.float32) / 127.5 - 1
        masks = batch["masks"].astype(jnp.float32)
        masked = frames * (1 - masks)
        out = run(g_params, frames, masks)
        comp = frames * (1 - masks) + out * masks
        return {"masked_output_target": image_grid(*jax.device_get((masked, comp, frames)))}

    return preview


TASK = Task(name="inpainting", config=inpainting_config, batch_spec=batch_spec, dataset=dataset, build=build,
            make_init=make_init, make_train_step=make_train_step, make_preview=make_preview, runner=Inpainter)
