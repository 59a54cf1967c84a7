"""Training and evaluation masks (bool arrays, True = hole).

`random_shape_masks` is the mask generator of the official STTN / FuseFormer / DSTT / E2FGVI trainers
(`create_random_shape_with_random_motion`): one random closed Bezier blob rasterised with matplotlib,
stationary in half of the clips and drifting with a noisy velocity in the other half. The official code
draws from two global generators (Python's `random` and numpy's `np.random`); here both are private
generators derived from one `np.random.Generator`, and each is consumed in the official order, so a clip's
masks are a pure function of that generator.
"""
from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from ecformer_jax.data import video_io
from ecformer_jax.data.video_io import VideoError

# Agg figures are independent objects, but matplotlib keeps some module-level caches; rasterise one
# blob at a time per process (it takes a few milliseconds). The lock also covers matplotlib's first import: two
# data-loader threads importing it at once could get a partially initialised module.
_RASTER_LOCK = threading.Lock()


def random_shape_masks(num_frames: int, height: int, width: int, rng: np.random.Generator,
                       frame_indices=None) -> np.ndarray:
    """The official random-shape masks for a video of `num_frames` frames -> bool (T, height, width).

    frame_indices: optional frame indices to return (the motion is still simulated over the whole video,
    as the official trainers generate masks for every frame and then pick the sampled ones).
    """
    if num_frames < 1:
        raise ValueError(f"random_shape_masks: num_frames must be >= 1, got {num_frames}")
    if height < 3 or width < 3:
        raise ValueError(f"random_shape_masks: masks of {height}x{width} are too small (need >= 3x3)")
    indices = np.arange(num_frames) if frame_indices is None else np.asarray(frame_indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= num_frames):
        raise ValueError(f"random_shape_masks: frame indices {indices.tolist()} outside [0, {num_frames})")
    py = random.Random(int(rng.integers(0, 2**63 - 1)))
    nprs = np.random.RandomState(int(rng.integers(0, 2**32 - 1)))

    # 1. canvas and blob parameters (Python random)
    box_h = py.randint(height // 3, height - 1)
    box_w = py.randint(width // 3, width - 1)
    edge_num = py.randint(6, 8)
    ratio = py.randint(6, 8) / 10
    region = _random_blob(edge_num, ratio, box_h, box_w, nprs)
    rh, rw = region.shape
    # 2. position (row x, column y) and velocity
    x = py.randint(0, height - rh)
    y = py.randint(0, width - rw)
    speed = nprs.uniform(3)  # numpy reads this as low=3, high=1: speed in (1, 3]
    angle = nprs.uniform(0, 2 * np.pi)

    positions = [(x, y)]
    if not py.uniform(0, 1) > 0.5:  # moving blob (else the same mask on every frame)
        last = int(indices.max()) if indices.size else 0
        for _ in range(last):
            x += int(speed * np.cos(angle))
            y += int(speed * np.sin(angle))
            speed += nprs.normal(0, 1.5)
            angle += nprs.normal(0, 0.25)
            if x > height - rh or x < 0 or y > width - rw or y < 0:
                speed = np.abs(nprs.normal(0, 1.5))
                angle = nprs.uniform(0, 2 * np.pi)
            x = int(np.clip(x, 0, height - rh))
            y = int(np.clip(y, 0, width - rw))
            positions.append((x, y))

    out = np.zeros((len(indices), height, width), bool)
    for k, t in enumerate(indices):
        px, py_ = positions[min(int(t), len(positions) - 1)]
        out[k, px:px + rh, py_:py_ + rw] = region
    return out


def _random_blob(edge_num: int, ratio: float, height: int, width: int, nprs: np.random.RandomState) -> np.ndarray:
    """A closed curve of `edge_num` cubic Bezier segments through perturbed unit-circle points, rasterised
    like the official `get_random_shape` (640x480 Agg canvas, default axes box, 2 pt black outline,
    bilinear resize to width x height, holes = red channel exactly 0, cropped to the bounding box with
    the last row and column dropped)."""
    n = edge_num * 3 + 1
    angles = np.linspace(0, 2 * np.pi, n)
    radii = 2 * ratio * nprs.random(n) + 1 - ratio
    verts = np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None]
    verts[-1] = verts[0]
    with _RASTER_LOCK:
        rgb = _rasterise(verts, float(verts.min()) * 1.1, float(verts.max()) * 1.1)
    import cv2

    red = cv2.resize(rgb, (width, height))[:, :, 0]
    hole = red == 0
    rows, cols = np.nonzero(hole)
    if rows.size == 0:
        return np.zeros((0, 0), bool)
    return hole[rows.min():rows.max(), cols.min():cols.max()].copy()


def _rasterise(verts: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """RGB uint8 (480, 640, 3) of the closed cubic Bezier curve through `verts` filled black on matplotlib's
    default figure and axes box. Callers hold _RASTER_LOCK."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure, SubplotParams
    from matplotlib.patches import PathPatch
    from matplotlib.path import Path as MplPath

    codes = np.full(len(verts), MplPath.CURVE4, dtype=MplPath.code_type)
    codes[0] = MplPath.MOVETO
    fig = Figure(figsize=(6.4, 4.8), dpi=100, facecolor="white",
                 subplotpars=SubplotParams(left=0.125, right=0.9, bottom=0.11, top=0.88))
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    ax.add_patch(PathPatch(MplPath(verts, codes), facecolor="black", edgecolor="black", lw=2, antialiased=True))
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.axis("off")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def dilate(masks: np.ndarray, iterations: int = 4) -> np.ndarray:
    """Binary dilation of bool masks (..., H, W) with the 3x3 cross, `iterations` times (= cv2.dilate with
    cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)), as the official test scripts do)."""
    m = np.asarray(masks).astype(bool)
    if m.ndim < 2:
        raise ValueError(f"dilate expects masks (..., H, W), got shape {m.shape}")
    for _ in range(int(iterations)):
        out = m.copy()
        out[..., 1:, :] |= m[..., :-1, :]
        out[..., :-1, :] |= m[..., 1:, :]
        out[..., :, 1:] |= m[..., :, :-1]
        out[..., :, :-1] |= m[..., :, 1:]
        m = out
    return m


def mask_count(path: str | os.PathLike) -> int:
    """Number of masks in a mask folder / zip / video (1 for a single image, used for every frame)."""
    path = Path(path)
    if not path.exists():
        raise VideoError(f"mask not found: {path}")
    if path.is_file() and path.suffix.lower() in video_io.IMAGE_EXTS:
        return 1
    return video_io.video_length(path)


def masks_from_folder(path: str | os.PathLike, frame_indices=None, size: tuple[int, int] | None = None,
                      num_frames: int | None = None) -> np.ndarray:
    """Fixed masks from a folder of images, a zip, a video or one image -> bool (T, H, W), True = hole.

    frame_indices: which masks to read (default: all). size: optional (width, height), NEAREST resize as
    the official scripts do. num_frames: the video's frame count; the mask count must equal it (a single
    mask image is used for every frame), else a VideoError names the folder.
    """
    path = Path(path)
    count = mask_count(path)
    single = count == 1 and path.is_file() and path.suffix.lower() in video_io.IMAGE_EXTS
    if num_frames is not None and not single and count != num_frames:
        raise VideoError(f"mask folder {path} has {count} masks but the video has {num_frames} frames; "
                         "give one mask per frame or a single mask image for all frames")
    if single:
        m = video_io.read_frames(path, mode="L")
        n = len(frame_indices) if frame_indices is not None else (num_frames or 1)
        m = np.repeat(m, n, axis=0)
    else:
        m = video_io.read_frames(path, indices=frame_indices, mode="L")
    if m.ndim == 4:
        m = m[..., 0]
    if size is not None:
        m = np.stack([video_io.resize(f, size, Image.NEAREST) for f in m])
    return m > 0


__all__ = ["random_shape_masks", "dilate", "masks_from_folder", "mask_count"]
