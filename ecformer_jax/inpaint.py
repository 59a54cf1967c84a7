"""Video inpainting with any registered generator, following each model's official test protocol.

    python -m ecformer_jax.inpaint --model e2fgvi_hq --checkpoint E2FGVI-HQ-CVPR22.pth \
        --video tennis.mp4 --mask tennis_mask/ --output result.mp4
    python -m ecformer_jax.inpaint --checkpoint converted_sttn/ --video frames/ --mask mask.png \
        --output result_frames/ --dtype bfloat16

--checkpoint: an official .pth (converted on the fly; --model names the model) or a folder written by
tools/convert_torch.py (it names its own model). --video: a video file or a folder of frames. --mask: a
folder of mask images (one per frame, sorted by name), one image for every frame, or a video; pixels
> 0 are holes (> 127 for a video, whose compression blurs the values). --output: a video file (by its
suffix, e.g. .mp4) or a folder that receives 00000.png, 00001.png, ...

Protocol (ecformer_jax.inference.protocol): masks dilated (3x3 cross, --mask-dilation 4 times);
windows every --neighbor-length/2 frames of the neighbours [f - L/2, f + L/2] plus a reference frame
every --ref-stride frames taken from the --subvideo-length frames around the window; predictions
truncated to uint8, composited with the known pixels, overlapping windows blended 0.5/0.5. Fixed-size
models (STTN, FuseFormer, DSTT, E2FGVI) run at 432x240 and are resized back (choose another size with
--resize WxH); E2FGVI-HQ and size-free models run at the video's size (scaled by --resize-ratio),
mirror-padded to the multiple they need and cropped back. The video stays in host memory; one window
at a time goes to the device, so device memory does not grow with the video's length.

At the end a side-by-side video (input with the mask in green | result) is written next to the output
(OUT_side_by_side.mp4) and the frames/s achieved are printed. Existing outputs are never replaced
without --overwrite. Errors (bad input, mismatched masks or checkpoint) exit with status 2.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

from ecformer_jax.data import video_io
from ecformer_jax.inference import protocol
from ecformer_jax.inference.common import (
    check_outputs, is_video_path, peak_host_memory_mb, read_fps, side_by_side_path, write_result,
)


def read_masks(path, num_frames: int, size: tuple[int, int]) -> np.ndarray:
    """bool (N, H, W) masks for a video of num_frames frames of size (H, W); VideoError on a count or
    size mismatch. Video files are binarised at > 127 (lossy compression), images at > 0 (official)."""
    path = Path(path)
    if path.exists() and path.is_file() and is_video_path(path):
        gray = video_io.read_frames(path, mode="L")
        masks = (gray[..., 0] if gray.ndim == 4 else gray) > 127
        if len(masks) != num_frames:
            raise video_io.VideoError(f"{path} has {len(masks)} masks but the video has {num_frames} frames; "
                                      "give one mask per frame or a single mask image for all frames")
    else:
        masks = video_io.read_masks(path, num_frames)
    if masks.shape[1:3] != tuple(size):
        raise video_io.VideoError(
            f"the masks in {path} are {masks.shape[2]}x{masks.shape[1]} (WxH) but the video frames are "
            f"{size[1]}x{size[0]}; give masks of the frames' size")
    return masks


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'432x240' (W x H) -> (240, 432) as (H, W)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or min(int(m.group(1)), int(m.group(2))) < 1:
        raise ValueError(f"--resize expects WIDTHxHEIGHT, e.g. 432x240; got {text!r}")
    return int(m.group(2)), int(m.group(1))


def inpaint(checkpoint, video, mask, output, model_name=None, overwrite=False, dtype=None, neighbor_length=None,
            ref_stride=None, subvideo_length=protocol.SUBVIDEO_LENGTH, resize=None, resize_ratio=1.0,
            mask_dilation=None, fps=None, side_by_side=True, progress=True, track_memory=False) -> dict:
    """The command's work as a function; returns a summary dict. Raises ValueError (VideoError,
    CheckpointError) / FileExistsError with a message naming the problem.

    neighbor_length: windows every neighbor_length // 2 frames over [f - L/2, f + L/2] (default the model's: 10);
    resize: (H, W) processing size or None for the model's rule."""
    from ecformer_jax.inference.common import load_model

    video, mask, output = Path(video), Path(mask), Path(output)
    check_outputs({"video": video, "mask": mask}, output, overwrite, side_by_side)
    if neighbor_length is not None and neighbor_length < 2:
        raise ValueError(f"--neighbor-length must be >= 2 (the window is [f - L/2, f + L/2]); got {neighbor_length}")
    t0 = time.perf_counter()
    frames = video_io.read_frames(video)  # VideoError for missing / empty / unreadable input
    n, h, w, _ = frames.shape
    masks = read_masks(mask, n, (h, w))
    name, model, variables = load_model(checkpoint, model_name, kind="inpainting", dtype=dtype)
    inpainter = protocol.Inpainter(
        name, model, variables, neighbor_stride=None if neighbor_length is None else neighbor_length // 2,
        ref_stride=ref_stride, subvideo_length=subvideo_length, mask_dilation=mask_dilation, resize=resize,
        resize_ratio=resize_ratio, track_memory=track_memory)
    windows, geo = inpainter.plan(n, (h, w))
    fps = fps or read_fps(video, 24.0)
    (ph, pw), (qh, qw) = geo.size, geo.padded
    plural = "s" if len(windows) != 1 else ""
    print(f"{name} ({inpainter.protocol.family} protocol, {np.dtype(model.dtype).name}): {n} frames {w}x{h}, "
          f"processed at {pw}x{ph}" + (f" padded to {qw}x{qh}" if geo.pad else "")
          + f"; {len(windows)} window{plural} of up to {max(len(x.frames) for x in windows)} frames "
          f"(neighbour stride {inpainter.neighbor_stride}, reference stride {inpainter.ref_stride}, "
          f"subvideo {inpainter.subvideo_length or 'whole video'}, mask dilation {inpainter.mask_dilation})",
          file=sys.stderr)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, unit="frame", desc="inpaint", file=sys.stderr)
    try:
        result = inpainter(frames, masks, progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    written = write_result(output, result.frames, fps)
    summary = {"model": name, "frames": n, "size": (w, h), "processing_size": (pw, ph), "padded_size": (qw, qh),
               "windows": len(windows), "output": str(written), "seconds": result.stats["seconds"],
               "frames_per_second": result.stats["frames_per_second"], "compiled_shapes":
               result.stats["compiled_shapes"], "total_seconds": time.perf_counter() - t0,
               "peak_host_memory_mb": peak_host_memory_mb(), "stats": result.stats}
    if side_by_side:
        path = side_by_side_path(output)
        video_io.write_video(path, video_io.side_by_side(video_io.overlay_mask(frames, result.masks),
                                                         result.frames), fps)
        summary["side_by_side"] = str(path)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ecformer_jax.inpaint", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None,
                   help="registered inpainting model (sttn, fuseformer, dstt, e2fgvi, e2fgvi_hq, ...); required "
                        "with a .pth, a converted folder names its own")
    p.add_argument("--checkpoint", required=True, help="official .pth or a converted checkpoint folder")
    p.add_argument("--video", required=True, help="video file or folder of frames")
    p.add_argument("--mask", required=True, help="folder of mask images, one mask image for all frames, or a video")
    p.add_argument("--output", required=True, help="output video file (.mp4, ...) or folder of PNG frames")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="compute dtype (default float32)")
    p.add_argument("--neighbor-length", type=int, default=None,
                   help="local frames around each window centre: windows every L/2 frames cover [f - L/2, f + L/2] "
                        "(official: 10, i.e. neighbour stride 5)")
    p.add_argument("--ref-stride", type=int, default=None, help="a reference frame every N frames (official: 10)")
    p.add_argument("--subvideo-length", type=int, default=protocol.SUBVIDEO_LENGTH,
                   help="reference frames come from this many frames around each window, which bounds the device "
                        "memory; 0 = the whole video (the official scripts, memory grows with the length)")
    p.add_argument("--resize", default=None, metavar="WxH",
                   help="processing size (default: the model's: 432x240 for fixed-size models, else the video's)")
    p.add_argument("--resize-ratio", type=float, default=1.0,
                   help="scale the video's size for processing (models without a fixed size)")
    p.add_argument("--mask-dilation", type=int, default=None, help="3x3-cross dilations of the masks (official: 4)")
    p.add_argument("--fps", type=float, default=None, help="output frame rate (default: the input's, else 24)")
    p.add_argument("--no-side-by-side", action="store_true", help="skip the input | result comparison video")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    from ecformer_jax.convert import CheckpointError

    try:
        summary = inpaint(args.checkpoint, args.video, args.mask, args.output, model_name=args.model,
                          overwrite=args.overwrite, dtype=args.dtype, neighbor_length=args.neighbor_length,
                          ref_stride=args.ref_stride, subvideo_length=args.subvideo_length,
                          resize=parse_size(args.resize), resize_ratio=args.resize_ratio,
                          mask_dilation=args.mask_dilation, fps=args.fps, side_by_side=not args.no_side_by_side,
                          progress=not args.quiet)
    except (CheckpointError, ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    w, h = summary["size"]
    print(f"{summary['frames']} frames {w}x{h} inpainted in {summary['seconds']:.1f}s "
          f"({summary['frames_per_second']:.2f} frames/s, {summary['windows']} windows, "
          f"{summary['compiled_shapes']} window shape(s); peak host memory "
          f"{summary['peak_host_memory_mb']:.0f} MiB): {summary['output']}"
          + (f" (side by side: {summary['side_by_side']})" if "side_by_side" in summary else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
