"""Mirror padding of frames to a multiple of a size, and cropping back (the official E2FGVI test.py's
padding, used by the inpainting protocol for every model that needs whole multiples)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def pad_to_multiple(frames, multiple: tuple[int, int]):
    """Mirror-pad frames (..., H, W, C) at the bottom / right to multiples of `multiple` (h, w), as the
    official E2FGVI test.py does: concatenate the vertically flipped clip below and crop, then the same
    horizontally (symmetric padding, the edge row / column repeated). Returns (padded, (H, W)); pass
    the original size to `crop`. Works on numpy and jax arrays; pads of more than the frame size keep
    reflecting (the official code would fail there).
    """
    shape = getattr(frames, "shape", None)
    if shape is None or len(shape) < 3:
        raise ValueError(f"pad_to_multiple: frames must be (..., H, W, C); got shape {shape}")
    mh, mw = multiple
    if mh < 1 or mw < 1:
        raise ValueError(f"pad_to_multiple: multiple must be positive; got {multiple}")
    xp = np if isinstance(frames, np.ndarray) else jnp
    height, width = shape[-3], shape[-2]
    out = frames
    for axis, n, m in ((-3, height, mh), (-2, width, mw)):
        target = n + (m - n % m) % m
        while out.shape[axis] < target:
            out = xp.concatenate([out, xp.flip(out, axis=axis)], axis=axis)
        index = [slice(None)] * out.ndim
        index[axis] = slice(0, target)
        out = out[tuple(index)]
    return out, (height, width)


def crop(frames, size: tuple[int, int]):
    """Undo `pad_to_multiple`: frames (..., H', W', C) -> (..., H, W, C) with size = (H, W)."""
    h, w = size
    if frames.shape[-3] < h or frames.shape[-2] < w:
        raise ValueError(f"crop: frames of shape {tuple(frames.shape)} are smaller than the requested {h}x{w}")
    return frames[..., :h, :w, :]
