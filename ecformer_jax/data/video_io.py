"""Reading and writing videos: frame folders, video files (imageio + ffmpeg) and zipped frame folders.

All frames are uint8 RGB arrays (T, H, W, 3); masks are bool (T, H, W) with True = hole.
Every failure names the file or folder that caused it.
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".gif")


class VideoError(ValueError):
    """Unreadable, empty or inconsistent video / mask input."""


def list_images(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise VideoError(f"not a folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))
    if not files:
        raise VideoError(f"no image files ({', '.join(IMAGE_EXTS)}) in {folder}")
    return files


def _open_image(src, name: str, mode: str) -> np.ndarray:
    try:
        with Image.open(src) as im:
            return np.asarray(im.convert(mode))
    except Exception as e:  # PIL raises many types
        raise VideoError(f"cannot read image {name}: {e}") from e


def read_image(path: str | os.PathLike, mode: str = "RGB") -> np.ndarray:
    return _open_image(path, str(path), mode)


def video_length(path: str | os.PathLike) -> int:
    """Number of frames without decoding them all (folders, zips); decodes video files."""
    path = Path(path)
    if path.is_dir():
        return len(list_images(path))
    if path.suffix.lower() == ".zip":
        return len(_zip_members(path))
    return len(read_frames(path))


def _zip_members(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as z:
            names = sorted(n for n in z.namelist() if n.lower().endswith(IMAGE_EXTS) and not n.endswith("/"))
    except (zipfile.BadZipFile, OSError) as e:
        raise VideoError(f"cannot read zip file {path}: {e}") from e
    if not names:
        raise VideoError(f"no image files in zip file {path}")
    return names


def read_frames(path: str | os.PathLike, indices=None, size: tuple[int, int] | None = None,
                mode: str = "RGB") -> np.ndarray:
    """Frames of a video file, a folder of images or a zip of images -> (T, H, W, C) uint8.

    indices: optional frame indices to read (folders and zips read only those).
    size: optional (width, height) resize with PIL's bicubic filter, as the official scripts do.
    """
    path = Path(path)
    if not path.exists():
        raise VideoError(f"video not found: {path}")
    if path.is_dir():
        files = list_images(path)
        chosen = files if indices is None else [files[i] for i in _check_indices(indices, len(files), path)]
        frames = [read_image(f, mode) for f in chosen]
    elif path.suffix.lower() == ".zip":
        names = _zip_members(path)
        chosen = names if indices is None else [names[i] for i in _check_indices(indices, len(names), path)]
        with zipfile.ZipFile(path) as z:
            frames = [_open_image(io.BytesIO(z.read(n)), f"{path}:{n}", mode) for n in chosen]
    elif path.suffix.lower() in VIDEO_EXTS:
        frames = _read_video_file(path)
        if mode == "L":
            frames = [np.asarray(Image.fromarray(f).convert("L")) for f in frames]
        if indices is not None:
            frames = [frames[i] for i in _check_indices(indices, len(frames), path)]
    elif path.suffix.lower() in IMAGE_EXTS:
        frames = [read_image(path, mode)]
    else:
        raise VideoError(f"unsupported video input {path}: expected a folder of images, a .zip of images or a "
                         f"video file ({', '.join(VIDEO_EXTS)})")
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise VideoError(f"frames of {path} have different sizes: {sorted(shapes)}")
    if size is not None:
        frames = [resize(f, size, Image.BICUBIC) for f in frames]
    return np.stack(frames)


def _check_indices(indices, n, path):
    indices = [int(i) for i in indices]
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise VideoError(f"{path} has {n} frames; cannot read frame(s) {bad[:5]}")
    return indices


def _read_video_file(path: Path) -> list[np.ndarray]:
    import imageio.v3 as iio

    try:
        frames = [np.asarray(f) for f in iio.imiter(path, plugin="pyav" if _has_pyav() else None)]
    except Exception as e:
        raise VideoError(f"cannot read video file {path}: {e}") from e
    if not frames:
        raise VideoError(f"video file {path} has no frames")
    return [f[..., :3] if f.ndim == 3 else np.repeat(f[..., None], 3, -1) for f in frames]


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401

        return True
    except ImportError:
        return False


def resize(frame: np.ndarray, size: tuple[int, int], resample=Image.BICUBIC) -> np.ndarray:
    """PIL resize of one uint8 frame to size = (width, height)."""
    if (frame.shape[1], frame.shape[0]) == tuple(size):
        return frame
    return np.asarray(Image.fromarray(frame).resize(tuple(size), resample))


def read_masks(path: str | os.PathLike, num_frames: int | None = None,
               size: tuple[int, int] | None = None) -> np.ndarray:
    """Masks from a folder of images, one image (used for every frame) or a video -> bool (T, H, W).

    Pixels > 0 are holes. size: optional (width, height), resized with NEAREST as the official
    scripts do. With num_frames, the count must match (a single image is repeated).
    """
    path = Path(path)
    if not path.exists():
        raise VideoError(f"mask not found: {path}")
    single = path.is_file() and path.suffix.lower() in IMAGE_EXTS
    masks = read_frames(path, mode="L")
    if size is not None:
        masks = np.stack([resize(m, size, Image.NEAREST) for m in masks])
    masks = masks > 0
    if num_frames is not None:
        if single:
            masks = np.repeat(masks, num_frames, axis=0)
        elif len(masks) != num_frames:
            raise VideoError(f"{path} has {len(masks)} masks but the video has {num_frames} frames; "
                             "give one mask per frame or a single mask image for all frames")
    return masks


def write_frames(folder: str | os.PathLike, frames: np.ndarray, prefix: str = "", ext: str = ".png") -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(np.asarray(f, np.uint8)).save(folder / f"{prefix}{i:05d}{ext}")
    return folder


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 24.0) -> Path:
    """Write uint8 frames (T, H, W, 3) as an H.264 mp4 (or any format imageio infers from the suffix).

    Odd sizes are padded by one pixel (H.264 needs even sizes). The file is written to a temporary
    name and renamed into place, so an interrupted write never leaves a truncated video."""
    import imageio.v2 as iio2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.asarray(frames, np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoError(f"write_video expects (T, H, W, 3) uint8 frames, got {frames.shape}")
    ph, pw = frames.shape[1] % 2, frames.shape[2] % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        quality = {"quality": 8} if path.suffix == ".mp4" else {}
        with iio2.get_writer(tmp, fps=fps, macro_block_size=1, **quality) as w:
            for f in frames:
                w.append_data(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_output(path: str | os.PathLike, frames: np.ndarray, fps: float = 24.0) -> Path:
    """A video file if `path` has a video suffix, else a folder of PNG frames."""
    path = Path(path)
    if path.suffix.lower() in VIDEO_EXTS:
        return write_video(path, frames, fps)
    return write_frames(path, frames)


def side_by_side(*videos: np.ndarray, gap: int = 4) -> np.ndarray:
    """Concatenate equally long uint8 videos horizontally with a white gap (heights must match)."""
    t, h = videos[0].shape[:2]
    parts = []
    for i, v in enumerate(videos):
        if v.shape[:2] != (t, h):
            raise VideoError(f"side_by_side: video {i} has shape {v.shape}, expected {t} frames of height {h}")
        if i:
            parts.append(np.full((t, h, gap, 3), 255, np.uint8))
        parts.append(np.asarray(v, np.uint8))
    return np.concatenate(parts, axis=2)


def overlay_mask(frames: np.ndarray, masks: np.ndarray, color=(0, 255, 0), alpha: float = 0.5) -> np.ndarray:
    """Tint the hole pixels of uint8 frames (T, H, W, 3) with `color`."""
    m = np.asarray(masks, bool)[..., None] if masks.ndim == 3 else np.asarray(masks, bool)
    tinted = (1 - alpha) * frames + alpha * np.asarray(color, np.float32)
    return np.where(m, tinted, frames).astype(np.uint8)
