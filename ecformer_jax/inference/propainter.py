"""ProPainter's video inpainting pipeline (Zhou et al., ICCV 2023), following the official inference script
(inference_propainter.py of sczhou/ProPainter, mode video_inpainting) on the three ported networks: RAFT
(`raft`), the recurrent flow completion network (`recurrent_flow_completion`) and the generator
(`propainter`: image propagation and the transformer).

    python -m ecformer_jax.inpaint --model propainter --checkpoint weights/ --video tennis.mp4 \
        --mask tennis_mask/ --output result.mp4

    networks = load_networks("weights/")           # ProPainter.pth, recurrent_flow_completion.pth, raft-things.pth
    result = ProPainter(networks)(frames_u8, masks_bool)   # (N, H, W, 3) uint8, (N, H, W) bool

The steps, with the official defaults (each has an option):

1. size: the processing size is the video's (or --resize WxH, times --resize-ratio, truncated to int) rounded
   DOWN to multiples of 8; frames are resized to it with PIL bicubic, masks with NEAREST, when it differs.
2. masks: > 0 is a hole; dilated `mask_dilation` = 4 times with the 3x3 cross (scipy's binary_dilation default);
   the flow masks and the frame masks are the same masks in this mode.
3. flows: RAFT (`raft_iter` = 20 iterations) forward and backward between neighbouring frames, frames
   u8 / 255 * 2 - 1, in chunks of 12 / 8 / 4 / 2 frames (width <= 640 / 720 / 1280 / larger), every chunk after
   the first starting one frame earlier so the flows join (`raft_chunks`); float32 whatever the dtype.
4. flow completion: forward_bidirect_flow + combine_flow on windows of `subvideo_length` = 80 flows with 5 flows
   of context each side (one call when there are at most 80 flows; `completion_windows`).
5. image propagation: img_propagation(frames * (1 - masks), completed flows, masks, 'nearest') on windows of
   min(100, subvideo_length) frames with 10 frames of context each side (`propagation_windows`); updated frames
   = frames * (1 - masks) + propagated * masks, updated masks as returned.
6. generator: for f = 0, 5, 10, ... (neighbour stride = `neighbor_length` // 2) the local frames
   [f - 5, f + 5] and the reference frames (`reference_ids`): every multiple of `ref_stride` = 10 that is not
   local when the video has at most `subvideo_length` frames, else the frames f - 40, f - 30, ... below f + 40
   that are not local (so at most 8); the generator gets the updated frames, masks and updated masks of local
   + reference frames and the completed flows between the local frames.
7. compositing: (out + 1) / 2 * 255 truncated to uint8 inside the dilated mask, the processing-size frame
   outside; a frame written by an earlier window becomes 0.5 * old + 0.5 * new in float32, truncated to uint8
   at once (so the latest window weighs most).
8. output: frames resized back to the video's size with cv2 bilinear when the processing size differs.

Departures from the script: (a) when the processing size differs from the video's, the resized result is
composited with the input frames outside the input-size dilated masks (the official script resizes every pixel,
so the known pixels are slightly blurred), and the output has the input's size (the script writes the requested
--width x --height); (b) dtype bfloat16 stands for the script's --fp16: the flow completion network and the
generator compute in bfloat16 (parameters float32), RAFT and the image propagation stay float32; (c)
`subvideo_length` 0 means the whole video (as if it were the video's length).

Memory: the video, flows and intermediate results stay on the host (numpy: about 4 * 2 * 2 float32 flow
values per pixel and frame, the rest uint8 / bool); one chunk or window at a time goes to the device, so the
device memory does not grow with the video's length. The updated frames are kept exactly as uint8 plus a
"zero" flag: with 'nearest' propagation every value is a copy of some frame's u8 / 255 * 2 - 1 or a 0 (a hole
or an out-of-frame sample), which the device re-derives bit for bit (checked on every window).

Compiles (static shapes under jit): RAFT compiles once (every chunk is padded to the full chunk length by
repeating its last frame; the extra flows are dropped); the flow completion and image propagation are recurrent
over time, so padding would change them: they compile once per window length (at most 3 each: first, middle,
last window; one for videos up to 80 / 100 frames); the generator compiles once per (frames, local frames)
window shape (the reference frames take part in its attention): about 3-6 shapes for a long video.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from ecformer_jax.inference.propainter_weights import (  # noqa: F401  (FILES, wants_pipeline: re-exported)
    FILES,
    Networks,
    load_networks,
    locate,
    wants_pipeline,
)
from ecformer_jax.inference.protocol import Geometry, InpaintResult, Window, last_window

# the official script's defaults (its flags: --raft_iter, --subvideo_length, --neighbor_length, --ref_stride,
# --mask_dilation)
RAFT_ITER = 20
SUBVIDEO_LENGTH = 80
NEIGHBOR_LENGTH = 10
REF_STRIDE = 10
MASK_DILATION = 4
COMPLETION_CONTEXT = 5  # flows of context each side of a flow-completion window
PROPAGATION_WINDOW = 100  # image propagation windows: min(100, subvideo_length) frames ...
PROPAGATION_CONTEXT = 10  # ... with 10 frames of context each side
SIZE_MULTIPLE = 8
MIN_SIZE = 64  # RAFT's four correlation levels at 1/8

# --- the schedule (host, pure) -------------------------------------------------------------------------------
def raft_chunk_length(width: int) -> int:
    """Frames per RAFT call for frames `width` pixels wide (the official memory rule)."""
    return 12 if width <= 640 else 8 if width <= 720 else 4 if width <= 1280 else 2


def raft_chunks(num_frames: int, width: int) -> list[tuple[int, int]]:
    """[start, end) frame ranges of the RAFT calls: [f, f + L) for f = 0, L, 2L, ..., each after the first
    starting one frame earlier (f - 1) so that its first flow joins the previous chunk's last frame. Their flows
    concatenated are the num_frames - 1 flows of the video. One range when num_frames <= L."""
    length = raft_chunk_length(width)
    if num_frames <= length:
        return [(0, num_frames)]
    return [(max(0, f - 1), min(num_frames, f + length)) for f in range(0, num_frames, length)]


def context_windows(length: int, window: int, context: int) -> list[tuple[int, int, int, int]]:
    """(start, end, keep_start, keep_end) for f = 0, window, 2 window, ...: the call covers [start, end) =
    [f - context, f + window + context) clipped to [0, length), and its results for [keep_start, keep_end) =
    [f, f + window) are kept. The kept ranges tile [0, length)."""
    return [(max(0, f - context), min(length, f + window + context), f, min(length, f + window))
            for f in range(0, length, window)]


def completion_windows(num_flows: int, subvideo_length: int = SUBVIDEO_LENGTH) -> list[tuple[int, int, int, int]]:
    """Flow-completion calls over the num_flows flows (`context_windows`, in flow indices; a call on flows
    [s, e) takes the masks of frames [s, e + 1)): windows of subvideo_length with 5 flows of context, or one
    call when num_flows <= subvideo_length."""
    if num_flows > subvideo_length:
        return context_windows(num_flows, subvideo_length, COMPLETION_CONTEXT)
    return [(0, num_flows, 0, num_flows)]


def propagation_windows(num_frames: int, subvideo_length: int = SUBVIDEO_LENGTH) -> list[tuple[int, int, int, int]]:
    """Image-propagation calls (`context_windows`, in frame indices; a call on frames [s, e) takes the flows
    [s, e - 1)): windows of min(100, subvideo_length) frames with 10 of context, one call if the video fits."""
    window = min(PROPAGATION_WINDOW, subvideo_length)
    if num_frames > window:
        return context_windows(num_frames, window, PROPAGATION_CONTEXT)
    return [(0, num_frames, 0, num_frames)]


def local_ids(f: int, neighbor_stride: int, num_frames: int) -> tuple[int, ...]:
    return tuple(range(max(0, f - neighbor_stride), min(num_frames, f + neighbor_stride + 1)))


def reference_ids(f: int, neighbors: Sequence[int], num_frames: int, ref_stride: int = REF_STRIDE,
                  ref_num: int = -1) -> tuple[int, ...]:
    """The official reference frames of the window at f. ref_num -1: every multiple of ref_stride in the
    video that is not local. Else the frames f - ref_stride * (ref_num // 2), ... (clipped at 0, stepping by
    ref_stride, not aligned to multiples) below min(num_frames, f + ref_stride * (ref_num // 2)) that are not
    local. (The official loop also stops once more than ref_num were taken, which the range never allows.)"""
    neighbors = set(neighbors)
    if ref_num == -1:
        return tuple(i for i in range(0, num_frames, ref_stride) if i not in neighbors)
    half = ref_stride * (ref_num // 2)
    out: list[int] = []
    for i in range(max(0, f - half), min(num_frames, f + half), ref_stride):
        if i in neighbors:
            continue
        if len(out) > ref_num:
            break
        out.append(i)
    return tuple(out)


def generator_windows(num_frames: int, neighbor_length: int = NEIGHBOR_LENGTH, ref_stride: int = REF_STRIDE,
                      subvideo_length: int = SUBVIDEO_LENGTH) -> list[Window]:
    """The generator calls of the official loop, in order (`protocol.Window`: local frames, then references)."""
    stride = neighbor_length // 2
    ref_num = subvideo_length // ref_stride if num_frames > subvideo_length else -1
    out = []
    for f in range(0, num_frames, stride):
        nb = local_ids(f, stride, num_frames)
        out.append(Window(f, nb, reference_ids(f, nb, num_frames, ref_stride, ref_num)))
    return out


def process_size(original: tuple[int, int], resize: tuple[int, int] | None = None,
                 resize_ratio: float = 1.0) -> tuple[int, int]:
    """(H, W) the networks run at: the video's size, or `resize`, scaled by resize_ratio (int() truncation),
    rounded down to multiples of 8 (the official rule)."""
    h, w = (int(original[0]), int(original[1])) if resize is None else (int(resize[0]), int(resize[1]))
    if resize_ratio != 1.0:
        if not resize_ratio > 0:
            raise ValueError(f"resize_ratio must be > 0; got {resize_ratio}")
        h, w = int(resize_ratio * h), int(resize_ratio * w)
    size = (h - h % SIZE_MULTIPLE, w - w % SIZE_MULTIPLE)
    if min(size) < MIN_SIZE:
        raise ValueError(f"ProPainter processes frames of at least {MIN_SIZE}x{MIN_SIZE} (RAFT's correlation "
                         f"pyramid); the processing size would be {size[1]}x{size[0]} (WxH, from {w}x{h} rounded "
                         f"down to multiples of {SIZE_MULTIPLE}); choose a larger --resize / --resize-ratio")
    return size


# --- compositing (host) -------------------------------------------------------------------------------------
def composite(pred_u8: np.ndarray, mask: np.ndarray, frame_u8: np.ndarray) -> np.ndarray:
    """The prediction inside the (dilated) mask, the frame outside, uint8."""
    return np.where(np.asarray(mask, bool)[..., None], pred_u8, frame_u8).astype(np.uint8)


def blend(old_u8: np.ndarray | None, new_u8: np.ndarray) -> np.ndarray:
    """A frame composited again: 0.5 * old + 0.5 * new in float32, truncated to uint8 (the official script
    truncates after every blend)."""
    if old_u8 is None:
        return new_u8
    return (old_u8.astype(np.float32) * 0.5 + new_u8.astype(np.float32) * 0.5).astype(np.uint8)


def to_u8(out):
    """Generator output in [-1, 1] -> (out + 1) / 2 * 255 truncated to uint8, float32 as the script's numpy."""
    pred = (out.astype(jnp.float32) + 1.0) / 2.0 * 255.0
    return jnp.clip(pred, 0.0, 255.0).astype(jnp.uint8)


# --- the device side: one chunk / window per call ---------------------------------------------------------------
# u8 / 255 * 2 - 1 for every u8, in float32 with IEEE division (numpy, as torch computes it); a table lookup on
# the device gives these exact values (XLA may turn the division by 255 into a multiplication by its
# reciprocal, which rounds differently for some values, and not the same way in every fusion)
_UNIT = np.arange(256, dtype=np.float32) / np.float32(255) * np.float32(2) - np.float32(1)


def _unit(frames_u8):
    """uint8 -> u8 / 255 * 2 - 1 (float32), exactly as the script's to_tensors() * 2 - 1."""
    return jnp.take(jnp.asarray(_UNIT), frames_u8.astype(jnp.int32), axis=0)


@functools.partial(jax.jit, static_argnames=("model", "iters"))
def raft_flows(variables, frames_u8, *, model, iters: int):
    """frames (T, H, W, 3) uint8 -> forward, backward flows (T-1, H, W, 2) float32 (RAFT_bi)."""
    forward, backward = model.apply(variables, _unit(frames_u8)[None], iters, method="bidirectional")
    return forward[0], backward[0]


@functools.partial(jax.jit, static_argnames=("model",))
def complete_flows(variables, flows_f, flows_b, masks_u8, *, model):
    """flows (n, H, W, 2) and the masks of their n + 1 frames (uint8 0/1) -> completed flows (combine_flow)."""
    masks = masks_u8.astype(jnp.float32)[None, ..., None]
    flows = (flows_f[None], flows_b[None])
    pred, _ = model.apply(variables, flows, masks, method="forward_bidirect_flow")
    comb_f, comb_b = model.apply(variables, flows, pred, masks, method="combine_flow")
    return comb_f[0], comb_b[0]


def jsonable_stats(stats: dict) -> dict:
    """`InpaintResult.stats` for a JSON summary: each stage's compiled shapes as {"shape": calls}."""
    shapes = {stage: {str(k): v for k, v in counts.items()} for stage, counts in stats["shapes"].items()}
    return {**stats, "shapes": shapes, "processing_size": list(stats["processing_size"])}


def decode_updated(frames_u8, zero):
    """The exact float32 updated frames from their uint8 + zero-flag encoding."""
    return jnp.where(zero[..., None], 0.0, _unit(frames_u8))


@functools.partial(jax.jit, static_argnames=("model",))
def propagate_images(variables, frames_u8, masks_u8, flows_f, flows_b, *, model):
    """Image propagation of frames (t, H, W, 3) uint8 with masks (t, H, W) and completed flows (t-1, H, W, 2)
    -> (updated frames as uint8, zero flags (t, H, W), updated masks (t, H, W) bool, lossless): the updated frames
    frames * (1 - m) + propagated * m are returned as u8 with a flag for the exact zeros; lossless says that
    `decode_updated` gives them back exactly."""
    frames = _unit(frames_u8)
    m = masks_u8.astype(jnp.float32)[..., None]
    masked = frames * (1.0 - m)
    prop, upd = model.apply(variables, masked[None], (flows_f[None], flows_b[None]), m[None], "nearest",
                            method="img_propagation")
    updated = frames * (1.0 - m) + prop[0] * m
    zero = jnp.all(updated == 0.0, axis=-1)
    u8 = jnp.clip(jnp.round((updated + 1.0) / 2.0 * 255.0), 0.0, 255.0).astype(jnp.uint8)
    lossless = jnp.all(decode_updated(u8, zero) == updated)
    return u8, zero, upd[0, ..., 0] > 0.5, lossless


@functools.partial(jax.jit, static_argnames=("model", "num_local"))
def generate_window(variables, frames_u8, zero, masks_u8, updated_masks, flows_f, flows_b, *, model,
                    num_local: int):
    """One generator call: the window's updated frames (uint8 + zero flags), masks, updated masks (T, H, W) and
    the completed flows between its num_local local frames -> uint8 predictions of the local frames."""
    frames = decode_updated(frames_u8, zero)
    m = masks_u8.astype(jnp.float32)[None, ..., None]
    upd = updated_masks.astype(jnp.float32)[None, ..., None]
    out = model.apply(variables, frames[None], (flows_f[None], flows_b[None]), m, upd, num_local)
    return to_u8(out[0])


# --- the pipeline ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Plan:
    geometry: Geometry
    raft_chunks: list
    completion_windows: list
    propagation_windows: list
    windows: list  # generator windows (protocol.Window)


def _positive(what: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _pad_frames(x: np.ndarray, length: int) -> np.ndarray:
    """Pad (t, ...) to (length, ...) by repeating the last frame."""
    if len(x) == length:
        return x
    return np.concatenate([x, np.repeat(x[-1:], length - len(x), axis=0)])


class ProPainter:
    """The official ProPainter inference on uint8 videos of any length (see the module docstring).

    networks: `load_networks(...)`. Options default to the official script's; subvideo_length 0 / None = the
    whole video; resize: (H, W) processing size before rounding down to multiples of 8; max_in_flight: generator
    windows dispatched ahead of the host's compositing."""

    def __init__(self, networks: Networks, raft_iter: int = RAFT_ITER, subvideo_length: int | None = SUBVIDEO_LENGTH,
                 neighbor_length: int = NEIGHBOR_LENGTH, ref_stride: int = REF_STRIDE,
                 mask_dilation: int = MASK_DILATION, resize: tuple[int, int] | None = None, resize_ratio: float = 1.0,
                 max_in_flight: int = 2):
        self.networks = networks
        self.raft_iter = _positive("raft_iter", raft_iter)
        self.subvideo_length = None if not subvideo_length else _positive("subvideo_length", subvideo_length)
        self.neighbor_length = _positive("neighbor_length", neighbor_length, 2)
        self.ref_stride = _positive("ref_stride", ref_stride)
        self.mask_dilation = _positive("mask_dilation", mask_dilation, 0)
        self.resize, self.resize_ratio = resize, float(resize_ratio)
        self.max_in_flight = _positive("max_in_flight", max_in_flight)
        self._variables = {k: jax.device_put(getattr(networks, k).variables) for k in Networks._fields}

    @property
    def neighbor_stride(self) -> int:
        return self.neighbor_length // 2

    def plan(self, num_frames: int, size: tuple[int, int]) -> Plan:
        if num_frames < 2:
            raise ValueError(f"ProPainter needs at least 2 frames (it propagates along optical flows between "
                             f"neighbouring frames); the video has {num_frames}")
        proc = process_size(size, self.resize, self.resize_ratio)
        sub = self.subvideo_length or num_frames
        return Plan(Geometry((int(size[0]), int(size[1])), proc, proc), raft_chunks(num_frames, proc[1]),
                    completion_windows(num_frames - 1, sub), propagation_windows(num_frames, sub),
                    generator_windows(num_frames, self.neighbor_length, self.ref_stride, sub))

    # --- the stages (host arrays in, host arrays out; one chunk / window on the device at a time) -------------
    def flows(self, frames_u8: np.ndarray, update=None, shapes: collections.Counter | None = None):
        """RAFT forward / backward flows (N-1, H, W, 2) float32 of processing-size frames (N, H, W, 3) uint8, in
        the official chunks (`raft_chunks`), each padded to the longest chunk (one compile)."""
        n, h, w, _ = frames_u8.shape
        chunks = raft_chunks(n, w)
        chunk_len = max(e - s for s, e in chunks)
        flows_f = np.empty((n - 1, h, w, 2), np.float32)
        flows_b = np.empty_like(flows_f)
        model, variables = self.networks.raft.model, self._variables["raft"]

        def done(s, e, out):
            flows_f[s:e - 1], flows_b[s:e - 1] = (np.asarray(a)[:e - 1 - s] for a in out)
            if update:
                update(e - 1 - s)

        self._pipelined(chunks, lambda s, e: raft_flows(variables, _pad_frames(frames_u8[s:e], chunk_len),
                                                        model=model, iters=self.raft_iter),
                        done, shapes, lambda s, e: chunk_len)
        return flows_f, flows_b

    def complete(self, flows_f: np.ndarray, flows_b: np.ndarray, masks_u8: np.ndarray, update=None,
                 shapes: collections.Counter | None = None):
        """Completed flows (forward_bidirect_flow + combine_flow) over `completion_windows`; masks_u8 (N, H, W)
        are the dilated flow masks (0 / 1)."""
        sub = self.subvideo_length or len(masks_u8)
        out_f, out_b = np.empty_like(flows_f), np.empty_like(flows_b)
        model, variables = self.networks.flow_completion.model, self._variables["flow_completion"]

        def done(s, e, ks, ke, out):
            out_f[ks:ke], out_b[ks:ke] = (np.asarray(a)[ks - s:ke - s] for a in out)
            if update:
                update(ke - ks)

        self._pipelined(completion_windows(len(flows_f), sub),
                        lambda s, e, ks, ke: complete_flows(variables, flows_f[s:e], flows_b[s:e], masks_u8[s:e + 1],
                                                            model=model),
                        done, shapes, lambda s, e, ks, ke: e - s)
        return out_f, out_b

    def propagate(self, frames_u8: np.ndarray, masks_u8: np.ndarray, flows_f: np.ndarray, flows_b: np.ndarray,
                  update=None, shapes: collections.Counter | None = None):
        """Image propagation over `propagation_windows` -> (updated frames as uint8 (N, H, W, 3), their zero flags
        (N, H, W), updated masks (N, H, W) bool); `decode_updated` gives the float32 updated frames."""
        n, h, w, _ = frames_u8.shape
        sub = self.subvideo_length or n
        updated_u8 = np.empty_like(frames_u8)
        zeros = np.empty((n, h, w), bool)
        updated_masks = np.empty((n, h, w), bool)
        model, variables = self.networks.generator.model, self._variables["generator"]

        def done(s, e, ks, ke, out):
            u8, zero, upd, lossless = out
            if not bool(lossless):
                raise RuntimeError("image propagation produced values that are not copies of frame pixels or 0 "
                                   "(the uint8 encoding of the updated frames would lose them)")
            sl = slice(ks - s, ke - s)
            updated_u8[ks:ke], zeros[ks:ke], updated_masks[ks:ke] = (np.asarray(a)[sl] for a in (u8, zero, upd))
            if update:
                update(ke - ks)

        self._pipelined(propagation_windows(n, sub),
                        lambda s, e, ks, ke: propagate_images(variables, frames_u8[s:e], masks_u8[s:e],
                                                              flows_f[s:e - 1], flows_b[s:e - 1], model=model),
                        done, shapes, lambda s, e, ks, ke: e - s)
        return updated_u8, zeros, updated_masks

    def generate(self, frames_u8: np.ndarray, masks: np.ndarray, updated, flows_f: np.ndarray, flows_b: np.ndarray,
                 on_frame: Callable[[int, np.ndarray], Any], update=None, shapes: collections.Counter | None = None):
        """The generator windows (`generator_windows`) composited into the processing-size frames and blended;
        on_frame(index, frame_u8) is called as soon as a frame is final (after its last window). masks: the
        dilated masks (N, H, W) bool; updated: `propagate`'s triple. Returns the windows."""
        n = len(frames_u8)
        windows = generator_windows(n, self.neighbor_length, self.ref_stride, self.subvideo_length or n)
        last = last_window(windows, n)
        updated_u8, zeros, updated_masks = updated
        masks_u8 = masks.astype(np.uint8)
        model, variables = self.networks.generator.model, self._variables["generator"]
        comp: dict[int, np.ndarray] = {}

        def call(k, window):
            ids, local = list(window.frames), list(window.neighbors[:-1])
            return generate_window(variables, updated_u8[ids], zeros[ids], masks_u8[ids], updated_masks[ids],
                                   flows_f[local], flows_b[local], model=model, num_local=window.num_local)

        def done(k, window, pred):
            pred = np.asarray(pred)
            for j, idx in enumerate(window.neighbors):
                comp[idx] = blend(comp.get(idx), composite(pred[j], masks[idx], frames_u8[idx]))
            finished = [idx for idx in window.neighbors if last[idx] == k]
            for idx in finished:
                on_frame(idx, comp.pop(idx))
            if update and finished:
                update(len(finished))

        self._pipelined(enumerate(windows), call, done, shapes, lambda k, window: (len(window.frames),
                                                                                    window.num_local))
        if comp:  # cannot happen: every frame has a last window
            raise RuntimeError("frames left unfinished by the protocol")
        return windows

    def __call__(self, frames: np.ndarray, masks: np.ndarray,
                 progress: Callable[[str, int], Callable[[int], Any] | None] | None = None) -> InpaintResult:
        """frames (N, H, W, 3) uint8, masks (N, H, W) bool (True = hole, before dilation).

        progress(stage, total) -> update(n) or None: called at the start of each stage ('flows', 'completion',
        'propagation', 'inpaint'); update is called with the flows / frames just done."""
        from ecformer_jax.data.masks import dilate
        from ecformer_jax.inference.protocol import check_video_arrays, resize_frames, resize_masks

        frames, masks = check_video_arrays(frames, masks)
        n = len(frames)
        geo = self.plan(n, frames.shape[1:3]).geometry
        stage = progress or (lambda name, total: None)
        shapes = {k: collections.Counter() for k in ("raft", "completion", "propagation", "generator")}
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()

        proc_frames = resize_frames(frames, geo.size)
        proc_masks = dilate(resize_masks(masks.astype(bool), geo.size), self.mask_dilation)
        masks_u8 = proc_masks.astype(np.uint8)
        if geo.resized:
            out_masks = dilate(masks.astype(bool), self.mask_dilation) | resize_masks(proc_masks, geo.original)
        else:
            out_masks = proc_masks

        t = time.perf_counter()
        flows_f, flows_b = self.flows(proc_frames, stage("flows", n - 1), shapes["raft"])
        seconds["flows"], t = time.perf_counter() - t, time.perf_counter()
        flows_f, flows_b = self.complete(flows_f, flows_b, masks_u8, stage("completion", n - 1),
                                         shapes["completion"])
        seconds["completion"], t = time.perf_counter() - t, time.perf_counter()
        updated = self.propagate(proc_frames, masks_u8, flows_f, flows_b, stage("propagation", n),
                                 shapes["propagation"])
        seconds["propagation"], t = time.perf_counter() - t, time.perf_counter()
        result = np.empty_like(frames)

        def on_frame(idx, comp):
            result[idx] = self._output_frame(comp, frames[idx], out_masks[idx], geo)

        windows = self.generate(proc_frames, proc_masks, updated, flows_f, flows_b, on_frame, stage("inpaint", n),
                                shapes["generator"])
        seconds["inpaint"] = time.perf_counter() - t

        total = time.perf_counter() - t0
        stats = {"shapes": shapes, "seconds_per_stage": seconds, "seconds": total,
                 "frames_per_second": n / total if total > 0 else float("inf"),
                 "compiled_shapes": sum(len(c) for c in shapes.values()), "windows": len(windows),
                 "processing_size": geo.size}
        return InpaintResult(result, out_masks, windows, geo, stats)

    @staticmethod
    def _output_frame(comp: np.ndarray, frame: np.ndarray, out_mask: np.ndarray, geo: Geometry) -> np.ndarray:
        """The composited processing-size frame at the video's size: cv2 bilinear resize (as the script), then
        the input frame outside the input-size mask (our departure; see the module docstring)."""
        if not geo.resized:
            return comp
        import cv2

        up = cv2.resize(comp, (geo.original[1], geo.original[0]), interpolation=cv2.INTER_LINEAR)
        return composite(up, out_mask, frame)

    def _pipelined(self, items, dispatch, finish, shapes: collections.Counter | None, shape_of):
        """dispatch(*item) for each item (asynchronous on the device), finish(*item, result) in order, with at
        most max_in_flight calls outstanding (the host works on one result while the device runs the next)."""
        pending: collections.deque = collections.deque()
        for item in items:
            if shapes is not None:
                shapes[shape_of(*item)] += 1
            pending.append((item, dispatch(*item)))
            while len(pending) >= self.max_in_flight:
                item_done, out = pending.popleft()
                finish(*item_done, out)
        while pending:
            item_done, out = pending.popleft()
            finish(*item_done, out)


# --- files in, files out (the inpaint command with --model propainter) ------------------------------------------------
def inpaint(checkpoint, video, mask, output, overwrite=False, dtype=None, neighbor_length=None, ref_stride=None,
            subvideo_length=SUBVIDEO_LENGTH, resize=None, resize_ratio=1.0, mask_dilation=None, raft_iter=None,
            fps=None, side_by_side=True, progress=True, verbose=True) -> dict:
    """`inference.inpaint` for ProPainter: checks (options, checkpoints present, outputs), then reads the video and
    masks, loads the three networks, runs `ProPainter` and writes the result. Returns the summary dict of
    `inference.inpaint` (plus 'stages': seconds per stage)."""
    from ecformer_jax.data import video_io
    from ecformer_jax.inference.common import (
        check_outputs,
        format_size,
        peak_host_memory_mb,
        read_fps,
        side_by_side_path,
        write_result,
    )
    from ecformer_jax.inference.inpaint import read_masks

    video, mask = epath.Path(video), epath.Path(mask)
    options = dict(raft_iter=RAFT_ITER if raft_iter is None else raft_iter, subvideo_length=subvideo_length,
                   neighbor_length=NEIGHBOR_LENGTH if neighbor_length is None else neighbor_length,
                   ref_stride=REF_STRIDE if ref_stride is None else ref_stride,
                   mask_dilation=MASK_DILATION if mask_dilation is None else mask_dilation)
    _positive("--raft-iter", options["raft_iter"])
    _positive("--neighbor-length", options["neighbor_length"], 2)
    _positive("--ref-stride", options["ref_stride"])
    _positive("--mask-dilation", options["mask_dilation"], 0)
    if subvideo_length is not None and subvideo_length < 0:
        raise ValueError(f"--subvideo-length must be >= 0 (0 = the whole video); got {subvideo_length}")
    paths = locate(checkpoint)  # the three checkpoints exist (loaded after the video was read)
    check_outputs({"video": video, "mask": mask}, output, overwrite, side_by_side)
    t0 = time.perf_counter()
    frames = video_io.read_frames(video)
    n, h, w, _ = frames.shape
    masks = read_masks(mask, n, (h, w))
    if n < 2:
        raise ValueError(f"{video}: ProPainter needs at least 2 frames (it propagates along optical flows); "
                         f"the video has {n}")
    proc = process_size((h, w), resize, resize_ratio)  # a size error before loading the networks
    networks = load_networks(paths, dtype)
    painter = ProPainter(networks, resize=resize, resize_ratio=resize_ratio, **options)
    plan = painter.plan(n, (h, w))
    fps = fps or read_fps(video, 24.0)
    if verbose:
        compute = np.dtype(networks.generator.model.dtype).name
        print(f"propainter (ProPainter pipeline: RAFT float32, flow completion and generator {compute}): {n} frames "
              f"{w}x{h}, processed at {format_size(proc)}; {len(plan.raft_chunks)} RAFT call(s) of up to "
              f"{max(e - s for s, e in plan.raft_chunks)} frames ({painter.raft_iter} iterations), "
              f"{len(plan.completion_windows)} flow-completion and {len(plan.propagation_windows)} propagation "
              f"call(s), {len(plan.windows)} generator windows of up to {max(len(x.frames) for x in plan.windows)} "
              f"frames (neighbour stride {painter.neighbor_stride}, reference stride {painter.ref_stride}, "
              f"subvideo {painter.subvideo_length or 'whole video'}, mask dilation {painter.mask_dilation})",
              file=sys.stderr)
    bars: list = []

    def stage(name, total):
        if not progress:
            return None
        from tqdm import tqdm

        for bar in bars:
            bar.close()
        bars.append(tqdm(total=total, unit="flow" if name in ("flows", "completion") else "frame", desc=name,
                         file=sys.stderr))
        return bars[-1].update

    try:
        result = painter(frames, masks, progress=stage)
    finally:
        for bar in bars:
            bar.close()
    sbs = (video_io.side_by_side(video_io.overlay_mask(frames, result.masks), result.frames) if side_by_side
           else None)
    written = write_result(output, result.frames, fps, side_by_side=sbs)
    st = result.stats
    summary = {"model": "propainter", "frames": n, "size": (h, w), "processing_size": proc, "padded_size": proc,
               "windows": len(result.windows), "neighbor_stride": painter.neighbor_stride,
               "ref_stride": painter.ref_stride, "subvideo_length": painter.subvideo_length,
               "mask_dilation": painter.mask_dilation, "raft_iter": painter.raft_iter, "output": str(written),
               "seconds": st["seconds"], "frames_per_second": st["frames_per_second"],
               "compiled_shapes": st["compiled_shapes"], "stages": st["seconds_per_stage"],
               "total_seconds": time.perf_counter() - t0, "peak_host_memory_mb": peak_host_memory_mb(),
               "stats": jsonable_stats(st)}
    if side_by_side:
        summary["side_by_side"] = str(side_by_side_path(output))
    return summary
