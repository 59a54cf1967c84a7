"""STTN on YouTube-VOS 2018 (researchmm/STTN configs/youtube-vos.json): `--config sttn[:tiny|:micro]`.

`micro` is the smallest STTN that still trains (tiny with 32 channels, one block, FuseFormer's discriminator and
2-frame clips of 32x64): it compiles in seconds and steps in under half a second, for the fault harness and the
multi-process and AOT tests."""
from ecformer_jax.tasks.inpainting import inpainting_config, variant


def get_config(arg=None):
    c = inpainting_config("sttn", seed=2020)
    c.data.layout = "zip"  # datasets/youtube-vos/JPEGImages/<video>.zip + train.json
    c.optim.milestones = (150_000, 300_000)  # 1e-4, then 1e-5 from 150k, 1e-6 from 300k
    c = variant(c, "tiny" if arg == "micro" else arg)
    if arg in ("tiny", "micro"):
        c.model.overrides.num_blocks = 2
        c.model.overrides.patch_sizes = ((12, 24), (4, 8), (2, 4), (1, 2))  # 48x96 frames: 12x24 features
    if arg == "micro":
        c.model.overrides.channels = 32
        c.model.overrides.num_blocks = 1
        c.model.discriminator = "fuseformer_discriminator"
        c.data.num_frames = 2
        c.data.height, c.data.width = 32, 64  # 8x16 features
        c.model.overrides.patch_sizes = ((8, 16), (4, 8), (2, 4), (1, 2))
    return c
