"""x4 video super-resolution from files to files: the library side of `python -m ecformer_jax.upscale`.

    summary = upscale("net_g_latest.pth", "LR.mp4", "SR.mp4")        # .pth | converted folder | training workdir

The crop protocol itself is `inference.vsr.VSRUpscaler`. Sizes are (H, W).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from etils import epath

from ecformer_jax.data import video_io
from ecformer_jax.inference.common import (
    check_checkpoint,
    check_outputs,
    load_checkpoint,
    read_fps,
    side_by_side_path,
    write_result,
)

DEFAULT_MODEL = "vsr_transformer"  # the model of a .pth without --model (REDS, 5 frames)


def bicubic_x4(frames: np.ndarray, scale: int = 4) -> np.ndarray:
    from PIL import Image

    h, w = frames.shape[1:3]
    return np.stack([video_io.resize(f, (scale * w, scale * h), Image.BICUBIC) for f in frames])


def upscale(checkpoint, video, output, model_name=None, overwrite=False, dtype=None, batch_size=16,
            overlap=32, fps=None, side_by_side=True, progress=True) -> dict:
    """x4 `video` (a video file or frame folder) into `output` (a video file by its suffix, or a frame folder);
    returns a summary dict. Raises ValueError / FileExistsError / CheckpointError (a ValueError) with a
    message naming the problem.

    checkpoint: an official .pth (model_name defaults to 'vsr_transformer'; depth and block counts read off
    its keys), a converted folder or a training workdir (its latest checkpoint), see `convert.resolve`.
    """
    from ecformer_jax.inference.vsr import LQ_SIZE, SCALE, VSRUpscaler, crop_plan

    # cheap checks first: model name, checkpoint path, outputs; then the input; then the checkpoint
    video = Path(video)
    if model_name is None and epath.Path(checkpoint).is_file():
        model_name = DEFAULT_MODEL
    check_checkpoint(checkpoint, model_name, "super_resolution")
    check_outputs(video, output, overwrite, side_by_side)
    t0 = time.perf_counter()
    frames = video_io.read_frames(video)  # VideoError (a ValueError) for missing / empty / unreadable input
    n, h, w, _ = frames.shape
    crop_plan(h, w, LQ_SIZE, overlap)  # frames too small for the crops, a bad --overlap: before loading anything
    name, model, variables, _ = load_checkpoint(checkpoint, model_name, "super_resolution", dtype)
    plan = crop_plan(h, w, model.feat_size, overlap)
    upscaler = VSRUpscaler(model, variables, batch_size=batch_size, overlap=overlap)
    fps = fps or read_fps(video, 24.0)
    print(f"{name} (num_frames={model.num_frames}, depth={model.depth}, {np.dtype(model.dtype).name}): "
          f"{n} frames {w}x{h} -> {SCALE * w}x{SCALE * h}, {len(plan.origins)} crops per frame", file=sys.stderr)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, unit="frame", desc="upscale", file=sys.stderr)
    try:
        result = upscaler(frames, progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    t_run = time.perf_counter() - t0
    sbs = video_io.side_by_side(bicubic_x4(frames, SCALE), result) if side_by_side else None
    written = write_result(output, result, fps, side_by_side=sbs)
    summary = {"model": name, "frames": n, "input_size": (h, w), "output_size": (SCALE * h, SCALE * w),
               "output": str(written), "seconds": t_run}
    if side_by_side:
        summary["side_by_side"] = str(side_by_side_path(output))
    return summary
