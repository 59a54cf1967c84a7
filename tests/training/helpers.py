"""Small configs and batches for training tests (kept tiny: 2 cores)."""
from __future__ import annotations

import numpy as np

from ecformer_jax import configs


def config(model: str = "sttn", **overrides):
    c = configs.get_config(f"{model}:tiny")
    if model == "sttn":  # an even smaller STTN: fewer channels, one block, the small discriminator
        c.model.overrides.channels = 32
        c.model.overrides.num_blocks = 1
        c.model.discriminator = "fuseformer_discriminator"
    else:
        c.model.overrides.num_blocks = 1
    c.async_checkpoints = False
    for key, value in overrides.items():
        target = c
        *path, leaf = key.split(".")
        for p in path:
            target = target[p]
        target[leaf] = value
    return c


def fixed_batch(c, batch: int | None = None, seed: int = 0):
    from ecformer_jax.data.synthetic import synthetic_clip, synthetic_masks

    b = batch or c.batch_size
    t = c.data.num_frames if c.data.sampling != "local_ref" else c.data.num_local + c.data.num_ref
    frames = np.stack([synthetic_clip(t, c.data.height, c.data.width, seed=seed + i) for i in range(b)])
    masks = np.stack([synthetic_masks(t, c.data.height, c.data.width, seed=seed + i) for i in range(b)])
    return {"frames": frames, "masks": masks[..., None].astype(np.uint8)}
