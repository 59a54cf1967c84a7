"""The official long-video inpainting protocol of STTN / FuseFormer / DSTT / E2FGVI, for any generator.

It follows the official test scripts: test.py of researchmm/STTN, ruiliu-ai/FuseFormer, ruiliu-ai/DSTT
and MCG-NKU/E2FGVI. All four share one protocol; they differ in the frame size they run at and in how
E2FGVI is told which frames are local:

* masks: binarised (> 0) at the processing size, then dilated `mask_dilation` = 4 times with the 3x3
  cross (cv2.dilate); input = frames / 255 * 2 - 1, holes set to 0;
* windows: for f = 0, s, 2s, ... (neighbour stride s = 5) the neighbours [max(0, f - s), min(N, f + s + 1))
  (up to 11 consecutive frames) followed by the reference frames: every multiple of `ref_stride` = 10
  that is not a neighbour; one model call on [neighbours + references], E2FGVI with
  num_local_frames = the number of neighbours; only the neighbours' outputs are used;
* per neighbour frame: pred = (out + 1) / 2 * 255 truncated to uint8, composited
  pred * mask + frame * (1 - mask); a frame already filled by an earlier window becomes
  0.5 * old + 0.5 * new in float32 (window order, so 3 windows weigh 0.25 / 0.25 / 0.5); at the end
  every frame is truncated to uint8;
* size: STTN / FuseFormer / DSTT / E2FGVI resize the frames to 432x240 (PIL bicubic, masks NEAREST);
  E2FGVI-HQ keeps the native size, mirror-pads the masked window at the bottom / right to multiples of
  (60, 108) and crops the output back. Generators without a fixed size (mixers, ECFormer, FuseFormer
  built with resize_embeddings=True) keep the native size, padded to multiples of 4.

Each generator's registry entry holds its rules, declared in its model file: `models.get(name).protocol`
(a ProtocolDefaults: script family, strides, dilation, local frames) and `models.get(name).size_rule(model)`;
the mixer generators and ECFormer declare FuseFormer's. Departures from the scripts, all for long or large
videos:

* `subvideo_length` (default 80): reference frames are drawn from the `subvideo_length` frames around
  each window (the range [f - L/2, f + L/2) shifted to lie inside the video) instead of the whole
  video, so the window - and the device memory - stays bounded however long the video is. Videos of
  at most L frames get exactly the official references; 0 / None restores whole-video references.
* fixed-size models: the result is resized back to the input size (PIL bicubic) and composited with
  the original frames using the input-size mask (the original mask dilated, united with the
  processing mask brought back by NEAREST), so pixels outside the holes are the input's, exactly.
* STTN's script runs its encoder once on all frames; here the whole model runs per window (the
  encoder is per frame, so the result is the same; the video never has to fit on the device).

The video stays on the host (numpy); one window (T, h, w, 3) uint8 at a time goes to the device
(the next one is dispatched while the host composites the previous), through one jitted function,
`run_window`. It compiles once per window shape: for most models the window length alone (a long
video has 2-4 lengths, the shorter windows at its ends), for E2FGVI (length, number of neighbours).

    inpainter = Inpainter("e2fgvi_hq", model, variables)
    result = inpainter(frames_u8, masks_bool)       # (N, H, W, 3) uint8, (N, H, W) bool
    result.frames, result.masks, result.stats
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ecformer_jax import models
from ecformer_jax.layers.padding import pad_to_multiple
from ecformer_jax.models.registry import ProtocolDefaults, SizeRule

# the scripts' settings (the defaults of ProtocolDefaults; a generator's entry may declare others)
NEIGHBOR_STRIDE = ProtocolDefaults.neighbor_stride
REF_STRIDE = ProtocolDefaults.ref_stride
MASK_DILATION = ProtocolDefaults.mask_dilation
SUBVIDEO_LENGTH = 80


# --- windows -----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Window:
    """One model call: the local `neighbors` (consecutive frames), then the distant `refs`."""

    center: int
    neighbors: tuple[int, ...]
    refs: tuple[int, ...]

    @property
    def frames(self) -> tuple[int, ...]:
        return self.neighbors + self.refs

    @property
    def num_local(self) -> int:
        return len(self.neighbors)


def neighbor_ids(f: int, neighbor_stride: int, num_frames: int) -> tuple[int, ...]:
    return tuple(range(max(0, f - neighbor_stride), min(num_frames, f + neighbor_stride + 1)))


def reference_range(f: int, num_frames: int, subvideo_length: int | None) -> tuple[int, int]:
    """[lo, hi): the frames references are drawn from (the whole video when it fits in the subvideo)."""
    if not subvideo_length or subvideo_length >= num_frames:
        return 0, num_frames
    lo = min(max(0, f - subvideo_length // 2), num_frames - subvideo_length)
    return lo, lo + subvideo_length


def ref_ids(f: int, neighbors: Sequence[int], num_frames: int, ref_stride: int = REF_STRIDE,
            subvideo_length: int | None = None) -> tuple[int, ...]:
    """Every multiple of ref_stride in the reference range that is not a neighbour (num_ref = -1)."""
    lo, hi = reference_range(f, num_frames, subvideo_length)
    first = -(-lo // ref_stride) * ref_stride
    neighbors = set(neighbors)
    return tuple(i for i in range(first, hi, ref_stride) if i not in neighbors)


def schedule(num_frames: int, neighbor_stride: int = NEIGHBOR_STRIDE, ref_stride: int = REF_STRIDE,
             subvideo_length: int | None = SUBVIDEO_LENGTH) -> list[Window]:
    """The windows of the official loop `for f in range(0, N, neighbor_stride)`, in order."""
    for what, v in (("neighbor_stride", neighbor_stride), ("ref_stride", ref_stride)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{what} must be a positive integer; got {v!r}")
    if subvideo_length is not None and subvideo_length < 0:
        raise ValueError(f"subvideo_length must be >= 0 (0 = the whole video); got {subvideo_length}")
    if num_frames < 1:
        raise ValueError("the video has no frames")
    out = []
    for f in range(0, num_frames, neighbor_stride):
        nb = neighbor_ids(f, neighbor_stride, num_frames)
        out.append(Window(f, nb, ref_ids(f, nb, num_frames, ref_stride, subvideo_length)))
    return out


def check_frame_range(frame_range: tuple[int, int | None] | None, num_frames: int) -> tuple[int, int]:
    """[start, end) of a video of num_frames frames (None: all of them); ValueError when it is empty or outside."""
    if frame_range is None:
        return 0, num_frames
    lo, hi = frame_range
    hi = num_frames if hi is None else hi
    if not 0 <= lo < hi <= num_frames:
        raise ValueError(f"--frames {lo}:{hi} is not a non-empty range of the video's {num_frames} frames "
                         f"(0:{num_frames} is all of them)")
    return lo, hi


def parse_frame_range(text: str | None) -> tuple[int | None, int | None] | None:
    """'START:END' (either may be left out: '10:', ':40') -> (start, end) with None for a missing end."""
    if text is None:
        return None
    try:
        lo, hi = text.split(":")
        return (int(lo) if lo.strip() else 0), (int(hi) if hi.strip() else None)
    except ValueError:
        raise ValueError(f"--frames must be START:END (frame numbers from 0, END excluded); got {text!r}") from None


def last_window(windows: Sequence[Window], num_frames: int, wanted: Sequence[int] | None = None) -> list[int]:
    """For every frame, the index of the last window whose neighbours contain it (then it is final); -1 for a
    frame no window visits, an error for such a frame among `wanted` (default: all)."""
    last = [-1] * num_frames
    for k, w in enumerate(windows):
        for i in w.neighbors:
            last[i] = k
    missing = [i for i in (range(num_frames) if wanted is None else wanted) if last[i] < 0]
    if missing:
        raise ValueError(f"the windows never visit frame(s) {missing[:10]}")
    return last


# --- sizes (a generator's SizeRule comes from its registry entry) ------------------------------------------
@dataclasses.dataclass(frozen=True)
class Geometry:
    original: tuple[int, int]  # (H, W) of the video
    size: tuple[int, int]  # processing size: frames resized to it when it differs from the original
    padded: tuple[int, int]  # size the model sees (mirror padding at the bottom / right)

    @property
    def resized(self) -> bool:
        return self.size != self.original

    @property
    def pad(self) -> bool:
        return self.padded != self.size


def _round_up(n: int, m: int) -> int:
    return n + (m - n % m) % m


def plan_geometry(rule: SizeRule, original: tuple[int, int], resize: tuple[int, int] | None = None,
                  resize_ratio: float = 1.0) -> Geometry:
    """resize: (H, W) to process at (overrides the rule's size); resize_ratio: scale the video's size
    (for models that run at any size; fixed-size models refuse it - use resize)."""
    original = (int(original[0]), int(original[1]))
    if resize is not None:
        size = (int(resize[0]), int(resize[1]))
        if min(size) < 1:
            raise ValueError(f"resize size must be positive; got {size[1]}x{size[0]} (WxH)")
    elif resize_ratio != 1.0:
        if not resize_ratio > 0:
            raise ValueError(f"resize_ratio must be > 0; got {resize_ratio}")
        if rule.fixed is not None:
            fh, fw = rule.fixed
            raise ValueError(f"this model runs at its fixed size {fw}x{fh} (WxH), so a resize ratio does not "
                             "apply; choose the processing size with resize (--resize WxH) instead")
        size = (max(1, round(original[0] * resize_ratio)), max(1, round(original[1] * resize_ratio)))
    else:
        size = tuple(rule.fixed) if rule.fixed is not None else original
    mh, mw = rule.multiple
    return Geometry(original, size, (_round_up(size[0], mh), _round_up(size[1], mw)))


# --- host-side pieces ----------------------------------------------------------------------------------
def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (N, H, W, 3) -> (N, h, w, 3) with PIL bicubic, as the official scripts resize."""
    from PIL import Image

    from ecformer_jax.data.video_io import resize

    h, w = size
    if frames.shape[1:3] == (h, w):
        return frames
    return np.stack([resize(f, (w, h), Image.BICUBIC) for f in frames])


def resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool (N, H, W) -> (N, h, w) with NEAREST."""
    from PIL import Image

    h, w = size
    if masks.shape[1:3] == (h, w):
        return masks
    return np.stack([np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0
                     for m in masks])


def check_video_arrays(frames, masks) -> tuple[np.ndarray, np.ndarray]:
    """(frames (N, H, W, 3) uint8, masks (N, H, W)) as numpy arrays; masks (N, H, W, 1) are squeezed. A
    ValueError names what does not fit."""
    frames, masks = np.asarray(frames), np.asarray(masks)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (N, H, W, 3); got {frames.dtype} {frames.shape}")
    if masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    if masks.shape != frames.shape[:3]:
        raise ValueError(f"masks {masks.shape} do not match the frames {frames.shape[:3]} in (N, H, W)")
    return frames, masks


class Blender:
    """Composited uint8 frames; a frame composited again becomes 0.5 * old + 0.5 * new (float32)."""

    def __init__(self):
        self._comp: dict[int, np.ndarray] = {}

    def add(self, index: int, image_u8: np.ndarray):
        old = self._comp.get(index)
        if old is None:
            self._comp[index] = image_u8
        else:
            self._comp[index] = old.astype(np.float32) * 0.5 + image_u8.astype(np.float32) * 0.5

    def pop(self, index: int) -> np.ndarray:
        return self._comp.pop(index).astype(np.uint8)  # truncation, as the scripts write

    def __len__(self):
        return len(self._comp)


@dataclasses.dataclass
class InpaintResult:
    frames: np.ndarray  # (N, H, W, 3) uint8
    masks: np.ndarray  # (N, H, W) bool: the pixels that were replaced (dilated holes)
    windows: list[Window]
    geometry: Geometry
    stats: dict


# --- running a generator -----------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("name", "model", "multiple", "geometry", "num_local"))
def run_window(variables, frames_u8, masks_u8, *, name: str, model, multiple: tuple[int, int], geometry: Geometry,
               num_local: int | None):
    """The device side of one window: frames (T, h, w, 3) uint8 and dilated masks (T, h, w) uint8 at the
    processing size -> uint8 predictions (T or num_local, h, w, 3), truncated as the scripts' astype.

    num_local: E2FGVI's number of local frames (static: it shapes the network) and the rows returned;
    None for the other models (all T rows; the host keeps the neighbours), so they compile once per
    window length. Jitted at module level with the model as a static argument: equal models share
    compiled code across Inpainter instances."""
    x = frames_u8.astype(jnp.float32) / 255.0 * 2.0 - 1.0
    m = masks_u8.astype(jnp.float32)[..., None]
    masked = x * (1.0 - m)
    if geometry.pad:
        masked, _ = pad_to_multiple(masked, multiple)
        m, _ = pad_to_multiple(m, multiple)
    out, _ = models.generate(name, model, variables, masked[None], m[None], num_local_frames=num_local)
    h, w = geometry.size
    pred = (out[0, :num_local, :h, :w].astype(jnp.float32) + 1.0) / 2.0 * 255.0
    return jnp.clip(pred, 0.0, 255.0).astype(jnp.uint8)  # float -> uint8 truncates, as numpy's astype


class Inpainter:
    """Inpaint uint8 videos of any length and size with a registered inpainting generator.

    name / model / variables: a registered inpainting model (e.g. from convert.resolve).
    Options default to the model's protocol (`models.get(name).protocol`); resize: (H, W) processing size;
    resize_ratio: scale of the processing size (models without a fixed size); max_in_flight: windows
    dispatched ahead (the next window is prepared while the device runs the current one).
    """

    def __init__(self, name: str, model, variables, neighbor_stride: int | None = None,
                 ref_stride: int | None = None, subvideo_length: int | None = SUBVIDEO_LENGTH,
                 mask_dilation: int | None = None, resize: tuple[int, int] | None = None,
                 resize_ratio: float = 1.0, max_in_flight: int = 2, track_memory: bool = False):
        entry = models.get(name)
        if entry.kind != "inpainting":
            raise ValueError(f"model '{name}' is a {entry.kind} model, not an inpainting generator")
        self.name, self.model = name, model
        self.protocol: ProtocolDefaults = entry.protocol
        self.neighbor_stride = self.protocol.neighbor_stride if neighbor_stride is None else neighbor_stride
        self.ref_stride = self.protocol.ref_stride if ref_stride is None else ref_stride
        self.subvideo_length = subvideo_length or None
        self.mask_dilation = self.protocol.mask_dilation if mask_dilation is None else int(mask_dilation)
        if self.mask_dilation < 0:
            raise ValueError(f"mask_dilation must be >= 0; got {mask_dilation}")
        schedule(1, self.neighbor_stride, self.ref_stride, self.subvideo_length)  # validates the options
        self.size_rule: SizeRule = entry.size_rule(model)
        self.resize, self.resize_ratio = resize, float(resize_ratio)
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1; got {max_in_flight}")
        self.max_in_flight = int(max_in_flight)
        self.track_memory = track_memory
        self._variables = jax.device_put(variables)

    def plan(self, num_frames: int, size: tuple[int, int],
             frame_range: tuple[int, int] | None = None) -> tuple[list[Window], Geometry]:
        """The windows to run (those whose neighbours include a frame of frame_range, default all) and the
        geometry."""
        windows = schedule(num_frames, self.neighbor_stride, self.ref_stride, self.subvideo_length)
        if self.protocol.local_frames and min(w.num_local for w in windows) < 2:
            raise ValueError(f"{self.name} needs at least 2 frames (its flow completion works on pairs of "
                             f"neighbouring frames); the video has {num_frames}")
        lo, hi = check_frame_range(frame_range, num_frames)
        windows = [w for w in windows if any(lo <= i < hi for i in w.neighbors)]
        return windows, plan_geometry(self.size_rule, size, self.resize, self.resize_ratio)

    def __call__(self, frames: np.ndarray, masks: np.ndarray, progress: Callable[[int], Any] | None = None,
                 on_window: Callable[[int, Window], Any] | None = None,
                 frame_range: tuple[int, int] | None = None) -> InpaintResult:
        """frames (N, H, W, 3) uint8, masks (N, H, W) bool (True = hole, before dilation).

        progress(n): called with the number of frames just finished; on_window(k, window) after window
        k was dispatched to the device. frame_range (start, end): inpaint only frames start..end-1 (the result
        holds those), running only the windows whose neighbours include one of them: the same values as the
        whole video's run, whose frames stay the context (neighbours and references)."""
        from ecformer_jax.data.masks import dilate

        frames, masks = check_video_arrays(frames, masks)
        n, height, width, _ = frames.shape
        lo, hi = check_frame_range(frame_range, n)
        windows, geo = self.plan(n, (height, width), (lo, hi))
        last = last_window(windows, n, range(lo, hi))
        masks = masks.astype(bool)

        # processing-size copies on the host; masks binarised, resized (NEAREST), then dilated
        proc_frames = resize_frames(frames, geo.size)
        proc_masks = dilate(resize_masks(masks, geo.size), self.mask_dilation)
        if geo.resized:
            out_masks = dilate(masks, self.mask_dilation) | resize_masks(proc_masks, geo.original)
        else:
            out_masks = proc_masks
        proc_masks_u8 = proc_masks.astype(np.uint8)

        result = np.empty_like(frames[lo:hi])
        blender = Blender()
        stats = {"windows": len(windows), "window_shapes": collections.Counter(), "max_window_frames": 0,
                 "window_bytes": 0, "peak_live_bytes": 0, "processing_size": geo.size,
                 "padded_size": geo.padded}
        pending: collections.deque = collections.deque()
        t0 = time.perf_counter()

        def finish(k: int, window: Window, pred):
            pred = np.asarray(pred)
            for j, idx in enumerate(window.neighbors):
                if lo <= idx < hi:
                    m = proc_masks[idx][..., None]
                    blender.add(idx, np.where(m, pred[j], proc_frames[idx]))
            done = [idx for idx in window.neighbors if last[idx] == k and lo <= idx < hi]
            for idx in done:
                comp = blender.pop(idx)
                if geo.resized:
                    comp = resize_frames(comp[None], geo.original)[0]
                result[idx - lo] = np.where(out_masks[idx][..., None], comp, frames[idx])
            if progress is not None and done:
                progress(len(done))

        for k, window in enumerate(windows):
            ids = list(window.frames)
            x, m = proc_frames[ids], proc_masks_u8[ids]
            # num_local is static: only E2FGVI's network depends on it; other models compile once per
            # window length and the neighbours' predictions are picked on the host
            num_local = window.num_local if self.protocol.local_frames else None
            pred = run_window(self._variables, x, m, name=self.name, model=self.model,
                              multiple=self.size_rule.multiple, geometry=geo, num_local=num_local)
            stats["window_shapes"][(len(ids), num_local)] += 1
            stats["max_window_frames"] = max(stats["max_window_frames"], len(ids))
            if self.track_memory:
                in_flight = [pred] + [p for _, _, p in pending]
                window_bytes = x.nbytes + m.nbytes + sum(p.nbytes for p in in_flight)
                stats["window_bytes"] = max(stats["window_bytes"], window_bytes)
                live = sum(a.nbytes for a in jax.live_arrays())
                stats["peak_live_bytes"] = max(stats["peak_live_bytes"], live)
            pending.append((k, window, pred))
            if on_window is not None:
                on_window(k, window)
            while len(pending) > self.max_in_flight - 1 and pending:
                finish(*pending.popleft())
        while pending:
            finish(*pending.popleft())
        if len(blender):  # cannot happen: every frame has a last window
            raise RuntimeError("frames left unfinished by the protocol")
        stats["seconds"] = time.perf_counter() - t0
        stats["frames_per_second"] = (hi - lo) / stats["seconds"] if stats["seconds"] > 0 else float("inf")
        stats["compiled_shapes"] = len(stats["window_shapes"])
        return InpaintResult(result, out_masks[lo:hi], windows, geo, stats)
