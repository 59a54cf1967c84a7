"""The training input pipeline: grain, deterministic, sharded per process, resumable.

Design (the trainer relies on it):
* The stream of GLOBAL samples is a pure function of (seed, g), g = 0, 1, 2, ... the global sample index:
  sample g belongs to epoch e = g // num_videos and takes the video at position g % num_videos of the
  epoch's permutation `np.random.default_rng([seed, e]).permutation(num_videos)`; every other random
  choice of the sample (frame indices, mask, flip) comes from `np.random.default_rng([seed, g])`.
* Global batch k holds samples k*global_batch ... (k+1)*global_batch - 1; process p gets the contiguous rows
  p*b_local ... (p+1)*b_local - 1 (b_local = global_batch // process_count). So the global batches are the
  same whatever the number of processes and devices.
* Elements are dicts {"frames": uint8 (b_local, T, H, W, 3), "masks": uint8 (b_local, T, H, W, 1), 1 = hole}.
  The stream never ends (epochs repeat with fresh permutations); the iterator's get_state()/set_state()
  resume it exactly.

Sampling follows the official trainers: 'random_or_consecutive' (STTN, FuseFormer, DSTT: with p = 0.5 a
sorted random subset of num_frames distinct frames, else num_frames consecutive frames at a random start)
and 'local_ref' (E2FGVI: num_local consecutive frames at a random start, then num_ref sorted references
drawn from the other frames; T = num_local + num_ref). The frames (not the masks, as in the official code)
are flipped horizontally with p = 0.5 when data_cfg.flip.

`make_dataset(..., task="sr")` gives super-resolution batches {"lr": uint8 (b_local, T, h, w, 3), "hr": uint8
(b_local, T, 4h, 4w, 3)} with the same global-index design (see SRClipSampler: random HR crops, flips,
rotations, temporal reverse; LR = PIL bicubic x4 downscale of the HR crop).
"""
from __future__ import annotations

from pathlib import Path

import grain
import numpy as np
from absl import logging

from ecformer_jax.data import masks as masks_lib
from ecformer_jax.data.datasets import VideoSource, open_source
from ecformer_jax.data.video_io import IMAGE_EXTS, VIDEO_EXTS, VideoError

SAMPLINGS = ("random_or_consecutive", "local_ref")
MASK_KINDS = ("random_shape", "folder")
TASKS = ("inpainting", "sr", "super_resolution")
_MAX_SKIPS = 20
_ENDLESS = 2**50  # local elements in the (endless) stream


def clip_length(data_cfg) -> int:
    """Frames per sample T for this data config."""
    if data_cfg.sampling == "local_ref":
        return int(data_cfg.num_local) + int(data_cfg.num_ref)
    return int(data_cfg.num_frames)


def global_sample_index(local_index: int, b_local: int, process_index: int, process_count: int) -> int:
    """The global sample g of a process's local element (row `local_index % b_local` of local batch
    `local_index // b_local`)."""
    k, row = divmod(int(local_index), int(b_local))
    return k * b_local * int(process_count) + int(process_index) * b_local + row


def sample_frame_indices(num_video_frames: int, data_cfg, rng: np.random.Generator) -> list[int]:
    """The frame indices of one sample (official sampling rules), drawn from `rng`."""
    n = int(num_video_frames)
    if data_cfg.sampling == "local_ref":
        num_local, num_ref = int(data_cfg.num_local), int(data_cfg.num_ref)
        start = int(rng.integers(0, n - num_local + 1))
        local = list(range(start, start + num_local))
        rest = np.array([t for t in range(n) if not start <= t < start + num_local], np.int64)
        refs = sorted(int(t) for t in rng.choice(rest, size=num_ref, replace=False)) if num_ref else []
        return local + refs
    t = int(data_cfg.num_frames)
    if rng.random() > 0.5:
        return sorted(int(i) for i in rng.choice(n, size=t, replace=False))
    start = int(rng.integers(0, n - t + 1))
    return list(range(start, start + t))


class MaskFolders:
    """Fixed masks from data_cfg.mask_dir: `<mask_dir>/<video>` (a folder, `.zip`, video file or single image)
    per video, or, when mask_dir itself holds mask images, that one mask sequence for every video."""

    def __init__(self, mask_dir: str):
        if not mask_dir:
            raise ValueError("data.masks='folder' needs data.mask_dir (a folder of per-video mask folders)")
        self.root = Path(mask_dir).expanduser()
        if not self.root.is_dir():
            raise VideoError(f"mask_dir not found or not a folder: {self.root}")
        self.shared = any(p.suffix.lower() in IMAGE_EXTS for p in self.root.iterdir() if p.is_file())

    def path(self, video: str) -> Path:
        if self.shared:
            return self.root
        for cand in [self.root / video] + [self.root / f"{video}{ext}" for ext in (".zip",) + VIDEO_EXTS + IMAGE_EXTS]:
            if cand.exists():
                return cand
        raise VideoError(f"no masks for video {video!r} in mask_dir {self.root} (expected {self.root / video}/)")


class ClipSampler:
    """Global sample index g -> {"frames": uint8 (T, H, W, 3), "masks": uint8 (T, H, W, 1)}, a pure function
    of (seed, g). Picklable, so grain can run it in worker processes."""

    def __init__(self, source: VideoSource, data_cfg, seed: int = 0):
        if data_cfg.sampling not in SAMPLINGS:
            raise ValueError(f"unknown data.sampling {data_cfg.sampling!r}; expected one of {SAMPLINGS}")
        if data_cfg.masks not in MASK_KINDS:
            raise ValueError(f"unknown data.masks {data_cfg.masks!r}; expected one of {MASK_KINDS}")
        if data_cfg.sampling == "local_ref" and (int(data_cfg.num_local) < 1 or int(data_cfg.num_ref) < 0):
            raise ValueError(f"local_ref sampling needs num_local >= 1 and num_ref >= 0, got "
                             f"{data_cfg.num_local}, {data_cfg.num_ref}")
        self.source = source
        self.seed = int(seed)
        self.sampling = str(data_cfg.sampling)
        self.num_frames, self.num_local, self.num_ref = int(data_cfg.num_frames), int(data_cfg.num_local), \
            int(data_cfg.num_ref)
        self.length = clip_length(data_cfg)
        if self.length < 1:
            raise ValueError(f"a sample needs at least one frame, got {self.length}")
        self.flip = bool(data_cfg.flip)
        self.skip_bad = bool(data_cfg.skip_bad)
        self.mask_kind = str(data_cfg.masks)
        self.mask_folders = MaskFolders(str(data_cfg.mask_dir)) if self.mask_kind == "folder" else None
        self.height, self.width = source.height, source.width
        self._perm: tuple[int, np.ndarray] | None = None

    def video_for(self, g: int) -> int:
        """The video of global sample g (its epoch's permutation at position g % num_videos)."""
        n = len(self.source)
        epoch, pos = divmod(int(g), n)
        cached = self._perm  # read once: grain threads share this sampler
        if cached is None or cached[0] != epoch:
            cached = (epoch, np.random.default_rng([self.seed, epoch]).permutation(n))
            self._perm = cached
        return int(cached[1][pos])

    def __call__(self, g: int) -> dict[str, np.ndarray]:
        g = int(g)
        video = self.video_for(g)
        for attempt in range(_MAX_SKIPS + 1):
            try:
                return self.sample(video, np.random.default_rng([self.seed, g]))
            except VideoError as e:
                if not self.skip_bad:
                    raise
                alt = int(np.random.default_rng([self.seed, g, attempt + 1]).integers(len(self.source)))
                logging.warning("skipping a bad video for sample %d (skip_bad=True), taking video %r instead: %s",
                            g, self.source.name(alt), e)
                video = alt
        raise VideoError(f"sample {g}: {_MAX_SKIPS + 1} videos in a row failed to load (skip_bad=True); "
                         f"last tried {self.source.name(video)!r} in {self.source.description}")

    def sample(self, video: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One sample of `video` using `rng` for every random choice."""
        src = self.source
        n = src.num_frames(video)
        if n < self.length:
            raise VideoError(f"video {src.name(video)!r} ({src.path(video)}) has {n} frames, fewer than the "
                             f"{self.length} frames a sample needs")
        idx = sample_frame_indices(n, self, rng)
        if self.mask_kind == "random_shape":
            m = masks_lib.random_shape_masks(n, self.height, self.width, rng, frame_indices=idx)
        else:
            mpath = self.mask_folders.path(src.name(video))
            try:
                m = masks_lib.masks_from_folder(mpath, frame_indices=idx, size=(self.width, self.height),
                                                num_frames=n)
            except VideoError as e:
                raise VideoError(f"masks of video {src.name(video)!r}: {e}") from e
        frames = src.read(video, idx)
        if self.flip and rng.random() < 0.5:
            frames = frames[:, :, ::-1]
        return {"frames": np.ascontiguousarray(frames, np.uint8),
                "masks": np.ascontiguousarray(m, np.uint8)[..., None]}


class SRClipSampler(ClipSampler):
    """Super-resolution samples: global sample index g -> {"lr": uint8 (T, h, w, 3), "hr": uint8 (T, s*h,
    s*w, 3)}, a pure function of (seed, g) like ClipSampler (same per-epoch video permutation).

    Official recipe (BasicSR REDSDataset / Vimeo90KDataset with all_gt): num_frames frames at a random start
    with step data.interval; a random gt_size x gt_size HR crop (its corner on the x`scale` LR grid), the same
    for every frame; then random temporal reverse (data.random_reverse), horizontal flip (data.flip),
    vertical flip and transpose (data.rotate), each with p = 0.5. The LR input is degraded on the fly: each
    HR crop is downscaled x`scale` with PIL's BICUBIC filter (antialiased, close to MATLAB imresize, which
    made REDS sharp_bicubic; the official loader reads LR frames made from the whole frame instead, which
    differs only within a few pixels of the crop border)."""

    def __init__(self, source: VideoSource, data_cfg, seed: int = 0):
        self.source = source
        self.seed = int(seed)
        self.num_frames = int(data_cfg.num_frames)
        self.interval = int(getattr(data_cfg, "interval", 1))
        self.scale = int(getattr(data_cfg, "scale", 4))
        self.gt_size = int(getattr(data_cfg, "gt_size", 256))
        self.flip = bool(data_cfg.flip)
        self.rotate = bool(getattr(data_cfg, "rotate", True))
        self.random_reverse = bool(getattr(data_cfg, "random_reverse", True))
        self.skip_bad = bool(data_cfg.skip_bad)
        self.height, self.width = source.height, source.width
        self.length = self.num_frames
        self._perm = None
        if self.num_frames < 1 or self.interval < 1 or self.scale < 1:
            raise ValueError(f"super-resolution data needs num_frames, interval, scale >= 1; got "
                             f"{self.num_frames}, {self.interval}, {self.scale}")
        if self.gt_size < self.scale or self.gt_size % self.scale:
            raise ValueError(f"data.gt_size={self.gt_size} must be a positive multiple of data.scale={self.scale}")
        if self.gt_size > min(self.height, self.width):
            raise ValueError(f"data.gt_size={self.gt_size} is bigger than the {self.width}x{self.height} frames "
                             "(data.width x data.height): lower gt_size or raise the frame size")

    def sample(self, video: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        src = self.source
        n = src.num_frames(video)
        span = (self.num_frames - 1) * self.interval + 1
        if n < span:
            raise VideoError(f"video {src.name(video)!r} ({src.path(video)}) has {n} frames, fewer than the "
                             f"{span} frames a sample needs")
        start = int(rng.integers(0, n - span + 1))
        s, lq = self.scale, self.gt_size // self.scale
        top = int(rng.integers(0, self.height // s - lq + 1)) * s
        left = int(rng.integers(0, self.width // s - lq + 1)) * s
        reverse, hflip, vflip, transpose = (rng.random(4) < 0.5).tolist()
        hr = src.read(video, range(start, start + span, self.interval))
        hr = hr[:, top:top + self.gt_size, left:left + self.gt_size]
        if self.random_reverse and reverse:
            hr = hr[::-1]
        if self.flip and hflip:
            hr = hr[:, :, ::-1]
        if self.rotate and vflip:
            hr = hr[:, ::-1]
        if self.rotate and transpose:
            hr = hr.transpose(0, 2, 1, 3)
        hr = np.ascontiguousarray(hr, np.uint8)
        return {"lr": bicubic_downscale(hr, s), "hr": hr}


def bicubic_downscale(frames: np.ndarray, scale: int = 4) -> np.ndarray:
    """uint8 (T, H, W, 3) -> (T, H // scale, W // scale, 3) with PIL BICUBIC (antialiased)."""
    from PIL import Image

    from ecformer_jax.data.video_io import resize

    h, w = frames.shape[1:3]
    return np.stack([resize(np.ascontiguousarray(f), (w // scale, h // scale), Image.BICUBIC) for f in frames])


class _LocalToGlobal:
    def __init__(self, sampler: ClipSampler, b_local: int, process_index: int, process_count: int):
        self.sampler, self.b_local = sampler, b_local
        self.process_index, self.process_count = process_index, process_count

    def __call__(self, local_index):
        return self.sampler(global_sample_index(local_index, self.b_local, self.process_index, self.process_count))


class _Indices:
    """An endless random-access 'data source' whose element i is i."""

    def __len__(self):
        return _ENDLESS

    def __getitem__(self, i):
        if not 0 <= i < _ENDLESS:
            raise IndexError(i)
        return int(i)

    def __repr__(self):
        return "LocalSampleIndices()"


def make_dataset(data_cfg, global_batch: int, process_index: int = 0, process_count: int = 1,
                 seed: int = 0, source: VideoSource | None = None, task: str = "inpainting") -> grain.IterDataset:
    """The endless grain IterDataset of this process's local batches (see the module doc).

    source: an already opened VideoSource (default: open_source(data_cfg)).
    task: 'inpainting' ({"frames", "masks"} batches) or 'sr' / 'super_resolution' ({"lr", "hr"} batches,
    see SRClipSampler); the same deterministic global-index design either way.
    """
    if task not in TASKS:
        raise ValueError(f"unknown data task {task!r}; expected one of {TASKS}")
    global_batch, process_count, process_index = int(global_batch), int(process_count), int(process_index)
    if global_batch < 1 or process_count < 1:
        raise ValueError(f"global_batch and process_count must be >= 1, got {global_batch}, {process_count}")
    if global_batch % process_count:
        raise ValueError(f"the global batch {global_batch} is not divisible by the {process_count} processes; "
                         "choose batch_size as a multiple of the process count")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} out of range for {process_count} processes")
    b_local = global_batch // process_count
    sampler_cls = ClipSampler if task == "inpainting" else SRClipSampler
    sampler = sampler_cls(source if source is not None else open_source(data_cfg), data_cfg, seed)
    num_threads = max(int(data_cfg.num_threads), 0)
    ds = (grain.MapDataset.source(_Indices())
          .map(_LocalToGlobal(sampler, b_local, process_index, process_count))
          .batch(b_local, drop_remainder=True)
          .to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(num_threads, 1) * 2)))
    if int(data_cfg.num_workers) > 0:
        _ensure_absl_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(data_cfg.num_workers)))
    return ds


def _ensure_absl_flags_parsed():
    """grain's worker processes read absl flags; outside an absl app (pytest, notebooks) nothing parsed
    them, so accept their defaults (a no-op when the entry point already parsed the command line)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


__all__ = ["make_dataset", "ClipSampler", "MaskFolders", "sample_frame_indices", "global_sample_index",
           "clip_length", "SAMPLINGS", "MASK_KINDS", "SRClipSampler", "bicubic_downscale", "TASKS"]
