"""E2FGVI-HQ (MCG-NKU/E2FGVI configs/train_e2fgvi_hq.json): the E2FGVI recipe with the HQ generator.
`--config e2fgvi_hq[:tiny]`."""
from ecformer_jax.configs import e2fgvi


def get_config(arg=None):
    return e2fgvi.get_config(arg, model="e2fgvi_hq")
