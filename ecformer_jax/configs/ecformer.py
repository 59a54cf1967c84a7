"""ECFormer, our model (docs/ecformer.md), trained with the FuseFormer recipe: `--config ecformer[:tiny]`.

Variants: `tiny`, `binarized` (binarized encoder/decoder/attention projections), `tiny_binarized`."""
from ecformer_jax.tasks.inpainting import inpainting_config, variant


def get_config(arg=None):
    parts = set((arg or "").split("_")) - {""}
    c = inpainting_config("ecformer", seed=2026)
    c.data.layout = "frames"
    c.optim.milestones = (400_000,)
    c.model.overrides.topk = 512
    if "binarized" in parts:
        c.model.overrides.binarize = True
    c = variant(c, "tiny" if "tiny" in parts else None)
    if "tiny" in parts:
        c.model.overrides.num_blocks = 2
        c.model.overrides.topk = 64
    return c
