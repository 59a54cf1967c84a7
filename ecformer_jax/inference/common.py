"""Pieces shared by the inference commands (upscale, inpaint, evaluate): the one parser of sizes a user
types, the checks that come before any work (model name, checkpoint path, outputs) and the output side (no
clobbering, side-by-side path, fps, writing). Checkpoints are loaded with
`ecformer_jax.convert.resolve`.

Every failure is a ValueError naming the problem (FileExistsError for an output that exists), so the
commands can print it on one line and exit with status 2 (`errors.report`). Outputs may be local or remote
(gs://..., through etils.epath); they are written with `video_io.atomic_output`.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ecformer_jax.data import video_io
from ecformer_jax.errors import CheckpointError, naming
from ecformer_jax.paths import is_remote

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


# --- checks before any work --------------------------------------------------------------------------
def check_checkpoint(checkpoint, model_name: str | None, expect: str) -> None:
    """What can be told about --checkpoint / --model without loading weights: an unknown model name or one of
    another kind than `expect`, a missing checkpoint, a .pth without --model, a converted folder of a model of
    another kind. Run before any video is read or checkpoint loaded (ValueError / CheckpointError naming the
    problem). A `convert.Resolved` passes."""
    from etils import epath

    from ecformer_jax import convert, models

    if isinstance(checkpoint, convert.Resolved):
        return
    if model_name is not None:
        convert.model_entry(model_name, expect)  # unknown / wrong kind: the loader's own message
    path = epath.Path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_file() and model_name is None:
        names = ", ".join(models.names(expect))
        raise ValueError(f"--model is required with a .pth checkpoint ({path}); one of {names}")
    if path.is_dir() and convert.is_converted(path):  # it names its model: one of the right kind?
        try:
            held = json.loads((path / convert.META).read_text())["model"]
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise CheckpointError(f"{path / convert.META}: unreadable ({e})") from None
        try:
            convert.model_entry(held, expect)
        except ValueError as e:
            raise CheckpointError(f"{path} holds a converted '{held}' checkpoint: {e}") from None


def load_checkpoint(checkpoint, model_name: str | None, expect: str, dtype=None):
    """`convert.resolve` (a `convert.Resolved` passes through), with the checkpoint named in every error."""
    from ecformer_jax import convert

    if isinstance(checkpoint, convert.Resolved):
        return checkpoint
    try:
        return convert.resolve(checkpoint, model_name, expect=expect, dtype=dtype)
    except CheckpointError as e:
        raise naming(e, checkpoint) from None


# --- outputs ---------------------------------------------------------------------------------------
def is_video_path(path: str | os.PathLike) -> bool:
    return Path(os.fspath(path)).suffix.lower() in video_io.VIDEO_EXTS


def side_by_side_path(output: str | os.PathLike):
    """OUT.mp4 -> OUT_side_by_side.mp4; a frame folder OUT -> OUT_side_by_side.mp4 beside it."""
    output = video_io.output_path(output)
    if is_video_path(output):
        return output.with_name(output.stem + SIDE_BY_SIDE_SUFFIX + output.suffix)
    return output.with_name(output.name + SIDE_BY_SIDE_SUFFIX + ".mp4")


def check_outputs(inputs: Path | dict[str, Path] | Iterable[Path], output, overwrite: bool,
                  side_by_side: bool):
    """Refuse to clobber anything (the inputs included) and refuse an output that cannot be written, before any
    work is done.

    inputs: the input path, or {what: path} (e.g. {"video": ..., "mask": ...}) for the messages."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = {"video": inputs}
    elif not isinstance(inputs, dict):
        inputs = {f"video {i}" if i else "video": p for i, p in enumerate(inputs)}
    output = video_io.output_path(output)
    for what, path in inputs.items():
        same = (os.fspath(output) == os.fspath(path) if is_remote(output) or is_remote(path)
                else output.resolve() == Path(path).resolve())
        if same:
            raise ValueError(f"--output {output} is the input {what} itself; choose another path")
    targets = [output] + ([side_by_side_path(output)] if side_by_side else [])
    for target in targets:
        if not target.exists():
            continue
        if is_video_path(output) and target == output and target.is_dir():
            raise ValueError(f"--output {output} names a video file but is an existing folder")
        if target.is_dir() and not any(target.iterdir()):
            continue  # an empty folder is fine
        if not overwrite:
            raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
    for target in targets:
        video_io.check_writable(target)


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


def _write(path: Path, frames: np.ndarray, fps: float):
    if is_video_path(path):
        video_io.write_video(path, frames, fps, atomic=False)  # path: the temporary of an atomic_output
    else:
        video_io.write_frames(path, frames)


def write_result(output, frames: np.ndarray, fps: float, side_by_side: np.ndarray | None = None):
    """Write the result: a video file (by suffix) or a folder of 00000.png ..., and optionally the side-by-side
    video next to it (`side_by_side_path`), through `video_io.atomic_output`: both are written to temporaries
    and moved into place at the end (the side-by-side video first, the result last), so a failure leaves
    neither. A frame folder is merged into an existing one; with --overwrite, frames of an earlier, longer run
    in the folder are removed. Returns the output path."""
    output = video_io.output_path(output)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(video_io.atomic_output(output))
        if side_by_side is not None:
            tmp_sbs = stack.enter_context(video_io.atomic_output(side_by_side_path(output)))
            video_io.write_video(tmp_sbs, side_by_side, fps, atomic=False)
        _write(tmp, frames, fps)
    if not is_video_path(output):
        for f in output.iterdir():
            if _FRAME_NAME.match(f.name) and int(f.name[:5]) >= len(frames):
                f.unlink()
    return output


def peak_host_memory_mb() -> float:
    """Peak resident memory of this process so far (resource.getrusage), in MiB."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
