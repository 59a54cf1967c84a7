"""DSTT: the FuseFormer recipe with the DSTT generator (ruiliu-ai/DSTT): `--config dstt[:tiny]`."""
from ecformer_jax.tasks.inpainting import inpainting_config, variant


def get_config(arg=None):
    c = inpainting_config("dstt", seed=2021)
    c.data.layout = "frames"
    c.optim.milestones = (400_000,)
    c = variant(c, arg)
    if arg == "tiny":
        c.model.overrides.num_blocks = 2
        c.model.overrides.resize_embeddings = True
    return c
