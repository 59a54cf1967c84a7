"""The part of the config schema every task shares (ml_collections): model name, dtype, batch, steps, seed,
init_from, log / image / checkpoint cadence, mesh and distribution.

Each task adds its own fields (`tasks.inpainting.inpainting_config`, `tasks.super_resolution.sr_config`):
model options, `loss`, `optim`, `data`. Every field has a concrete type so command-line overrides
(--config.optim.lr=2e-4) type-check.
"""
from __future__ import annotations

import ml_collections


def base_config(model: str, *, batch_size: int, num_steps: int, seed: int, image_every: int,
                checkpoint_every: int, log_every: int = 100) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict()
    c.model.name = model
    c.model.overrides = ml_collections.ConfigDict()  # module fields, e.g. num_blocks
    c.model.remat = False  # recompute each transformer block in the backward pass: less memory, ~1 more forward

    c.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)

    c.batch_size = batch_size  # global, split over processes and devices
    c.num_steps = num_steps
    c.seed = seed
    c.init_from = ""  # generator weights to start from: official .pth, converted folder or training workdir

    c.log_every = log_every
    c.image_every = image_every
    c.checkpoint_every = checkpoint_every
    c.keep_checkpoints = 3
    c.async_checkpoints = True

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # devices on the data axis (-1: all)
    c.mesh.shard_params = False  # FSDP-style: shard parameters and optimizer state over the data axis

    c.distributed = False  # call jax.distributed.initialize() (also when JAX_COORDINATOR_ADDRESS is set)
    return c
