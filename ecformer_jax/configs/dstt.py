"""DSTT: the FuseFormer recipe with the DSTT generator (ruiliu-ai/DSTT): `--config dstt[:tiny]`."""
from ecformer_jax.configs import fuseformer


def get_config(arg=None):
    return fuseformer.get_config(arg, model="dstt")
