"""The training state: one plain pytree, created already sharded.

    abstract = jax.eval_shape(init)  ->  sharding rules  ->  jax.jit(init, out_shardings=...)
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from ecformer_jax import models
from ecformer_jax.training import sharding as shd


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
    return optax.chain(*parts)


def example_batch(config, batch: int = 1):
    t = config.data.num_frames if config.data.sampling != "local_ref" else config.data.num_local + config.data.num_ref
    shape = (batch, t, config.data.height, config.data.width)
    return {"frames": jnp.zeros(shape + (3,), jnp.uint8), "masks": jnp.zeros(shape + (1,), jnp.uint8)}


def num_local(config) -> int | None:
    return config.data.num_local if config.data.sampling == "local_ref" else None


def build_models(config):
    dtype = jnp.dtype(config.dtype)
    remat = {"remat": True} if config.model.get("remat", False) else {}  # blocks recomputed in the backward pass
    generator = models.build(config.model.name, dtype=dtype, **remat, **dict(config.model.overrides))
    disc = models.build(config.model.discriminator, dtype=dtype)
    return generator, disc


def make_init(config, generator, disc):
    """init(rng, init_variables=None) -> TrainState (pure; meant for jax.jit with out_shardings).
    init_variables: generator variables to start from (finetuning) instead of a fresh init."""
    tx = optimizer(config)
    batch = example_batch(config)
    frames = batch["frames"].astype(jnp.float32)
    t = frames.shape[1]

    def init(rng, init_variables=None):
        rng, g_key, d_key = jax.random.split(rng, 3)
        if init_variables is not None:
            g_vars = init_variables
        else:
            args = (frames, batch["masks"].astype(jnp.float32))
            g_vars = _init_generator(config, generator, g_key, args, t)
        d_vars = disc.init(d_key, frames)
        return TrainState(
            step=jnp.zeros((), jnp.int32), g_params=g_vars["params"], d_params=d_vars["params"],
            d_spectral=d_vars.get("spectral", {}), g_opt=tx.init(g_vars["params"]), d_opt=tx.init(d_vars["params"]),
            rng=rng, bad_step=jnp.full((), -1, jnp.int32),
        )

    return init


def _init_generator(config, generator, key, args, t):
    entry = models.get(config.model.name)
    if entry.generate is not None:  # models with their own call convention (e.g. num_local_frames)
        nl = num_local(config)
        return generator.init(key, args[0], num_local_frames=nl if nl is not None else t)
    return generator.init(key, *(args if entry.takes_masks else args[:1]))


def create_state(config, generator, disc, mesh, rng, init_variables=None):
    """Create the state directly with its shardings; returns (state, shardings)."""
    init = make_init(config, generator, disc)
    abstract = jax.eval_shape(init, rng, init_variables)
    shardings = shd.state_shardings(abstract, mesh, config.mesh.shard_params)
    state = jax.jit(init, out_shardings=shardings)(rng, init_variables)
    return state, shardings
