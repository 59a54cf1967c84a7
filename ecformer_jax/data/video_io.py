"""Reading and writing videos: frame folders, video files (imageio + ffmpeg) and zipped frame folders.

All frames are uint8 RGB arrays (T, H, W, 3); masks are bool (T, H, W) with True = hole.
Every failure is a one-line VideoError that names the file or folder that caused it.

Unusual input that works: grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images (scaled to 8 bits:
frames keep the high byte, as Pillow reads 16-bit RGB; masks are rounded up, so a non-zero value stays
non-zero), upper-case extensions (.PNG, .JPG, .MP4), one-frame videos.

Masks: a pixel is a hole when its grey value ('L', alpha ignored: the official scripts' PIL `convert('L')`) is
> 0, as in the official test scripts of STTN, FuseFormer, DSTT and E2FGVI; anti-aliased edges (values between
0 and 255) therefore count as holes. Masks given as a video file are binarised at > 127 instead
(inference.inpaint.read_masks), since lossy compression leaves small non-zero values everywhere.

Writing: `atomic_output(path)` is the one way the commands write files: a temporary next to the output (or a
local temporary for a remote epath such as gs://...) moved into place only when complete, removed on failure.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from ecformer_jax.errors import OutputError
from ecformer_jax.paths import is_remote

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".gif")
_X264_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".m4v")  # written with libx264
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # PIL's modes of 16-bit grey PNG / TIFF


class VideoError(ValueError):
    """Unreadable, empty or inconsistent video / mask input."""


# --- reading ---------------------------------------------------------------------------------------
def list_images(folder: str | os.PathLike, strict: bool = False) -> list[Path]:
    """The image files of a frame folder, sorted by name (hidden files and sub-folders are skipped).

    strict: any other file (a .txt, a .mp4, ...) is a VideoError naming it: a frame folder holds frames only."""
    folder = Path(folder)
    if not folder.exists():
        raise VideoError(f"folder not found: {folder}")
    if not folder.is_dir():
        raise VideoError(f"not a folder: {folder}")
    files, others = [], []
    for p in folder.iterdir():
        if p.name.startswith("."):
            continue
        if p.suffix.lower() in IMAGE_EXTS:
            files.append(p)
        elif strict and p.is_file():
            others.append(p)
    if not files:
        raise VideoError(f"no image files ({', '.join(IMAGE_EXTS)}) in {folder}")
    if others:
        others.sort()
        more = f" (and {len(others) - 1} more)" if len(others) > 1 else ""
        raise VideoError(f"{others[0]}: not an image file ({', '.join(IMAGE_EXTS)}){more}; a frame folder holds "
                         f"only the frames of one video: move it out of {folder}")
    return sorted(files)


def _from_16bit(a: np.ndarray, mode: str) -> np.ndarray:
    """16-bit grey -> uint8 'RGB' (the high byte, as Pillow reads 16-bit RGB) or 'L' (rounded up, so that a
    non-zero mask value stays non-zero)."""
    a = np.clip(np.asarray(a, np.int64), 0, 65535)
    if mode == "L":
        return np.minimum(-(-a // 256), 255).astype(np.uint8)
    return np.repeat((a >> 8).astype(np.uint8)[..., None], 3, -1)


def _pil_reason(e: Exception) -> str:
    if isinstance(e, Image.UnidentifiedImageError):
        return "not an image, or a format Pillow cannot read"
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _open_image(src, name: str, mode: str) -> np.ndarray:
    try:
        with Image.open(src) as im:
            if im.mode in _SIXTEEN_BIT and mode in ("L", "RGB"):
                return _from_16bit(np.asarray(im), mode)
            return np.asarray(im.convert(mode))
    except Exception as e:  # PIL raises many types
        raise VideoError(f"cannot read image {name}: {_pil_reason(e)}") from e


def read_image(path: str | os.PathLike, mode: str = "RGB") -> np.ndarray:
    """One image as uint8 (H, W, 3) for mode 'RGB', (H, W) for 'L'; VideoError naming the file otherwise."""
    try:
        empty = os.path.getsize(path) == 0
    except OSError as e:
        raise VideoError(f"cannot read image {path}: {e.strerror or e}") from e
    if empty:
        raise VideoError(f"cannot read image {path}: empty file (0 bytes)")
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


def _same_size(frames: list[np.ndarray], frame: np.ndarray, name, first_name, video) -> np.ndarray:
    if frames and frame.shape[:2] != frames[0].shape[:2]:
        (h, w), (h0, w0) = frame.shape[:2], frames[0].shape[:2]
        raise VideoError(f"{name}: {w}x{h} (WxH) but the first frame {first_name} of {video} is {w0}x{h0}; all "
                         "frames of a video must have one size")
    return frame


def read_frames(path: str | os.PathLike, indices=None, size: tuple[int, int] | None = None,
                mode: str = "RGB") -> np.ndarray:
    """Frames of a video file, a folder of images or a zip of images -> (T, H, W, C) uint8.

    indices: optional frame indices to read (folders and zips read only those).
    size: optional (width, height) resize with PIL's bicubic filter, as the official scripts do.
    A folder may hold only images (hidden files and sub-folders aside) of one size.
    """
    path = Path(path)
    if not path.exists():
        raise VideoError(f"video not found: {path}")
    frames: list[np.ndarray] = []
    if path.is_dir():
        files = list_images(path, strict=True)
        chosen = files if indices is None else [files[i] for i in _check_indices(indices, len(files), path)]
        for f in chosen:
            frames.append(_same_size(frames, read_image(f, mode), f, chosen[0].name, path))
    elif path.suffix.lower() == ".zip":
        names = _zip_members(path)
        chosen = names if indices is None else [names[i] for i in _check_indices(indices, len(names), path)]
        with zipfile.ZipFile(path) as z:
            for n in chosen:
                data = z.read(n)
                if not data:
                    raise VideoError(f"cannot read image {path}:{n}: empty file (0 bytes)")
                frame = _open_image(io.BytesIO(data), f"{path}:{n}", mode)
                frames.append(_same_size(frames, frame, f"{path}:{n}", chosen[0], path))
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
    if size is not None:
        frames = [resize(f, size, Image.BICUBIC) for f in frames]
    return np.stack(frames)


def _check_indices(indices, n, path):
    indices = [int(i) for i in indices]
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise VideoError(f"{path} has {n} frames; cannot read frame(s) {bad[:5]}")
    return indices


def _ffmpeg_reason(e: Exception) -> str:
    """The lines that say what is wrong in an ffmpeg error (e.g. 'moov atom not found'), not its banner."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    said = [line.split("] ", 1)[1] for line in lines if line.startswith("[") and "] " in line]
    said = [s for s in said if "misdetection possible" not in s]
    if said:
        return "; ".join(dict.fromkeys(said[-2:]))
    return lines[0] if lines else type(e).__name__


def _read_video_file(path: Path) -> list[np.ndarray]:
    import imageio.v3 as iio

    if path.stat().st_size == 0:
        raise VideoError(f"cannot read video file {path}: empty file (0 bytes)")
    try:
        frames = [np.asarray(f) for f in iio.imiter(path, plugin="pyav" if _has_pyav() else None)]
    except Exception as e:
        raise VideoError(f"cannot read video file {path}: {_ffmpeg_reason(e)}") from e
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

    Pixels > 0 (grey value, see the module docstring) are holes. size: optional (width, height), resized with
    NEAREST as the official scripts do. With num_frames, the count must match (a single image is repeated).
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


# --- writing ---------------------------------------------------------------------------------------
def output_path(path):
    """A local pathlib.Path, or an etils.epath.Path for a remote path (gs://...): what outputs are written to."""
    if is_remote(path):
        from etils import epath

        return epath.Path(path)
    return Path(path)


def check_writable(path) -> None:
    """OutputError unless the file or folder `path` could be created, checked before any work is done: the
    nearest existing ancestor must be a writable folder. Remote paths are checked when written."""
    if is_remote(path):
        return
    path = Path(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot write {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: the folder {folder} is not writable (permission denied)")


def _make_parents(folder: Path, target) -> list[Path]:
    """Create `folder` and its missing parents; returns the folders created (outermost first)."""
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_empty(missing[::-1])
        raise OutputError(f"cannot write {target}: cannot create the folder {folder} ({e.strerror or e})") from None
    return missing[::-1]


def _remove_empty(folders: list[Path]):
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


def _copy_file(src: Path, dest) -> None:
    with open(src, "rb") as fin, dest.open("wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def _commit(tmp: Path, target, replace: bool, scratch: Path, remote: bool) -> None:
    if remote:  # through epath only: each object appears whole when its upload completes
        if tmp.is_dir():
            if replace and target.exists():
                target.rmtree()
            for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
                dest = target / f.relative_to(tmp).as_posix()
                dest.parent.mkdir(parents=True, exist_ok=True)
                _copy_file(f, dest)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy_file(tmp, target)
        return
    if tmp.is_dir():
        if target.is_dir() and not target.is_symlink() and not replace:  # merge: the folder's other files stay
            for entry in sorted(tmp.iterdir()):
                dest = target / entry.name
                if dest.is_dir() and not dest.is_symlink():
                    shutil.rmtree(dest)
                os.replace(entry, dest)
            return
        if target.exists() or target.is_symlink():
            os.replace(target, scratch / ".replaced")  # removed with the scratch folder
        os.replace(tmp, target)
        return
    if target.is_dir() and not target.is_symlink():
        raise OutputError(f"cannot write the file {target}: a folder of that name exists")
    os.replace(tmp, target)


@contextlib.contextmanager
def atomic_output(path, replace: bool = False) -> Iterator[Path]:
    """Write the file or folder `path` so that it appears complete or not at all.

        with atomic_output("out.mp4") as tmp:      # tmp: a local pathlib.Path named out.mp4 (suffix kept)
            write_video(tmp, frames)               # or create a folder at tmp and fill it

    tmp lies in a fresh temporary folder: next to `path` for a local path (same filesystem, so the move is an
    os.replace), in the local temporary directory for a remote one (gs://..., written by streaming copies
    through etils.epath). When the block ends normally, tmp is moved into place: a file replaces the file; a
    folder is renamed into place, or merged into an existing folder of that name (its files replaced, other
    files kept) unless replace=True, which swaps the whole folder. Writing nothing at tmp writes nothing. On an
    exception nothing is moved, the temporary folder is removed, so are the folders created for the output,
    and the exception propagates. Missing parent folders are created; OutputError if that is impossible.
    """
    target = output_path(path)
    remote = is_remote(path)
    created: list[Path] = []
    if remote:
        scratch = Path(tempfile.mkdtemp(prefix="ecformer-output-"))
    else:
        created = _make_parents(target.parent, target)
        try:
            scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        except OSError as e:
            _remove_empty(created)
            raise OutputError(f"cannot write {target}: {e.strerror or e}") from None
    tmp = scratch / target.name
    try:
        try:
            yield tmp
            if tmp.exists():
                _commit(tmp, target, replace, scratch, remote)
        except OSError as e:  # a full disk, a permission, ...: named by the output, not the temporary
            raise OutputError(f"cannot write {target}: {e.strerror or e}") from e
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        _remove_empty(created)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_frames(folder: str | os.PathLike, frames: np.ndarray, prefix: str = "", ext: str = ".png") -> Path:
    """Frames as folder/{prefix}00000{ext}, ... written in place (no temporary: wrap it in `atomic_output`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(np.asarray(f, np.uint8)).save(folder / f"{prefix}{i:05d}{ext}")
    return folder


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 24.0, atomic: bool = True):
    """Write uint8 frames (T, H, W, 3) as an H.264 mp4 (or any format imageio infers from the suffix), through
    `atomic_output`: an interrupted write never leaves a truncated video. A local or remote (epath) path.
    atomic=False writes `path` (local) directly: for a path that is already the temporary of an atomic_output.

    H.264 (.mp4, .mov, .mkv, .m4v, .avi) is written as yuv420p, the format every player reads; frames of an odd
    width or height, which yuv420p cannot hold, as yuv444p at their exact size (ffmpeg / VLC / mpv play it, some
    browsers do not). Other formats of odd sizes are padded by one pixel."""
    import imageio.v2 as iio2

    frames = np.asarray(frames, np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoError(f"write_video expects (T, H, W, 3) uint8 frames, got {frames.shape}")
    suffix = Path(os.fspath(path)).suffix.lower()
    odd = frames.shape[1] % 2 or frames.shape[2] % 2
    options = {"quality": 8} if suffix == ".mp4" else {}
    if odd and suffix in _X264_EXTS:
        options["pixelformat"] = "yuv444p"
    elif odd:
        frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)), mode="edge")
    with atomic_output(path) if atomic else contextlib.nullcontext(Path(path)) as tmp:
        with iio2.get_writer(tmp, fps=fps, macro_block_size=1, **options) as w:
            for f in frames:
                w.append_data(f)
    return output_path(path)


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
