"""E2FGVI (MCG-NKU/E2FGVI configs/train_e2fgvi.json): 5 local + 3 reference frames, flow loss.
`--config e2fgvi[:tiny]`. Set --config.loss.spynet_checkpoint to the pretrained SPyNet for real runs."""
from ecformer_jax.tasks.inpainting import inpainting_config, variant


def get_config(arg=None, model="e2fgvi"):
    c = inpainting_config(model, seed=2022)
    c.data.layout = "frames"
    c.data.sampling = "local_ref"
    c.data.num_local, c.data.num_ref = 5, 3
    c.loss.flow_weight = 1.0
    c.optim.milestones = (400_000,)
    c.checkpoint_every = 5_000
    c = variant(c, arg)
    if arg == "tiny":
        # one 5x9 attention window of tokens: 60x108 frames
        c.data.height, c.data.width = 60, 108
        c.data.num_local, c.data.num_ref = 3, 1
        c.model.overrides.num_blocks = 2
        if model == "e2fgvi":
            c.model.overrides.resize_embeddings = True
    return c
