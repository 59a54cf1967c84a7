"""Shared recipe of the token-mixer generators: the FuseFormer recipe with another token mixer.
Used by the poolformer, swin and focal presets (not a preset on its own)."""
from ecformer_jax.tasks.inpainting import inpainting_config, variant


def recipe(model: str, arg=None):
    c = inpainting_config(model, seed=2021)
    c.data.layout = "frames"
    c.optim.milestones = (400_000,)
    c = variant(c, arg)
    if arg == "tiny":
        c.model.overrides.num_blocks = 2
    return c
