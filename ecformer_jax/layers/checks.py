"""Input validation that fails early with a message naming the problem (not a deep jax traceback)."""
from __future__ import annotations


def check_video(x, what: str, channels: int | None = None, ndim: int = 5):
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != ndim:
        layout = "(B, T, H, W, C)" if ndim == 5 else "(B, H, W, C)"
        raise ValueError(f"{what} must be a {ndim}-D array {layout} (channels-last); got shape {shape}")
    if channels is not None and shape[-1] != channels:
        raise ValueError(
            f"{what} must have {channels} channel(s) in the last axis (channels-last); got shape {tuple(shape)}"
        )
    return shape


def check_same_clip(frames, masks, what="masks"):
    if tuple(masks.shape[:4]) != tuple(frames.shape[:4]):
        raise ValueError(
            f"{what} shape {tuple(masks.shape)} does not match the frames {tuple(frames.shape)} in (B, T, H, W)"
        )
