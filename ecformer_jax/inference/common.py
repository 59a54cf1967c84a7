"""Pieces shared by the inference commands (upscale, inpaint, evaluate): the one parser of sizes a user
types, and the output side (no clobbering, side-by-side path, fps, writing). Checkpoints are loaded with
`ecformer_jax.convert.resolve`.

Every failure is a ValueError naming the problem (FileExistsError for an output that exists), so the
commands can print it and exit with status 2.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ecformer_jax.data import video_io

SIDE_BY_SIDE_SUFFIX = "_side_by_side"
_FRAME_NAME = re.compile(r"^\d{5}\.png$")
_SIZE = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*")


# --- sizes -----------------------------------------------------------------------------------------
def parse_size(text: str | None, flag: str = "--resize") -> tuple[int, int] | None:
    """'432x240' (W x H, as a user types it) -> (240, 432) as (H, W), the library's order; None stays None."""
    if text is None or text == "":
        return None
    m = _SIZE.fullmatch(text)
    if not m or min(int(m.group(1)), int(m.group(2))) < 1:
        raise ValueError(f"{flag} expects WIDTHxHEIGHT with positive sides, e.g. 432x240; got {text!r}")
    return int(m.group(2)), int(m.group(1))


def format_size(size: tuple[int, int]) -> str:
    """(H, W) -> 'WxH', as a user reads it."""
    return f"{size[1]}x{size[0]}"


# --- outputs ---------------------------------------------------------------------------------------
def is_video_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in video_io.VIDEO_EXTS


def side_by_side_path(output: str | os.PathLike) -> Path:
    """OUT.mp4 -> OUT_side_by_side.mp4; a frame folder OUT -> OUT_side_by_side.mp4 beside it."""
    output = Path(output)
    if is_video_path(output):
        return output.with_name(output.stem + SIDE_BY_SIDE_SUFFIX + output.suffix)
    return output.with_name(output.name + SIDE_BY_SIDE_SUFFIX + ".mp4")


def check_outputs(inputs: Path | dict[str, Path] | Iterable[Path], output: Path, overwrite: bool,
                  side_by_side: bool):
    """Refuse to clobber anything (the inputs included) before any work is done.

    inputs: the input path, or {what: path} (e.g. {"video": ..., "mask": ...}) for the messages."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = {"video": Path(inputs)}
    elif not isinstance(inputs, dict):
        inputs = {f"video {i}" if i else "video": Path(p) for i, p in enumerate(inputs)}
    output = Path(output)
    for what, path in inputs.items():
        if output.resolve() == Path(path).resolve():
            raise ValueError(f"--output {output} is the input {what} itself; choose another path")
    targets = [output] + ([side_by_side_path(output)] if side_by_side else [])
    for target in targets:
        if not target.exists():
            continue
        if target.is_dir() and not any(target.iterdir()):
            continue  # an empty folder is fine
        if not overwrite:
            raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
        if is_video_path(output) and target == output and target.is_dir():
            raise ValueError(f"--output {output} names a video file but is an existing folder")


def read_fps(path: Path, default: float) -> float:
    """The frame rate of a video file (default for frame folders or unknown rates)."""
    path = Path(path)
    if path.is_dir():
        return default
    try:
        import imageio.v3 as iio

        fps = float(iio.immeta(path).get("fps") or 0)
    except Exception:
        fps = 0.0
    return fps if np.isfinite(fps) and fps > 0 else default


def write_result(output: Path, frames: np.ndarray, fps: float) -> Path:
    """A video file (by suffix) or a folder of 00000.png ...; with --overwrite, frames of an earlier,
    longer run in the folder are removed."""
    output = Path(output)
    if is_video_path(output):
        return video_io.write_video(output, frames, fps)
    if output.is_dir():
        for f in output.iterdir():
            if _FRAME_NAME.match(f.name) and int(f.name[:5]) >= len(frames):
                f.unlink()
    return video_io.write_frames(output, frames)


def peak_host_memory_mb() -> float:
    """Peak resident memory of this process so far (resource.getrusage), in MiB."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
