"""VSR-Transformer x4 (caojiezhang/VSR-Transformer options/train, spec section 8): `--config vsr_transformer[:variant]`.

Variants:
  (none)  REDS: 5 frames, depth 5, batch 32 (4 x 8 GPUs), GT crops 256 (LR 64), Charbonnier (eps 1e-12, sum),
          Adam 2e-4 betas (0.9, 0.99), CosineAnnealingRestart 4 x 300k with restart weights [1, .5, .5, .5],
          eta_min 1e-7, 1.2M iterations. data.path: REDS train_sharp frame folders (<root>/<clip>/*.png, 1280x720;
          leave out REDS4 = 000, 011, 015, 020 with data.split_json). The LR frames are made on the fly
          (PIL bicubic x4 of the GT crop). Start from the official warm-up weights with --config.init_from.
  vimeo   Vimeo-90K: 7 frames, depth 7 (model vsr_transformer_vimeo), batch 16, 6 x 200k with [1, .5 x 5];
          data.path: a folder of septuplet folders (im1..im7.png, 448x256).
  tiny    a tiny model (3 frames, depth 1, few residual blocks, 16 channels) on synthetic clips (or any
          data.path), a few dozen steps: runs on a CPU in minutes. SPyNet is frozen for the first 20 steps and
          then trained at a quarter of the lr, to exercise that option (the official recipe uses 0 and 1).
  tiny_clip  the tiny model (8 reconstruction blocks) trained on ONE real clip in ~400 steps (under 10 minutes on
          a 2-core CPU) so that it beats bicubic upscaling on held-out frames of that clip (tools/vsr_tennis_proof.py):
          data.path: a frame folder; frames resized to 460x256 (a 432x240 clip at height 256, since the model needs
          64x64 LR crops, i.e. 256x256 GT crops), no rotations (flips and temporal reverse stay), Adam lr 2e-3 with
          one cosine period over the run, SPyNet (randomly initialised) frozen for the whole run, which skips its
          backward pass. To hold frames out: --config.data.split_json=split.json holding {"<folder name>": N}
          trains on the first N frames only. Changing num_steps, change optim.periods=(num_steps,) too.
"""
from ecformer_jax.tasks.super_resolution import sr_config


def get_config(arg=None):
    if arg not in (None, "", "vimeo", "tiny", "tiny_clip"):
        raise ValueError(f"unknown config variant {arg!r}; available: 'vimeo', 'tiny', 'tiny_clip' (or nothing for "
                         "REDS)")
    c = sr_config("vsr_transformer")
    if arg == "vimeo":
        c.model.name = "vsr_transformer_vimeo"
        c.data.num_frames = 7
        c.data.width, c.data.height = 448, 256
        c.batch_size = 16  # 2 per GPU x 8
        c.optim.periods = (200_000,) * 6
        c.optim.restart_weights = (1.0, 0.5, 0.5, 0.5, 0.5, 0.5)
    elif arg in ("tiny", "tiny_clip"):
        c.model.overrides.num_frames = 3
        c.model.overrides.depth = 1
        c.model.overrides.channels = 16
        c.model.overrides.num_extract_blocks = 1
        c.model.overrides.num_reconstruct_blocks = 2
        c.model.overrides.num_ffn_blocks = 1
        c.data.path = ""  # synthetic clips; or e.g. a frame folder (set data.width/height >= gt_size)
        c.data.num_frames = 3
        c.data.width, c.data.height = 288, 256  # gt_size stays 256: the model needs 64x64 LR crops
        c.data.synthetic_videos = 8
        c.data.synthetic_length = 12
        c.batch_size = 2
        c.num_steps = 60
        c.optim.lr = 5e-4
        c.optim.periods = (30, 30)
        c.optim.restart_weights = (1.0, 0.5)
        c.optim.spynet_frozen_steps = 20
        c.optim.spynet_lr_mult = 0.25
        c.log_every = 10
        c.image_every = 30
        c.checkpoint_every = 30
    if arg == "tiny_clip":
        c.model.overrides.num_reconstruct_blocks = 8  # cheap capacity: 64x64 LR features, 16 channels
        c.data.width, c.data.height = 460, 256
        c.data.rotate = False  # one upright scene: no vertical flips / transposes (horizontal flips stay)
        c.num_steps = 400
        c.optim.lr = 2e-3
        c.optim.periods = (400,)
        c.optim.restart_weights = (1.0,)
        c.optim.spynet_frozen_steps = 1_000_000_000  # >= num_steps: no SPyNet gradient at all
        c.optim.spynet_lr_mult = 1.0
        c.log_every = 25
        c.image_every = 100
        c.checkpoint_every = 100
    return c
