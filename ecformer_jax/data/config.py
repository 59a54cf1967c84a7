"""The `data` part of every training config (ml_collections): where the clips come from and how they are sampled.

Every field has a concrete type so command-line overrides (--config.data.width=216) type-check.
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
