"""ProPainter's generator (sczhou/ProPainter configs/train_propainter.json): 10 local + 6 reference frames at
432x240, batch 8, hole / valid L1 (1, 1), hinge GAN 0.01 with the T-PatchGAN (nf 32, FuseFormer's), no
perceptual loss, Adam (0, 0.99) lr 1e-4 x 0.1 at 400k, 700k iterations; image propagation by nearest
interpolation. The inputs come from a frozen RAFT and a frozen flow completion network: set
--config.model.raft_checkpoint (raft-things.pth) and --config.model.flow_completion_checkpoint
(recurrent_flow_completion.pth) for real runs. `--config propainter[:tiny]`.

Unlike the official trainer (G update with the old D, then the D update) the inpainting task updates D first.
"""
from ecformer_jax.tasks.inpainting import inpainting_config, variant


def get_config(arg=None):
    c = inpainting_config("propainter", seed=2023)
    c.model.raft_checkpoint = ""  # frozen RAFT: the flows of the clean local frames
    c.model.raft_iters = 20
    c.model.flow_completion_checkpoint = ""  # frozen recurrent flow completion network
    c.model.interp_mode = "nearest"  # image propagation's interpolation (official: nearest)
    c.data.sampling = "local_ref"
    c.data.num_local, c.data.num_ref = 10, 6
    c.optim.milestones = (400_000,)
    c.optim.gamma = 0.1
    c.num_steps = 700_000
    c = variant(c, arg)
    if arg == "tiny":
        # RAFT needs >= 64 px; one 5x9 window of tokens at 1/4 with 7x7/3 soft split: 64x64 frames
        c.data.height, c.data.width = 64, 64
        c.data.num_local, c.data.num_ref = 2, 1
        c.model.raft_iters = 2
        c.model.overrides.num_blocks = 2
    return c
