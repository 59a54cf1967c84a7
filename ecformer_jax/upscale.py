"""x4 video super-resolution with VSR-Transformer, following the official test protocol.

    python -m ecformer_jax.upscale --checkpoint net_g_latest.pth --video LR.mp4 --output SR.mp4
    python -m ecformer_jax.upscale --checkpoint vimeo.pth --model vsr_transformer_vimeo \
        --video lr_frames/ --output sr_frames/ --dtype bfloat16

--checkpoint: an official .pth (`{'params': state_dict}`, 'module.' prefixes allowed), a folder written
by tools/convert_torch.py or `python -m ecformer_jax.training.sr export`, or a training workdir of
`python -m ecformer_jax.train` (its latest checkpoint; the model and its options come from the workdir's
config.json). --video: a video file or a folder of frames; --output: a video file (by its
suffix, e.g. .mp4) or a folder that receives 00000.png, 00001.png, ...

Every frame is the centre frame of a num_frames window (reflection-circle padding at the clip ends),
computed on 64x64 LR crops at stride 32 and pasted back as the official `forward_crop` does; the
result is clamped and rounded to uint8 (see ecformer_jax.inference.vsr). Frames of any size >= 64x64
work. The input frames stay on the host; batches of crops go to the device. At the end a side-by-side
video (bicubic x4 input | result) is written next to the output: SR_side_by_side.mp4.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from ecformer_jax.data import video_io

# shared with the inpaint command (re-exported here for callers of the earlier names)
from ecformer_jax.inference.common import (  # noqa: F401
    SIDE_BY_SIDE_SUFFIX, check_outputs, read_fps, side_by_side_path, write_result,
)


def bicubic_x4(frames: np.ndarray, scale: int = 4) -> np.ndarray:
    from PIL import Image

    h, w = frames.shape[1:3]
    return np.stack([video_io.resize(f, (scale * w, scale * h), Image.BICUBIC) for f in frames])


def is_training_workdir(path) -> bool:
    """A folder written by `python -m ecformer_jax.train` (config.json and checkpoints/), not a converted one."""
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file() and (p / "checkpoints").is_dir()


def _load(checkpoint, model_name, dtype):
    """(name, model, variables) from a .pth, a converted folder, or a training workdir (its latest checkpoint,
    read in place)."""
    if not is_training_workdir(checkpoint):
        from ecformer_jax.inference.vsr import load_model

        return load_model(checkpoint, model_name, dtype)
    from ecformer_jax.inference.common import build_loaded
    from ecformer_jax.training.sr import read_workdir

    name, overrides, variables, source = read_workdir(os.fspath(checkpoint))
    return build_loaded(source, name, overrides, variables, model_name, "super_resolution", dtype, what="trained")


def upscale(checkpoint, video, output, model_name=None, overwrite=False, dtype=None, batch_size=16,
            overlap=32, fps=None, side_by_side=True, progress=True) -> dict:
    """The command's work as a function; returns a summary dict. Raises ValueError / FileExistsError /
    CheckpointError (a ValueError) with a message naming the problem."""
    from ecformer_jax.inference.vsr import SCALE, VSRUpscaler, crop_plan, load_model

    video, output = Path(video), Path(output)
    check_outputs(video, output, overwrite, side_by_side)
    t0 = time.perf_counter()
    frames = video_io.read_frames(video)  # VideoError (a ValueError) for missing / empty / unreadable input
    n, h, w, _ = frames.shape
    name, model, variables = _load(checkpoint, model_name, dtype)
    crop_plan(h, w, model.feat_size, overlap)  # too small frames: fail before compiling anything
    upscaler = VSRUpscaler(model, variables, batch_size=batch_size, overlap=overlap)
    fps = fps or read_fps(video, 24.0)
    print(f"{name} (num_frames={model.num_frames}, depth={model.depth}, {np.dtype(model.dtype).name}): "
          f"{n} frames {w}x{h} -> {SCALE * w}x{SCALE * h}, {len(crop_plan(h, w, model.feat_size, overlap).origins)} "
          f"crops per frame", file=sys.stderr)
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
    written = write_result(output, result, fps)
    summary = {"model": name, "frames": n, "input_size": (w, h), "output_size": (SCALE * w, SCALE * h),
               "output": str(written), "seconds": t_run}
    if side_by_side:
        path = side_by_side_path(output)
        video_io.write_video(path, video_io.side_by_side(bicubic_x4(frames, SCALE), result), fps)
        summary["side_by_side"] = str(path)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ecformer_jax.upscale", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True,
                   help="official .pth, a converted checkpoint folder or a training workdir (its latest checkpoint)")
    p.add_argument("--video", required=True, help="LR video file or folder of frames")
    p.add_argument("--output", required=True, help="output video file (.mp4, ...) or folder of PNG frames")
    p.add_argument("--model", default=None,
                   help="vsr_transformer (REDS, 5 frames; default for .pth) or vsr_transformer_vimeo (7 frames); "
                        "a converted folder names its own model")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="compute dtype (default float32)")
    p.add_argument("--batch-size", type=int, default=16, help="64x64 crops per device call (default 16)")
    p.add_argument("--overlap", type=int, default=32, help="crop overlap in LR pixels (official test: 32)")
    p.add_argument("--fps", type=float, default=None, help="output frame rate (default: the input's, else 24)")
    p.add_argument("--no-side-by-side", action="store_true", help="skip the bicubic | result comparison video")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    from ecformer_jax.convert import CheckpointError

    try:
        summary = upscale(args.checkpoint, args.video, args.output, model_name=args.model, overwrite=args.overwrite,
                          dtype=args.dtype, batch_size=args.batch_size, overlap=args.overlap, fps=args.fps,
                          side_by_side=not args.no_side_by_side, progress=not args.quiet)
    except (CheckpointError, ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    (w, h), (ow, oh) = summary["input_size"], summary["output_size"]
    print(f"{summary['frames']} frames {w}x{h} -> {ow}x{oh} in {summary['seconds']:.1f}s: {summary['output']}"
          + (f" (side by side: {summary['side_by_side']})" if "side_by_side" in summary else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
