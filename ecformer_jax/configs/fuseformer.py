"""FuseFormer on YouTube-VOS 2019 (ruiliu-ai/FuseFormer configs/youtube-vos.json): `--config fuseformer[:tiny]`."""
from ecformer_jax.tasks.inpainting import inpainting_config, variant


def get_config(arg=None, model="fuseformer"):
    c = inpainting_config(model, seed=2021)
    c.data.layout = "frames"  # data/YouTubeVOS/train_all_frames/JPEGImages/<video>/*.jpg
    c.optim.milestones = (400_000,)
    c = variant(c, arg)
    if arg == "tiny":
        c.model.overrides.num_blocks = 2
        c.model.overrides.resize_embeddings = True
    return c
