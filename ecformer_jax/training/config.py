"""The one config schema every inpainting model trains with (ml_collections).

`configs/<model>.py` files call `inpainting_config(...)` with the paper recipe and add a `tiny`
variant. Every field has a concrete type so command-line overrides (--config.optim.lr=2e-4) type-check.
"""
from __future__ import annotations

import ml_collections


def data_config(**overrides) -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.path = ""  # '' -> the built-in synthetic clips; else a data set root, a video folder or a video file
    d.layout = "auto"  # auto | frames (JPEGImages/<video>/*.jpg) | zip (JPEGImages/<video>.zip + json) | videos (*.mp4)
    d.split_json = ""  # e.g. train.json ({video: frame count}); '' -> every video found
    d.width = 432
    d.height = 240
    d.num_frames = 5  # frames per sample
    d.sampling = "random_or_consecutive"  # | local_ref (E2FGVI: num_local consecutive + num_ref references)
    d.num_local = 5
    d.num_ref = 3
    d.flip = True  # random horizontal flip of the frames (p 0.5; masks not flipped, as the official code)
    d.masks = "random_shape"  # random_shape (official moving/stationary blobs) | folder (fixed masks from mask_dir)
    d.mask_dir = ""
    d.num_workers = 0  # grain worker processes (0: decode in the main process)
    d.num_threads = 2  # grain read threads
    d.skip_bad = False  # False: a bad video raises naming it; True: log it and take another video
    d.synthetic_videos = 32
    d.synthetic_length = 30
    d.update(overrides)
    return d


def inpainting_config(model: str, discriminator: str, **overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict()
    c.model.name = model
    c.model.overrides = ml_collections.ConfigDict()  # module fields, e.g. num_blocks
    c.model.discriminator = discriminator
    c.model.disc_joint_clip = False  # True: D sees the whole per-process batch as ONE clip (official trainers)
    c.model.remat = False  # recompute each transformer block in the backward pass: less memory, ~1 more forward

    c.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)

    c.loss = ml_collections.ConfigDict()
    c.loss.hole_weight = 1.0
    c.loss.valid_weight = 1.0
    c.loss.adversarial_weight = 0.01
    c.loss.gan_type = "hinge"  # hinge | nsgan | lsgan
    c.loss.flow_weight = 0.0  # E2FGVI: 1.0 (L1 to a frozen SPyNet's flows)
    c.loss.spynet_checkpoint = ""  # converted dir or .pth of the pretrained SPyNet for the flow loss

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-4
    c.optim.b1 = 0.0
    c.optim.b2 = 0.99
    c.optim.weight_decay = 0.0
    c.optim.milestones = (400_000,)  # lr *= gamma at each milestone (both G and D)
    c.optim.gamma = 0.1
    c.optim.grad_clip = 0.0  # global-norm clipping, 0 = off

    c.data = data_config()
    c.batch_size = 8  # global, split over processes and devices
    c.num_steps = 500_000
    c.seed = 0
    c.init_from = ""  # converted checkpoint dir or official .pth of the generator, for finetuning

    c.log_every = 100
    c.image_every = 1000
    c.checkpoint_every = 10_000
    c.keep_checkpoints = 3
    c.async_checkpoints = True

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # devices on the data axis (-1: all)
    c.mesh.shard_params = False  # FSDP-style: shard parameters and optimizer state over the data axis

    c.distributed = False  # call jax.distributed.initialize() (also when JAX_COORDINATOR_ADDRESS is set)
    c.update(overrides)
    return c


def variant(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Apply the 'tiny' variant shared by all inpainting configs: small frames, few steps, synthetic data,
    on a CPU in a few minutes."""
    if not arg:
        return config
    if arg != "tiny":
        raise ValueError(f"unknown config variant {arg!r}; available: 'tiny' (or nothing for the paper recipe)")
    config.data.path = ""
    config.data.width = 96
    config.data.height = 48
    config.data.num_workers = 0
    config.batch_size = 2
    config.num_steps = 60
    config.log_every = 10
    config.image_every = 30
    config.checkpoint_every = 30
    config.optim.lr = 3e-4
    config.optim.milestones = (1_000_000,)
    return config


def sr_config(model: str, **overrides) -> ml_collections.ConfigDict:
    """The schema of the super-resolution task (models of registry kind 'super_resolution', e.g.
    vsr_transformer): no discriminator, a pixel loss (Charbonnier or L1), Adam with the cosine-annealing-
    with-restarts schedule (BasicSR CosineAnnealingRestartLR) and a separate parameter group for SPyNet
    (frozen for optim.spynet_frozen_steps steps, then lr * optim.spynet_lr_mult). Defaults: the official
    VSR-Transformer REDS recipe (spec section 8). The loop picks the task from the model's registry kind."""
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict()
    c.model.name = model
    c.model.overrides = ml_collections.ConfigDict()  # module fields, e.g. depth, num_reconstruct_blocks
    c.model.remat = False

    c.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)

    c.loss = ml_collections.ConfigDict()
    c.loss.kind = "charbonnier"  # charbonnier: sqrt((x - y)^2 + eps) | l1
    c.loss.eps = 1e-12
    c.loss.reduction = "sum"  # sum (official: over all pixels and frames of the batch) | mean
    c.loss.weight = 1.0

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 2e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.99
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0  # PyTorch Adam's L2 term (added to the gradient)
    c.optim.grad_clip = 0.0  # global-norm clipping, 0 = off
    c.optim.periods = (300_000, 300_000, 300_000, 300_000)  # CosineAnnealingRestartLR
    c.optim.restart_weights = (1.0, 0.5, 0.5, 0.5)
    c.optim.eta_min = 1e-7
    c.optim.spynet_frozen_steps = 0  # official: the fixed-iterations option is commented out (0)
    c.optim.spynet_lr_mult = 1.0  # official: one lr for every parameter

    c.data = data_config(num_frames=5, width=1280, height=720, layout="frames", flip=True)
    c.data.interval = 1  # frame interval of a sample (interval_list [1])
    c.data.gt_size = 256  # HR crop side (the LR crop is gt_size // scale = 64, the model's input size)
    c.data.scale = 4
    c.data.random_reverse = True  # temporal reverse, p 0.5
    c.data.rotate = True  # vertical flip and transpose (BasicSR use_rot), each p 0.5

    c.batch_size = 32  # global (official: 4 per GPU x 8 GPUs)
    c.num_steps = 1_200_000
    c.seed = 10
    c.init_from = ""  # converted checkpoint dir or official .pth (e.g. the *_warmup.pth), for finetuning

    c.log_every = 100
    c.image_every = 5_000
    c.checkpoint_every = 5_000
    c.keep_checkpoints = 3
    c.async_checkpoints = True

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.shard_params = False

    c.distributed = False
    c.update(overrides)
    return c
