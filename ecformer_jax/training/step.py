"""One pure, jitted training iteration: the discriminator update, then the generator update.

The generator runs once (jax.vjp); its output feeds the D step (stop-gradient) and the G loss.
Spectral-norm vectors do one power iteration per D forward as in the official trainers
(D(real), D(fake) for D; D(comp) for G). Non-finite losses or gradients leave the state unchanged
and record the step in `bad_step`; the loop stops on it before anything is written.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ecformer_jax import models
from ecformer_jax.training import losses
from ecformer_jax.training.state import TrainState, learning_rate, num_local, optimizer


def make_train_step(config, generator, disc, flow_targets=None):
    """train_step(state, batch) -> (state, metrics). batch: uint8 frames (B,T,H,W,3), masks (B,T,H,W,1).

    flow_targets: for models with a flow loss, fn(frames in [-1, 1], num_local) -> (fwd, bwd) flows."""
    tx = optimizer(config)
    lr_fn = learning_rate(config)
    name = config.model.name
    nl = num_local(config)
    cl = config.loss
    joint = config.model.disc_joint_clip
    dtype = jnp.dtype(config.dtype)

    def d_apply(params, spectral, clip):
        if joint:  # the official trainers: all B*T frames of the (per-device) batch form one clip
            clip = clip.reshape(1, -1, *clip.shape[2:])
        logits, upd = disc.apply({"params": params, "spectral": spectral}, clip.astype(dtype), train=True,
                                 mutable=["spectral"])
        return logits.astype(jnp.float32), upd["spectral"]

    def train_step(state: TrainState, batch):
        frames = batch["frames"].astype(jnp.float32) / 127.5 - 1.0
        masks = batch["masks"].astype(jnp.float32)
        masked = frames * (1.0 - masks)

        def g_forward(g_params):
            pred, extras = models.generate(name, generator, {"params": g_params}, masked.astype(dtype),
                                           masks.astype(dtype), num_local_frames=nl)
            return pred.astype(jnp.float32), extras.get("flows", ())

        (pred, flows), g_vjp = jax.vjp(g_forward, state.g_params)
        comp = frames * (1.0 - masks) + pred * masks

        # --- discriminator step ------------------------------------------------------------------
        def d_loss_fn(d_params):
            real, spectral = d_apply(d_params, state.d_spectral, frames)
            fake, spectral = d_apply(d_params, spectral, jax.lax.stop_gradient(comp))
            return losses.discriminator_loss(real, fake, cl.gan_type), spectral

        (d_loss, spectral), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(state.d_params)
        d_updates, d_opt = tx.update(d_grads, state.d_opt, state.d_params)
        d_params = optax.apply_updates(state.d_params, d_updates)

        # --- generator step (adversarial term with the updated D) ---------------------------------
        def g_loss_fn(pred, flows):
            hole, valid = losses.hole_valid_l1(pred, frames, masks)
            c = frames * (1.0 - masks) + pred * masks
            fake, new_spectral = d_apply(d_params, spectral, c)
            adv = losses.generator_adversarial_loss(fake, cl.gan_type)
            terms = {"hole_l1": hole, "valid_l1": valid, "g_adv": adv}
            total = cl.hole_weight * hole + cl.valid_weight * valid + cl.adversarial_weight * adv
            if flow_targets is not None and cl.flow_weight > 0:
                targets = jax.lax.stop_gradient(flow_targets(frames, nl))
                terms["flow_l1"] = losses.flow_l1(flows, targets)
                total = total + cl.flow_weight * terms["flow_l1"]
            return total, (terms, new_spectral)

        (g_loss, (terms, spectral)), (d_pred, d_flows) = jax.value_and_grad(
            g_loss_fn, argnums=(0, 1), has_aux=True)(pred, flows)
        (g_grads,) = g_vjp((d_pred, d_flows))
        g_updates, g_opt = tx.update(g_grads, state.g_opt, state.g_params)
        g_params = optax.apply_updates(state.g_params, g_updates)

        g_norm, d_norm = optax.tree.norm(g_grads), optax.tree.norm(d_grads)
        finite = jnp.isfinite(g_loss) & jnp.isfinite(d_loss) & jnp.isfinite(g_norm) & jnp.isfinite(d_norm)
        ok = finite & (state.bad_step < 0)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        new_state = state.replace(
            step=state.step + 1,
            g_params=keep(g_params, state.g_params), d_params=keep(d_params, state.d_params),
            d_spectral=keep(spectral, state.d_spectral), g_opt=keep(g_opt, state.g_opt),
            d_opt=keep(d_opt, state.d_opt),
            bad_step=jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step),
        )
        metrics = {"g_loss": g_loss, "d_loss": d_loss, **terms, "g_grad_norm": g_norm, "d_grad_norm": d_norm,
                   "lr": lr_fn(state.step)}
        return new_state, metrics

    return train_step


def jit_train_step(train_step, state_shardings, batch_sharding, replicated):
    return jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))
