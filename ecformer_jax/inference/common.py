"""Pieces shared by the inference commands (upscale, inpaint): loading a checkpoint into a validated
(name, module, variables) triple, and the output side (no clobbering, side-by-side path, fps, writing).

    name, model, variables = load_model("E2FGVI-HQ-CVPR22.pth", "e2fgvi_hq", kind="inpainting")
    name, model, variables = load_model("converted/", kind="inpainting")  # the folder names its model

Every failure is a ValueError naming the problem (CheckpointError for checkpoint / model mismatches,
FileExistsError for an output that exists), so the commands can print it and exit with status 2.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ecformer_jax.data import video_io

KIND_WORDS = {"inpainting": "an inpainting", "super_resolution": "a super-resolution"}
SIDE_BY_SIDE_SUFFIX = "_side_by_side"
_FRAME_NAME = re.compile(r"^\d{5}\.png$")


# --- checkpoints -----------------------------------------------------------------------------------
def require_model(name: str, kind: str):
    """The registry entry of `name`; ValueError for an unknown model or one of another kind."""
    from ecformer_jax import models

    try:
        entry = models.get(name)
    except KeyError as e:
        raise ValueError(str(e).strip("'\"")) from None
    if entry.kind != kind:
        raise ValueError(f"model '{name}' is not {KIND_WORDS.get(kind, kind)} model (its kind is '{entry.kind}'); "
                         f"use one of {', '.join(models.names(kind))}")
    return entry


def load_model(checkpoint: str | os.PathLike, model_name: str | None = None, kind: str = "inpainting",
               default_model: str | None = None, dtype: Any = None,
               options_from_state_dict: Callable[[Any, dict], dict] | None = None):
    """(name, model, variables) from an official .pth or a folder written by `convert.save`.

    .pth: the model is `model_name` (else `default_model`; with neither, a ValueError asks for one); the
    file is unwrapped ('netG', 'params', 'module.' prefixes, ...) and converted with the model's strict
    key mapping. `options_from_state_dict(entry, state_dict)` may return module options read off the
    checkpoint (e.g. VSR-Transformer's depth). A converted folder carries its model name and options;
    a different `model_name` is refused. Any mismatch between checkpoint and model raises
    CheckpointError naming the keys. dtype: the compute dtype (parameters stay float32).
    """
    import jax.numpy as jnp

    from ecformer_jax import convert, models
    from ecformer_jax.convert.state_dict import unwrap

    checkpoint = os.fspath(checkpoint)
    dtype_kw = {} if dtype is None else {"dtype": jnp.dtype(dtype)}
    if os.path.isdir(checkpoint):
        if not convert.is_converted(checkpoint):
            raise convert.CheckpointError(
                f"{checkpoint} is a folder but not a converted checkpoint (no {convert.META}); pass the official "
                ".pth file or a folder written by tools/convert_torch.py")
        return build_loaded(checkpoint, *convert.load(checkpoint), model_name, kind, dtype)
    if not os.path.exists(checkpoint):
        raise convert.CheckpointError(f"checkpoint not found: {checkpoint}")
    name = model_name or default_model
    if name is None:
        raise ValueError(f"--model is required with a .pth checkpoint ({checkpoint}); one of "
                         f"{', '.join(models.names(kind))}")
    entry = require_model(name, kind)
    state_dict = unwrap(convert.load_torch_file(checkpoint), entry.wrappers)
    overrides = dict(options_from_state_dict(entry, state_dict)) if options_from_state_dict is not None else {}
    variables = convert.from_torch(name, state_dict, **overrides)
    return name, models.build(name, **overrides, **dtype_kw), variables


def build_loaded(source, name: str, overrides: dict, variables, model_name: str | None = None,
                 kind: str = "inpainting", dtype: Any = None, what: str = "converted"):
    """(name, model, variables) for parameters already read (a converted folder, a training checkpoint):
    refuses a different `model_name` and checks every key and shape against the model."""
    import jax
    import jax.numpy as jnp

    from ecformer_jax import convert, models

    overrides = {k: _tuples(v) for k, v in overrides.items()}  # JSON gives lists; modules want tuples
    if model_name is not None and model_name != name:
        raise convert.CheckpointError(
            f"{source} holds a {what} '{name}' checkpoint but --model {model_name} was asked for; "
            "leave --model out to use the checkpoint's model")
    require_model(name, kind)
    model = models.build(name, **overrides, **({} if dtype is None else {"dtype": jnp.dtype(dtype)}))
    expected = jax.eval_shape(lambda: models.init(model, name, jax.random.key(0)))
    convert._check_tree(name, expected, variables, {})
    return name, model, variables


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


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
        inputs = {"video": Path(p) for p in inputs}
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
