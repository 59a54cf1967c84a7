"""Video sources with random access, for the training pipeline.

`open_source(data_cfg)` turns the `data` part of the training config into a `VideoSource`: a list of
videos, each with a name and a frame count, from which any frames can be read, resized to
(data_cfg.width, data_cfg.height) with PIL's bicubic filter (the official trainers' default filter).

Layouts (data_cfg.layout; 'auto' picks one from what is on disk):
  frames   <root>/[JPEGImages/]<video>/<frame>.jpg|png  (YouTube-VOS, DAVIS); a folder of images is one video
  zip      <root>/[JPEGImages/]<video>.zip of frames + split_json {video: frame count} (the official layout)
  videos   <root>/*.mp4 (any video suffix), or a single video file
  tfds     <root> = a TFDS data dir written by `ecformer_jax.data.tfds` (ArrayRecord, uint8 frames)
  ''       (empty path) synthetic clips: synthetic_videos videos of synthetic_length frames
A bad video (empty folder, unreadable frame, wrong count) raises a VideoError that names the file and
the video.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ecformer_jax.data import video_io
from ecformer_jax.data.synthetic import synthetic_clip
from ecformer_jax.data.video_io import IMAGE_EXTS, VIDEO_EXTS, VideoError
from ecformer_jax.paths import is_remote

LAYOUTS = ("auto", "frames", "zip", "videos", "tfds", "synthetic")


class VideoSource:
    """Random access to the frames of a list of videos (subclasses implement `_read`)."""

    width: int
    height: int

    def __init__(self, names: list[str], width: int, height: int, description: str):
        if not names:
            raise VideoError(f"no videos found in {description}")
        if width < 1 or height < 1:
            raise ValueError(f"frame size must be positive, got width={width}, height={height}")
        self.names = list(names)
        self.width, self.height = int(width), int(height)
        self.description = description
        self._lengths: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} videos from {self.description}, {self.width}x{self.height})"

    def name(self, i: int) -> str:
        return self.names[self._check(i)]

    def path(self, i: int) -> str:
        """Where video i lives (for error messages)."""
        return self.name(i)

    def num_frames(self, i: int) -> int:
        i = self._check(i)
        if i not in self._lengths:
            try:
                n = self._num_frames(i)
            except VideoError as e:
                raise VideoError(f"video {self.names[i]!r}: {e}") from e
            if n < 1:
                raise VideoError(f"video {self.names[i]!r} ({self.path(i)}) has no frames")
            self._lengths[i] = n
        return self._lengths[i]

    def read(self, i: int, frame_indices) -> np.ndarray:
        """Frames `frame_indices` of video i -> uint8 (len, height, width, 3)."""
        i = self._check(i)
        idx = [int(t) for t in frame_indices]
        n = self.num_frames(i)
        bad = [t for t in idx if not 0 <= t < n]
        if bad:
            raise VideoError(f"video {self.names[i]!r} ({self.path(i)}) has {n} frames; "
                             f"cannot read frame(s) {bad[:5]}")
        try:
            frames = self._read(i, idx)
        except VideoError as e:
            raise VideoError(f"video {self.names[i]!r}: {e}") from e
        return _to_size(frames, self.width, self.height)

    def _check(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < len(self.names):
            raise IndexError(f"video index {i} out of range for {len(self.names)} videos")
        return i

    def _num_frames(self, i: int) -> int:
        raise NotImplementedError

    def _read(self, i: int, indices: list[int]) -> np.ndarray:
        raise NotImplementedError


def _to_size(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoError(f"expected frames (T, H, W, 3), got shape {frames.shape}")
    if frames.shape[1:3] == (height, width):
        return frames.astype(np.uint8, copy=False)
    return np.stack([video_io.resize(f, (width, height), Image.BICUBIC) for f in frames])


class FrameFolderSource(VideoSource):
    """Each video is a folder of image files (sorted by name)."""

    def __init__(self, folders: list[Path], width: int, height: int, counts: dict[str, int] | None = None,
                 description: str = ""):
        super().__init__([f.name for f in folders], width, height, description or str(folders[0].parent
                                                                                       if folders else "?"))
        self.folders = list(folders)
        self.counts = counts or {}
        self._files: dict[int, list[Path]] = {}

    def path(self, i):
        return str(self.folders[self._check(i)])

    def _list(self, i):
        if i not in self._files:
            self._files[i] = video_io.list_images(self.folders[i])
        return self._files[i]

    def _num_frames(self, i):
        if self.counts.get(self.names[i], -1) >= 0:
            return int(self.counts[self.names[i]])
        return len(self._list(i))

    def _read(self, i, indices):
        files = self._list(i)
        bad = [t for t in indices if t >= len(files)]
        if bad:
            raise VideoError(f"{self.folders[i]} has {len(files)} frames; cannot read frame(s) {bad[:5]}")
        return np.stack([video_io.read_image(files[t]) for t in indices])


class ZipSource(VideoSource):
    """Each video is a zip of frames (the official STTN / FuseFormer / E2FGVI data layout)."""

    def __init__(self, zips: list[Path], width: int, height: int, counts: dict[str, int] | None = None,
                 description: str = ""):
        super().__init__([z.stem for z in zips], width, height, description or str(zips[0].parent if zips else "?"))
        self.zips = list(zips)
        self.counts = counts or {}

    def path(self, i):
        return str(self.zips[self._check(i)])

    def _num_frames(self, i):
        if self.counts.get(self.names[i], -1) >= 0:
            return int(self.counts[self.names[i]])
        return video_io.video_length(self.zips[i])

    def _read(self, i, indices):
        return video_io.read_frames(self.zips[i], indices=indices)


class VideoFileSource(VideoSource):
    """Each video is a video file (decoded whole on every read: fine for small sets; convert large data
    sets to frame folders or TFDS for speed)."""

    def __init__(self, files: list[Path], width: int, height: int, description: str = ""):
        super().__init__([f.stem for f in files], width, height, description or str(files[0].parent if files else "?"))
        self.files = list(files)

    def path(self, i):
        return str(self.files[self._check(i)])

    def _num_frames(self, i):
        return video_io.video_length(self.files[i])

    def _read(self, i, indices):
        return video_io.read_frames(self.files[i], indices=indices)


class SyntheticSource(VideoSource):
    """`num_videos` synthetic clips (video i = synthetic_clip(seed=i)), rendered at the target size."""

    def __init__(self, num_videos: int, length: int, width: int, height: int):
        if num_videos < 1 or length < 1:
            raise ValueError(f"synthetic data needs synthetic_videos >= 1 and synthetic_length >= 1, "
                             f"got {num_videos} and {length}")
        super().__init__([f"synthetic_{i:04d}" for i in range(num_videos)], width, height,
                         f"synthetic clips ({num_videos} x {length} frames)")
        self.length = int(length)

    def path(self, i):
        return f"<synthetic clip {self._check(i)}>"

    def _num_frames(self, i):
        return self.length

    def _read(self, i, indices):
        return synthetic_clip(self.length, self.height, self.width, seed=i, frame_indices=indices)


class TfdsSource(VideoSource):
    """Frames stored by the `video_inpainting` TFDS builder (one ArrayRecord record per frame)."""

    def __init__(self, data_dir: str | os.PathLike, width: int, height: int, split: str = "train"):
        self.split = split
        self._ds, meta, self.dataset_dir = load_frame_source(data_dir, width, height, split)
        super().__init__(list(meta["names"]), width, height, f"TFDS {self.dataset_dir} ({split})")
        self.starts = [int(s) for s in meta["starts"]]
        self.counts = [int(c) for c in meta["counts"]]

    def __getstate__(self):  # the ArrayRecord reader is reopened in worker processes
        state = dict(self.__dict__)
        state["_ds"] = None
        return state

    def path(self, i):
        return f"{self.dataset_dir}[{self.names[self._check(i)]}]"

    def _num_frames(self, i):
        return self.counts[i]

    def _read(self, i, indices):
        if self._ds is None:
            self._ds = open_data_source(self.dataset_dir, self.split)
        records = [self._ds[self.starts[i] + t] for t in indices]
        for t, r in zip(indices, records):
            if int(r["video_index"]) != i or int(r["frame_index"]) != t:
                raise VideoError(f"TFDS record {self.starts[i] + t} holds video {int(r['video_index'])} frame "
                                 f"{int(r['frame_index'])}, expected video {i} frame {t}; the data set is corrupt")
        return np.stack([np.asarray(r["frame"], np.uint8) for r in records])


# --- reading the TFDS layout (the builder that writes it is ecformer_jax.data.tfds) ----------------------------
TFDS_DATASET_NAME = "video_inpainting"


def import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError("the TFDS layout needs `pip install tensorflow-datasets importlib_resources` "
                          "(TensorFlow is not needed)") from e
    return tfds


def find_dataset_dir(data_dir: str | os.PathLike, width: int, height: int) -> Path:
    """The generated dataset folder under a TFDS data dir: `<data_dir>/video_inpainting/<W>x<H>/<version>`,
    or `data_dir` itself when it holds dataset_info.json; the config matching width x height is preferred,
    else the only one there."""
    root = Path(data_dir)
    if (root / "dataset_info.json").exists():
        return root
    found = sorted(p.parent for p in root.glob(f"{TFDS_DATASET_NAME}/*/*/dataset_info.json"))
    if not found:
        found = sorted(p.parent for p in root.glob("*/*/dataset_info.json"))  # data_dir/video_inpainting
    if not found:
        raise VideoError(f"no {TFDS_DATASET_NAME} TFDS data set under {root} (build one with "
                         "ecformer_jax.data.tfds.build)")
    match = [p for p in found if p.parent.name == f"{width}x{height}"]
    if match:
        return match[-1]  # newest version
    configs = sorted({p.parent.name for p in found})
    if len(configs) == 1:
        return found[-1]
    raise VideoError(f"TFDS data dir {root} holds configs {configs}, none for {width}x{height}")


def open_data_source(dataset_dir: str | os.PathLike, split: str = "train"):
    tfds = import_tfds()
    builder = tfds.builder_from_directory(str(dataset_dir))
    return builder.as_data_source(split=split)


def load_frame_source(data_dir: str | os.PathLike, width: int, height: int, split: str = "train"):
    """(random-access records, {"names", "starts", "counts"}, dataset folder) of a built data set."""
    tfds = import_tfds()
    ddir = find_dataset_dir(data_dir, width, height)
    builder = tfds.builder_from_directory(str(ddir))
    meta = dict(builder.info.metadata or {})
    if not all(k in meta for k in ("names", "starts", "counts")):
        raise VideoError(f"{ddir} was not written by the {TFDS_DATASET_NAME} builder (metadata lacks video names)")
    if split not in builder.info.splits:
        raise VideoError(f"{ddir} has no split {split!r}; it has {list(builder.info.splits)}")
    return builder.as_data_source(split=split), meta, ddir


# ----------------------------------------------------------------------------------------------------------
def open_source(data_cfg) -> VideoSource:
    """The VideoSource described by the `data` config (see ecformer_jax/data/config.py)."""
    path = str(getattr(data_cfg, "path", "") or "")
    layout = str(getattr(data_cfg, "layout", "auto") or "auto")
    width, height = int(data_cfg.width), int(data_cfg.height)
    split_json = str(getattr(data_cfg, "split_json", "") or "")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown data layout {layout!r}; expected one of {LAYOUTS}")
    if not path or layout == "synthetic":
        return SyntheticSource(int(data_cfg.synthetic_videos), int(data_cfg.synthetic_length), width, height)
    if is_remote(path):
        raise VideoError(f"data path {path}: the data readers open local files only (ArrayRecord's reader too); "
                         "mount the bucket (Cloud Storage FUSE: gcsfuse BUCKET /gcs/BUCKET) and pass the mounted path")
    root = Path(path).expanduser()
    if not root.exists():
        raise VideoError(f"data path not found: {root}")
    if layout == "tfds":
        return TfdsSource(root, width, height)
    counts = _load_split(split_json, root)

    if root.is_file():
        if root.suffix.lower() in VIDEO_EXTS and layout in ("auto", "videos"):
            return VideoFileSource([root], width, height, str(root))
        if root.suffix.lower() == ".zip" and layout in ("auto", "zip"):
            return ZipSource([root], width, height, counts, str(root))
        raise VideoError(f"data path {root} is a file but not a video file ({', '.join(VIDEO_EXTS)}) or zip "
                         f"for layout {layout!r}")
    base = root / "JPEGImages" if (root / "JPEGImages").is_dir() else root
    entries = sorted(p for p in base.iterdir() if not p.name.startswith("."))
    zips = [p for p in entries if p.is_file() and p.suffix.lower() == ".zip"]
    dirs = [p for p in entries if p.is_dir()]
    images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
    videos = [p for p in entries if p.is_file() and p.suffix.lower() in VIDEO_EXTS]
    if layout == "auto":
        layout = "zip" if zips else "frames" if (images or dirs) else "videos" if videos else ""
        if not layout:
            raise VideoError(f"no videos found in {base}: expected frame folders, <video>.zip files or video "
                             f"files ({', '.join(VIDEO_EXTS)})")
    if layout == "frames":
        if images and not dirs:
            return FrameFolderSource([base], width, height, counts, str(base))
        folders = _select(dirs, counts, base, "frame folder", lambda p: p.name)
        return FrameFolderSource(folders, width, height, counts, str(base))
    if layout == "zip":
        zips = _select(zips, counts, base, "zip file", lambda p: p.stem)
        return ZipSource(zips, width, height, counts, str(base))
    videos = _select(videos, counts, base, "video file", lambda p: p.stem)
    return VideoFileSource(videos, width, height, str(base))


def _load_split(split_json: str, root: Path) -> dict[str, int] | None:
    if not split_json:
        return None
    p = Path(split_json).expanduser()
    if not p.is_absolute() and not p.exists():
        p = (root if root.is_dir() else root.parent) / split_json
    if not p.exists():
        raise VideoError(f"split file not found: {split_json} (also looked in {p.parent})")
    try:
        with open(p) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise VideoError(f"cannot read split file {p}: {e}") from e
    if isinstance(data, list):
        return {str(k): -1 for k in data}  # names only: the frame counts are taken from disk
    if not isinstance(data, dict):
        raise VideoError(f"split file {p} must hold {{video: frame count}} or a list of video names")
    return {str(k): int(v) for k, v in data.items()}


def _select(items: list[Path], counts: dict[str, int] | None, base: Path, what: str, key) -> list[Path]:
    """The videos named by the split file (every one found when there is none), sorted by name."""
    if counts is None:
        if not items:
            raise VideoError(f"no {what}s found in {base}")
        return items
    by_name = {key(p): p for p in items}
    missing = [n for n in counts if n not in by_name]
    if missing:
        raise VideoError(f"{len(missing)} video(s) of the split file are missing in {base}, e.g. "
                         f"{missing[:3]} (no such {what})")
    return [by_name[n] for n in sorted(counts)]


__all__ = ["VideoSource", "FrameFolderSource", "ZipSource", "VideoFileSource", "SyntheticSource", "TfdsSource",
           "open_source", "LAYOUTS", "find_dataset_dir", "open_data_source",
           "load_frame_source", "TFDS_DATASET_NAME"]
