"""Video inpainting from files to files: the library side of `python -m ecformer_jax.inpaint` (and of
`evaluate --checkpoint`, which inpaints every video of a data set with it).

    summary = inpaint("E2FGVI-HQ-CVPR22.pth", "tennis.mp4", "tennis_mask/", "result.mp4", model_name="e2fgvi_hq")

The protocol itself (windows, references, blending, compositing) is `inference.protocol.Inpainter`.
Sizes are (H, W).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from ecformer_jax.data import video_io
from ecformer_jax.inference import protocol
from ecformer_jax.inference.common import (
    check_checkpoint,
    check_outputs,
    format_size,
    is_video_path,
    load_checkpoint,
    peak_host_memory_mb,
    read_fps,
    side_by_side_path,
    write_result,
)


def read_masks(path, num_frames: int, size: tuple[int, int], resize: bool = False) -> np.ndarray:
    """bool (N, H, W) masks for a video of num_frames frames of size (H, W); VideoError on a count or
    size mismatch. Video files are binarised at > 127 (lossy compression), images at > 0 (official).
    resize: resize the masks to `size` first (NEAREST), as the papers' evaluation does."""
    path = Path(path)
    wh = (size[1], size[0]) if resize else None  # video_io takes (width, height)
    if path.exists() and path.is_file() and is_video_path(path):
        gray = video_io.read_frames(path, mode="L")
        gray = gray[..., 0] if gray.ndim == 4 else gray
        if wh is not None:
            from PIL import Image

            gray = np.stack([video_io.resize(g, wh, Image.NEAREST) for g in gray])
        masks = gray > 127
        if len(masks) != num_frames:
            raise video_io.VideoError(f"{path} has {len(masks)} masks but the video has {num_frames} frames; "
                                      "give one mask per frame or a single mask image for all frames")
    else:
        masks = video_io.read_masks(path, num_frames, size=wh)
    if masks.shape[1:3] != tuple(size):
        raise video_io.VideoError(
            f"the masks in {path} are {masks.shape[2]}x{masks.shape[1]} (WxH) but the video frames are "
            f"{format_size(size)}; give masks of the frames' size")
    return masks


def inpaint(checkpoint, video, mask, output, model_name=None, overwrite=False, dtype=None, neighbor_length=None,
            ref_stride=None, subvideo_length=protocol.SUBVIDEO_LENGTH, resize=None, resize_ratio=1.0,
            mask_dilation=None, fps=None, side_by_side=True, progress=True, track_memory=False, input_size=None,
            verbose=True, raft_iter=None, frame_range=None) -> dict:
    """Inpaint the video file / frame folder `video` with the holes of `mask` into `output` (a video file by its
    suffix, or a frame folder); returns a summary dict. Raises ValueError (VideoError, CheckpointError) /
    FileExistsError with a message naming the problem.

    checkpoint: a .pth, converted folder or training workdir (`convert.resolve`), or an already resolved
    `convert.Resolved` (to inpaint many videos with one model). neighbor_length: windows every
    neighbor_length // 2 frames over [f - L/2, f + L/2] (default the model's: 10); resize: (H, W) processing
    size or None for the model's rule; input_size: (H, W) to which the video (bicubic) and masks (nearest) are
    resized when read, as the papers' evaluation does (the output has that size). verbose: print the plan.
    frame_range: (start, end) to inpaint and write only frames start..end-1 (end None: to the last), running
    only the windows they need, with the same values as a whole-video run.

    ProPainter (--model propainter, or a --checkpoint folder holding ProPainter.pth, or three comma-separated
    checkpoints) runs its own pipeline, `inference.propainter.inpaint` (raft_iter: its RAFT iterations).
    """
    from ecformer_jax.inference import propainter

    if propainter.wants_pipeline(checkpoint, model_name):
        if input_size is not None:
            raise ValueError("input_size is not supported by the ProPainter pipeline; use resize")
        if frame_range is not None:
            raise ValueError("--frames is not supported by the ProPainter pipeline (its flows and propagation "
                             "run over whole subvideos); inpaint the whole video")
        return propainter.inpaint(checkpoint, video, mask, output, overwrite=overwrite, dtype=dtype,
                                  neighbor_length=neighbor_length, ref_stride=ref_stride,
                                  subvideo_length=subvideo_length, resize=resize, resize_ratio=resize_ratio,
                                  mask_dilation=mask_dilation, raft_iter=raft_iter, fps=fps,
                                  side_by_side=side_by_side, progress=progress, verbose=verbose)
    if raft_iter is not None:
        raise ValueError("--raft-iter applies to ProPainter (--model propainter) only")
    # cheap checks first: options, model name, checkpoint path, outputs; then the input; then the checkpoint
    video, mask = Path(video), Path(mask)
    if neighbor_length is not None and neighbor_length < 2:
        raise ValueError(f"--neighbor-length must be >= 2 (the window is [f - L/2, f + L/2]); got {neighbor_length}")
    check_checkpoint(checkpoint, model_name, "inpainting")
    check_outputs({"video": video, "mask": mask}, output, overwrite, side_by_side)
    t0 = time.perf_counter()
    # VideoError for missing / empty / unreadable input
    frames = video_io.read_frames(video, size=None if input_size is None else (input_size[1], input_size[0]))
    n, h, w, _ = frames.shape
    masks = read_masks(mask, n, (h, w), resize=input_size is not None)
    lo, hi = protocol.check_frame_range(frame_range, n)
    name, model, variables, _ = load_checkpoint(checkpoint, model_name, "inpainting", dtype)
    inpainter = protocol.Inpainter(
        name, model, variables, neighbor_stride=None if neighbor_length is None else neighbor_length // 2,
        ref_stride=ref_stride, subvideo_length=subvideo_length, mask_dilation=mask_dilation, resize=resize,
        resize_ratio=resize_ratio, track_memory=track_memory)
    windows, geo = inpainter.plan(n, (h, w), (lo, hi))
    fps = fps or read_fps(video, 24.0)
    if verbose:
        plural = "s" if len(windows) != 1 else ""
        part = f" (frames {lo}..{hi - 1} of them)" if (lo, hi) != (0, n) else ""
        print(f"{name} ({inpainter.protocol.family} protocol, {np.dtype(model.dtype).name}): {n} frames {w}x{h}"
              f"{part}, "
              f"processed at {format_size(geo.size)}" + (f" padded to {format_size(geo.padded)}" if geo.pad else "")
              + f"; {len(windows)} window{plural} of up to {max(len(x.frames) for x in windows)} frames "
              f"(neighbour stride {inpainter.neighbor_stride}, reference stride {inpainter.ref_stride}, "
              f"subvideo {inpainter.subvideo_length or 'whole video'}, mask dilation {inpainter.mask_dilation})",
              file=sys.stderr)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=hi - lo, unit="frame", desc="inpaint", file=sys.stderr)
    try:
        result = inpainter(frames, masks, progress=bar.update if bar is not None else None,
                           frame_range=(lo, hi))
    finally:
        if bar is not None:
            bar.close()
    sbs = (video_io.side_by_side(video_io.overlay_mask(frames[lo:hi], result.masks), result.frames)
           if side_by_side else None)
    written = write_result(output, result.frames, fps, side_by_side=sbs)
    summary = {"model": name, "frames": hi - lo, "video_frames": n, "frame_range": (lo, hi), "size": (h, w),
               "processing_size": geo.size, "padded_size": geo.padded,
               "windows": len(windows), "neighbor_stride": inpainter.neighbor_stride,
               "ref_stride": inpainter.ref_stride, "subvideo_length": inpainter.subvideo_length,
               "mask_dilation": inpainter.mask_dilation, "output": str(written), "seconds": result.stats["seconds"],
               "frames_per_second": result.stats["frames_per_second"],
               "compiled_shapes": result.stats["compiled_shapes"], "total_seconds": time.perf_counter() - t0,
               "peak_host_memory_mb": peak_host_memory_mb(), "stats": result.stats}
    if side_by_side:
        summary["side_by_side"] = str(side_by_side_path(output))
    return summary
