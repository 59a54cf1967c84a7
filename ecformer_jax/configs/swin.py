"""The 'swin' token-mixer generator with the FuseFormer recipe: `--config swin[:tiny]`."""
from ecformer_jax.configs import _mixers


def get_config(arg=None):
    return _mixers.recipe("swin", arg)
