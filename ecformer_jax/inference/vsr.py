"""The official VSR-Transformer test protocol for whole videos of any size.

For every frame i of the clip:
* window: the T = num_frames frames centred on i, with BasicSR's `reflection_circle` padding at the
  clip ends (index j < 0 -> i + T//2 - j, j > last -> (i - T//2) - (j - last); T = 5, i = 0 gives
  [4, 3, 0, 1, 2]);
* crops (`forward_crop`, lq_size 64, overlap 32): the LR frame is cut into 64x64 crops at stride 32 along
  each axis, the last crop flush with the border; each crop goes through the network and only its
  centre frame out[:, T//2] is kept; the x4 crops are pasted into a zero canvas in raster order with
  fixed margins (first crop: its first 192 rows / columns, middle crops their [64, 192) band, the last
  crop its [64, 256) band flush with the border), later crops overwriting earlier ones;
* tensor2img: the result is clamped to [0, 1] and rounded to uint8.

Frames stay on the host (numpy); only a batch of crops (B, T, 64, 64, 3) goes to the device, through
one jitted function per batch shape (the last batch is padded). Identical crop positions (a 64-pixel
side yields the same crop twice) are computed once, which changes nothing in the result. The network
reconstructs only the centre frame of each crop (output_frames), which is all the protocol keeps.

    loaded = convert.resolve("net_g_latest.pth", model="vsr_transformer", expect="super_resolution")
    upscaler = VSRUpscaler(loaded.model, loaded.variables)
    for i, hr in upscaler.frames(lr_u8):   # lr_u8 (N, H, W, 3) uint8 -> hr (4H, 4W, 3) uint8 per frame
        ...

Clips shorter than T frames (not covered by the official code, whose indices would leave the clip) are
handled by reflecting the out-of-range indices again until they fall inside the clip.
"""
from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator

import numpy as np

SCALE = 4
LQ_SIZE = 64
OVERLAP = 32


# --- frame windows ---------------------------------------------------------------------------------
def _reflect_into(index: int, length: int) -> int:
    if length == 1:
        return 0
    period = 2 * (length - 1)
    index %= period
    return index if index < length else period - index


def window_indices(center: int, num_frames: int, length: int) -> list[int]:
    """Frame indices of the window centred on `center` (BasicSR generate_frame_indices, reflection_circle)."""
    if not 0 <= center < length:
        raise ValueError(f"window centre {center} outside a clip of {length} frames")
    half, last = num_frames // 2, length - 1
    out = []
    for j in range(center - half, center + half + 1):
        if j < 0:
            k = center + half - j
        elif j > last:
            k = (center - half) - (j - last)
        else:
            k = j
        out.append(k if 0 <= k <= last else _reflect_into(k, length))  # only for clips shorter than T
    return out


# --- crops -----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CropSpan:
    """One crop along one axis: LR [lr_start, lr_start + lq_size) goes through the network; its x4 rows
    [src_start, src_end) are pasted at [dst_start, dst_end) of the output."""

    lr_start: int
    dst_start: int
    dst_end: int
    src_start: int
    src_end: int


def crop_spans(size: int, lq_size: int = LQ_SIZE, overlap: int = OVERLAP, scale: int = SCALE) -> list[CropSpan]:
    """forward_crop's crops along an axis of `size` LR pixels (lr_crop_index / hr_crop_index)."""
    if size < lq_size:
        raise ValueError(f"a frame side of {size} pixels is smaller than the {lq_size}-pixel crops")
    if not 0 <= overlap < lq_size:
        raise ValueError(f"overlap must be in [0, {lq_size}); got {overlap}")
    base = lq_size - overlap
    mod = size % base
    count = size // base + (1 if mod > overlap else 0)
    big, big_mod, big_base, big_overlap = size * scale, mod * scale, base * scale, overlap * scale
    spans = []
    for n in range(count):
        lr_end = size if n == count - 1 else (n + 1) * base + overlap
        if n == 0:
            dst = (0, big_base + (big_overlap // 2 if count > 1 else big_overlap))
            src = dst
        elif n == count - 1:
            src_end = big_base + big_overlap
            if big_mod > big_overlap:
                dst, src = (big - big_mod, big), (src_end - big_mod, src_end)
            else:
                dst, src = (big - big_base - big_overlap // 2, big), (big_overlap // 2, src_end)
        else:
            start = n * big_base + big_overlap // 2
            dst, src = (start, start + big_base), (big_overlap // 2, big_overlap // 2 + big_base)
        spans.append(CropSpan(lr_end - lq_size, *dst, *src))
    return spans


@dataclasses.dataclass(frozen=True)
class CropPlan:
    """All crops of an H x W frame in forward_crop's raster order, and the distinct crop origins."""

    rows: tuple[CropSpan, ...]
    cols: tuple[CropSpan, ...]

    @property
    def origins(self) -> list[tuple[int, int]]:
        """Distinct (y, x) LR crop origins in first-use order."""
        return list(dict.fromkeys((r.lr_start, c.lr_start) for r in self.rows for c in self.cols))

    def paste(self, crops: dict[tuple[int, int], np.ndarray], height: int, width: int) -> np.ndarray:
        """Assemble the x4 frame from {origin: x4 crop (lq*4, lq*4, C)} (zero canvas, later crops win)."""
        first = next(iter(crops.values()))
        out = np.zeros((height * SCALE, width * SCALE, first.shape[-1]), first.dtype)
        for r in self.rows:
            for c in self.cols:
                crop = crops[(r.lr_start, c.lr_start)]
                out[r.dst_start:r.dst_end, c.dst_start:c.dst_end] = crop[r.src_start:r.src_end, c.src_start:c.src_end]
        return out


def crop_plan(height: int, width: int, lq_size: int = LQ_SIZE, overlap: int = OVERLAP) -> CropPlan:
    if height < lq_size or width < lq_size:
        raise ValueError(
            f"frames of {width}x{height} (WxH) are too small: VSR-Transformer works on {lq_size}x{lq_size} LR crops, "
            f"so both sides must be at least {lq_size} pixels")
    return CropPlan(tuple(crop_spans(height, lq_size, overlap)), tuple(crop_spans(width, lq_size, overlap)))


# --- running the network ---------------------------------------------------------------------------
class VSRUpscaler:
    """x4 super-resolution of whole uint8 videos with the official crop protocol.

    model: a VSRTransformer (any num_frames / dtype); variables: its converted variables.
    batch_size: crops per device call (one compiled shape; the last batch is padded).
    """

    def __init__(self, model, variables, batch_size: int = 16, overlap: int = OVERLAP):
        import jax
        import jax.numpy as jnp

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.model = model
        self.num_frames = int(model.num_frames)
        self.lq_size = int(model.feat_size)
        self.batch_size = int(batch_size)
        self.overlap = int(overlap)
        center = self.num_frames // 2

        def run(variables, crops_u8):  # (B, T, lq, lq, 3) uint8 -> (B, 4 lq, 4 lq, 3) uint8
            x = crops_u8.astype(jnp.float32) / 255.0
            sr = model.apply(variables, x, output_frames=(center,))[:, 0]
            return jnp.round(jnp.clip(sr, 0.0, 1.0) * 255.0).astype(jnp.uint8)

        self._run = jax.jit(run)
        self._variables = jax.device_put(variables)

    def frames(self, video: np.ndarray, progress=None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (i, x4 frame uint8 (4H, 4W, 3)) for every frame i of `video` (N, H, W, 3) uint8, in order.

        progress: optional callable(n) called with the number of frames just finished (tqdm.update).
        """
        video = np.asarray(video)
        if video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"video must be (N, H, W, 3) RGB frames; got shape {video.shape}")
        if video.dtype != np.uint8:
            raise ValueError(f"video must be uint8 (0..255); got {video.dtype}")
        n, h, w, _ = video.shape
        if n < 1:
            raise ValueError("the video has no frames")
        plan = crop_plan(h, w, self.lq_size, self.overlap)
        origins = plan.origins
        s = self.lq_size

        def jobs():  # (frame, origin, crop (T, lq, lq, 3) uint8)
            for i in range(n):
                window = video[window_indices(i, self.num_frames, n)]
                for y, x in origins:
                    yield i, (y, x), window[:, y:y + s, x:x + s]

        done: dict[int, dict] = collections.defaultdict(dict)
        next_frame = 0
        pending = collections.deque()  # (keys, device result) in flight
        batch_keys, batch = [], []

        def submit():
            arr = np.stack(batch)
            if len(batch) < self.batch_size:
                arr = np.concatenate([arr, np.zeros((self.batch_size - len(batch), *arr.shape[1:]), arr.dtype)])
            pending.append((list(batch_keys), self._run(self._variables, arr)))
            batch_keys.clear()
            batch.clear()

        def collect():
            nonlocal next_frame
            keys, result = pending.popleft()
            result = np.asarray(result)
            for (i, origin), crop in zip(keys, result):
                done[i][origin] = crop
            while next_frame < n and len(done.get(next_frame, ())) == len(origins):
                crops = done.pop(next_frame)
                yield next_frame, plan.paste(crops, h, w)
                if progress is not None:
                    progress(1)
                next_frame += 1

        for i, origin, crop in jobs():
            batch_keys.append((i, origin))
            batch.append(crop)
            if len(batch) == self.batch_size:
                submit()  # dispatch is asynchronous: the next batch is prepared while this one runs
                if len(pending) > 1:
                    yield from collect()
        if batch:
            submit()
        while pending:
            yield from collect()

    def __call__(self, video: np.ndarray, progress=None) -> np.ndarray:
        """All x4 frames as one (N, 4H, 4W, 3) uint8 array."""
        n, h, w, _ = np.shape(video)
        out = np.zeros((n, SCALE * h, SCALE * w, 3), np.uint8)
        for i, frame in self.frames(video, progress):
            out[i] = frame
        return out
