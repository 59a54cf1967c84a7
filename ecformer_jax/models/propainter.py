"""ProPainter's inpainting generator (`InpaintGenerator`, sczhou/ProPainter model/propainter.py; Zhou et al.,
"ProPainter: Improving Propagation and Transformer for Video Inpainting", ICCV 2023): dual-domain propagation
(pixels along completed flows, then features with flow-guided deformable alignment) and a mask-guided sparse
video transformer.

    model = models.build("propainter")
    prop, upd = model.apply(variables, masked_frames, (flows_f, flows_b), masks, method="img_propagation")
    frames = model.apply(variables, frames, (flows_f, flows_b), masks_in, masks_updated, num_local_frames)

Layouts are channels-last: frames (B, T, H, W, 3) in [-1, 1], masks (B, T, H, W, 1) with 1 = hole, flows
(B, T-1, H, W, 2) in pixels with channel 0 horizontal (x) (flows_f[:, k]: frame k -> k+1, flows_b[:, k]: frame
k+1 -> k, e.g. the completed flows of `recurrent_flow_completion`). H and W must be multiples of 4 (the official
inference uses multiples of 8).

* `img_propagation(masked_frames, completed_flows, masks, interpolation='nearest')`: the parameter-free image
  propagation on full-resolution frames (holes 0). Returns (propagated frames (B, T, H, W, 3), updated masks
  (B, T, H, W, 1) in {0, 1}): the results of the second (forward) pass.
* `__call__` (the official `forward(masked_frames, completed_flows, masks_in, masks_updated, num_local_frames,
  interpolation='bilinear', t_dilation=2)`): frames (B, T, H, W, 3) in [-1, 1] (the propagated frames composited
  into the masked ones), masks_in the (dilated) masks, masks_updated the masks after image propagation, all T
  frames (the first `num_local_frames` consecutive "local" ones, then reference frames); flows (B, L-1, H, W, 2)
  between the L = num_local_frames local frames. Returns the L local frames (B, L, H, W, 3) after tanh (built
  with training=True: all T frames, and the attention's window masks come from all T frames, as the official
  training mode does). `num_local_frames` (a Python int, static under jit; None = T), `interpolation` and
  `t_dilation` are static. Unlike the official code, B > 1 works with reference frames too (the official
  forward fails there on two `.view` calls); each sample is computed on its own.

Network (forward): encoder (FuseFormer's, on cat(frame, mask_in, mask_updated)) to 1/4; flows downscaled
bilinearly (align_corners=False) and divided by 4, masks by nearest (pixel 4i); a bidirectional propagation of
the local features (backward pass over L-1..0, then a forward pass 0..L-1 over the backward pass's RESULTS; each
step i >= 1 aligns the previous result with a flow-guided modulated deformable conv whose offsets are
3 * tanh(.) + the flow, conditioned on the current feature, the previous result warped bilinearly, the flow, its
forward-backward consistency and the 2-channel mask; every step adds a conv residual; output fuse(...) + input);
soft split (7x7 patches, stride 3, padding 3) to 512-d tokens; 8 temporal sparse transformer blocks; soft
composition (overlaps summed) + 3x3 bias conv, added to the features; decoder on the local frames; tanh.

Sparse window attention (windows 5x9 on the token grid, zero-padded at the bottom/right to whole windows, the
padded tokens taking part as keys/values; 4 heads): a window is "masked" when a local frame has a hole token in
it (7x7/3 max-pool of the 1/4 masks, max per window, summed over the local frames). Masked windows: the queries
of all T frames attend jointly to, for each frame of the block's frame set (every t_dilation-th frame, starting
at block % t_dilation), the window's 45 tokens, 148 tokens of four cyclically rolled copies (by (+-3, +-5)) at
the official `valid_ind_rolled` positions, and the 4x4/4 depthwise-pooled tokens of the whole frame. Unmasked
windows: each frame's 45 queries attend to its own 45 window tokens. The official code gathers the masked and
unmasked windows with data-dependent indices; here (static shapes under jit) BOTH attentions are computed for
every window and `jnp.where` on the window mask picks one per window and sample. Each window's numbers are the
ones the official gather gives (the attentions of different windows are independent); the price is computing
the unused branch (the per-frame one is small, the joint one is the official cost when every window is masked).

The propagations run as scans (one compiled step per pass, whatever the number of frames). Intermediates
(apply(..., mutable=["intermediates"]), channels-last, the official module path -> our key in `INTERMEDIATES`),
all of the forward call: encoder_out (B*T, h, w, 128), the first deformable alignment of each pass (B, h, w, 128;
backward pass: step 1 = local frame L-2; forward pass: step 1 = local frame 1), feat_prop_module_out
(B*L, h, w, 128), ss_out and the tokens after block 0's attention (before the residual) and after blocks 0 and 7
(B, T, fh, fw, 512), sc_out (B*T, h, w, 128), decoder_out (pre-tanh, B*L, H, W, 3); b-major throughout.

Checkpoints: the bare state_dict of `ProPainter.pth` (216 keys; the eight `valid_ind_rolled` buffers are checked
against the indices this model derives, not stored). RAFT, flow-completion and other state_dicts are refused
naming them. Parameters float32; `dtype` sets the compute dtype of convolutions, linears, norms and attention
(the propagation carries, flows, offsets, image propagation and outputs stay float32).
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ecformer_jax.errors import CheckpointError
from ecformer_jax.layers.attention import attend, merge_heads, split_heads
from ecformer_jax.layers.checks import check_video
from ecformer_jax.layers.conv import (
    Decoder,
    Encoder,
    conv2d,
    conv_general_dilated,
    decoder_from_torch,
    encoder_from_torch,
    normal_init,
)
from ecformer_jax.layers.deform import _dcn_kernel_init, modulated_deform_conv2d
from ecformer_jax.layers.feedforward import FusionFeedForward
from ecformer_jax.layers.flow import flow_warp
from ecformer_jax.layers.patches import PatchDense, fold, grid_size, unfold
from ecformer_jax.layers.remat import block_class
from ecformer_jax.layers.resize import resize_nearest, upsample_bilinear
from ecformer_jax.layers.tiling import lane_dense
from ecformer_jax.layers.windows import rolled_ring_indices, rolled_tokens, window_partition, window_reverse
from ecformer_jax.models.registry import register

CHANNELS = 128
DEFORM_GROUPS = 16
MAX_RESIDUE = 3.0
INTERPOLATIONS = ("bilinear", "nearest")

# official module path (the fixture's intermediate names) -> our intermediates key
INTERMEDIATES = {
    "encoder": "encoder_out",
    "feat_prop_module.deform_align.backward_1": "feat_prop_module.deform_align.backward_1",
    "feat_prop_module.deform_align.forward_1": "feat_prop_module.deform_align.forward_1",
    "feat_prop_module": "feat_prop_module_out",
    "ss": "ss_out",
    "transformers.transformer.0.attention": "transformers.transformer.0.attention",
    "transformers.transformer.0": "transformers.transformer.0",
    "transformers.transformer.7": "transformers.transformer.7",
    "sc": "sc_out",
    "decoder": "decoder_out",
}


def _lrelu(x, slope: float = 0.2):
    return jax.nn.leaky_relu(x, slope)


class InpaintGenerator(nn.Module):
    """ProPainter's generator; see the module docstring for the calls, layouts, the window-selection choice and
    the intermediates."""

    hidden: int = 512
    heads: int = 4
    num_blocks: int = 8  # official `depths`
    window: tuple = (5, 9)
    pool: tuple = (4, 4)
    kernel: int = 7
    stride: int = 3
    padding: int = 3
    ffn_hidden: int = 1960
    training: bool = False  # the official training mode: decode all T frames, window masks from all T frames
    remat: bool = False  # recompute the transformer blocks, encoder and decoder in the backward pass (less memory)
    dtype: Any = jnp.float32

    def setup(self):
        d = self.dtype
        self.encoder = block_class(Encoder, self.remat)(d)  # full-resolution activations: 128 TPU lanes for 64
        self.feat_prop_module = FeaturePropagation(CHANNELS, d)
        self.ss = PatchDense(self.hidden, self.kernel * self.kernel, "in", d)
        block = block_class(TemporalSparseTransformer, self.remat, (2, 4))  # feature_size, frames: static
        self.transformers = [block(self.hidden, self.heads, self.window, self.pool, self.ffn_hidden, self.kernel,
                                   self.stride, self.padding, d) for _ in range(self.num_blocks)]
        self.sc = PatchDense(CHANNELS * self.kernel * self.kernel, self.kernel * self.kernel, "out", d)
        self.sc_bias_conv = conv2d(CHANNELS, 3, dtype=d)
        self.decoder = block_class(Decoder, self.remat)(d)

    # --- input checks -----------------------------------------------------------------------------
    @staticmethod
    def _flows(completed_flows, what: str, frames: int, b: int, height: int, width: int):
        if not isinstance(completed_flows, (tuple, list)) or len(completed_flows) != 2:
            raise ValueError(f"{what}: completed_flows must be a pair (flows_forward, flows_backward)")
        want = (b, frames - 1, height, width, 2)
        for name, f in zip(("forward", "backward"), completed_flows):
            if getattr(f, "shape", None) is None or tuple(f.shape) != want:
                raise ValueError(f"{what}: {name} flows must be (B, {frames - 1}, H, W, 2) = {want} (one fewer than "
                                 f"the {frames} frames they join); got {getattr(f, 'shape', None)}")
        return tuple(jnp.asarray(f, jnp.float32) for f in completed_flows)

    @staticmethod
    def _masks(masks, what: str, b: int, t: int, height: int, width: int):
        check_video(masks, f"{what} masks", 1)
        if tuple(masks.shape[:4]) != (b, t, height, width):
            raise ValueError(f"{what}: masks {tuple(masks.shape)} must match the frames' (B, T, H, W) = "
                             f"{(b, t, height, width)}")
        return jnp.asarray(masks, jnp.float32)

    @staticmethod
    def _interpolation(interpolation: str):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}; got {interpolation!r}")

    # --- official methods -------------------------------------------------------------------------
    def img_propagation(self, masked_frames, completed_flows, masks, interpolation: str = "nearest"):
        """Image propagation (no parameters): masked_frames (B, T, H, W, 3) with holes 0, completed_flows
        (flows_f, flows_b) (B, T-1, H, W, 2), masks (B, T, H, W, 1) -> (frames (B, T, H, W, 3), masks
        (B, T, H, W, 1)) of the forward pass."""
        b, t, height, width, _ = check_video(masked_frames, "img_propagation masked_frames", 3)
        self._interpolation(interpolation)
        flows_f, flows_b = self._flows(completed_flows, "img_propagation", t, b, height, width)
        masks = self._masks(masks, "img_propagation", b, t, height, width)
        return image_propagation(jnp.asarray(masked_frames, jnp.float32), flows_f, flows_b, masks, interpolation)

    def __call__(self, masked_frames, completed_flows, masks_in, masks_updated, num_local_frames: int | None = None,
                 interpolation: str = "bilinear", t_dilation: int = 2):
        """The official forward; see the module docstring. Returns (B, L, H, W, 3) (training=True: (B, T, ...))."""
        b, t, height, width, _ = check_video(masked_frames, "InpaintGenerator masked_frames", 3)
        lt = _local_frames(num_local_frames, t)
        self._interpolation(interpolation)
        if isinstance(t_dilation, bool) or not isinstance(t_dilation, (int, np.integer)) or t_dilation < 1 \
                or self.num_blocks % t_dilation:
            raise ValueError(f"t_dilation must be a positive int dividing the {self.num_blocks} blocks; "
                             f"got {t_dilation!r}")
        if height % 4 or width % 4:
            raise ValueError(f"InpaintGenerator: H and W must be multiples of 4 (the flows at 1/4 must match the "
                             f"encoder's 1/4 map; official inference uses multiples of 8); got {height}x{width}")
        flows_f, flows_b = self._flows(completed_flows, "InpaintGenerator", lt, b, height, width)
        masks_in = self._masks(masks_in, "InpaintGenerator", b, t, height, width)
        masks_updated = self._masks(masks_updated, "InpaintGenerator (masks_updated)", b, t, height, width)
        h, w = height // 4, width // 4
        k, s, p = self.kernel, self.stride, self.padding
        fh, fw = grid_size(h, w, k, s, p)

        # encoder on every frame
        x = jnp.concatenate([jnp.asarray(masked_frames, jnp.float32), masks_in, masks_updated], axis=-1)
        enc = self.encoder(x.astype(self.dtype).reshape(b * t, height, width, 5))
        self.sow("intermediates", "encoder_out", enc)
        c = enc.shape[-1]
        enc = enc.astype(jnp.float32).reshape(b, t, h, w, c)

        # flows and masks at 1/4 (bilinear without antialiasing / 4; nearest: pixel (4i, 4j))
        def ds_flows(f):
            f = upsample_bilinear(f.reshape(b * (lt - 1), height, width, 2), (h, w), False, scale_factor=0.25)
            return f.reshape(b, lt - 1, h, w, 2) / 4.0

        def ds_masks(m, n):
            return resize_nearest(m[:, :n].reshape(b * n, height, width, 1), (h, w), 0.25).reshape(b, n, h, w, 1)

        ds_mask_in = ds_masks(masks_in, t)
        pooled_frames = t if self.training else lt
        mask_pool = _max_pool(ds_mask_in[:, :pooled_frames].reshape(b * pooled_frames, h, w, 1), k, s, p)
        mask_pool = mask_pool.reshape(b, pooled_frames, fh, fw)
        prop_mask = jnp.concatenate([ds_mask_in[:, :lt], ds_masks(masks_updated, lt)], axis=-1)

        # feature propagation over the local frames
        local, aligned_b, aligned_f = self.feat_prop_module(enc[:, :lt], ds_flows(flows_f), ds_flows(flows_b),
                                                            prop_mask, interpolation)
        self.sow("intermediates", "feat_prop_module.deform_align.backward_1", aligned_b)
        self.sow("intermediates", "feat_prop_module.deform_align.forward_1", aligned_f)
        self.sow("intermediates", "feat_prop_module_out", local.reshape(b * lt, h, w, c))
        feat = jnp.concatenate([local, enc[:, lt:]], axis=1).reshape(b * t, h, w, c)

        # soft split -> sparse transformer -> soft composition (overlaps summed) + bias conv
        tokens = self.ss(unfold(feat.astype(self.dtype), k, s, p)).reshape(b, t, fh, fw, self.hidden)
        self.sow("intermediates", "ss_out", tokens)
        window_masked = _window_mask(mask_pool, self.window)
        for i, block in enumerate(self.transformers):
            frames = tuple(range(i % t_dilation, t, t_dilation))
            tokens, attended = block(tokens, (h, w), window_masked, frames)
            if i == 0:
                self.sow("intermediates", "transformers.transformer.0.attention", attended)
            if i in (0, self.num_blocks - 1):
                self.sow("intermediates", f"transformers.transformer.{i}", tokens)
        patches = self.sc(tokens).reshape(b * t, fh, fw, c * k * k)
        sc = self.sc_bias_conv(fold(patches, (h, w), k, s, p))
        self.sow("intermediates", "sc_out", sc)
        feat = (feat + sc.astype(jnp.float32)).reshape(b, t, h, w, c)

        out_frames = t if self.training else lt
        y = self.decoder(feat[:, :out_frames].reshape(b * out_frames, h, w, c).astype(self.dtype))
        self.sow("intermediates", "decoder_out", y)
        return jnp.tanh(y.astype(jnp.float32)).reshape(b, out_frames, height, width, 3)


def _local_frames(num_local_frames, t: int) -> int:
    if num_local_frames is None:
        return t
    if isinstance(num_local_frames, bool) or not isinstance(num_local_frames, (int, np.integer)):
        raise ValueError("num_local_frames must be a Python int (static under jit: jax.jit(..., static_argnames="
                         f"'num_local_frames')); got {type(num_local_frames).__name__}")
    if not 2 <= num_local_frames <= t:
        raise ValueError(f"num_local_frames must be between 2 and the number of frames T = {t} (flows join pairs of "
                         f"local frames); got {num_local_frames}")
    return int(num_local_frames)


def _max_pool(x, kernel: int, stride: int, padding: int):
    """nn.MaxPool2d(kernel, stride, padding) on (N, H, W, C) (padding never wins: -inf)."""
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, kernel, kernel, 1), (1, stride, stride, 1), pad)


def _window_mask(mask_pool, window):
    """(B, L, fh, fw) token-grid masks -> (B, nh * nw) bool: does any of the L frames have a hole token in the
    window (the grid zero-padded at the bottom/right to whole windows; windows row-major)."""
    b, n, fh, fw = mask_pool.shape
    wh, ww = window
    nh, nw = -(-fh // wh), -(-fw // ww)
    m = jnp.pad(mask_pool, ((0, 0), (0, 0), (0, nh * wh - fh), (0, nw * ww - fw)))
    m = m.reshape(b, n, nh, wh, nw, ww).max(axis=(3, 5)).sum(axis=1)
    return m.reshape(b, nh * nw) != 0


# --- propagation ----------------------------------------------------------------------------------
def fb_consistency(flow_fw, flow_bw, alpha1: float = 0.01, alpha2: float = 0.5):
    """Forward-backward check (N, H, W, 2) x2 -> (N, H, W, 1) float 0/1: 1 where
    |fw + warp(bw, fw)|^2 < alpha1 (|fw|^2 + |warp(bw, fw)|^2) + alpha2 (bilinear warp)."""
    bw_warped = flow_warp(flow_bw, flow_fw)
    sq = lambda a: jnp.sum(jnp.square(a), axis=-1, keepdims=True)  # noqa: E731
    thresh = alpha1 * (sq(flow_fw) + sq(bw_warped)) + alpha2
    return (sq(flow_fw + bw_warped) < thresh).astype(flow_fw.dtype)


def _step_flows(flows_prop, flows_check, backward: bool):
    """Per-step (prop, check) flows (N, B, h, w, 2) of one pass, step 0 a zero placeholder: the backward pass
    (frames T-1..0) uses flows index T-1-i at step i, the forward pass index i-1."""
    to_steps = lambda f: jnp.moveaxis(f[:, ::-1] if backward else f, 1, 0)  # noqa: E731
    zero = jnp.zeros_like(flows_prop[:, :1].swapaxes(0, 1))
    return (jnp.concatenate([zero, to_steps(flows_prop)]), jnp.concatenate([zero, to_steps(flows_check)]))


def image_propagation(frames, flows_f, flows_b, masks, interpolation: str = "nearest"):
    """The official img_prop_module (BidirectionalPropagation(3, learnable=False)): frames (B, T, H, W, C), flows
    (B, T-1, H, W, 2), masks (B, T, H, W, 1) -> the forward pass's (frames, masks). Step i >= 1: the previous
    result warped with `interpolation`, its mask warped bilinearly and binarised at 0.1; pixels that are holes,
    flow-consistent and known in the warped previous result take the warped value and become known.

    The scans carry and stack frames, masks and flows lane-dense, (B, H, W * channels), and unpack one frame at a
    time: a TPU stores the minor axis in 128-wide lanes, where 1-3 channels take 43-128x their size (ProPainter's
    paper step held its 10-frame propagation stacks in 530 MB buffers)."""
    w, c = frames.shape[3:]
    pixels = lambda a, channels: a.reshape(*a.shape[:-1], w, channels)  # noqa: E731

    def step(carry, xs):
        i, prev, prev_mask = carry[0], pixels(carry[1], c), pixels(carry[2], 1)
        current, mask_cur, flow, check = (pixels(a, n) for a, n in zip(xs, (c, 1, 2, 2)))
        valid = fb_consistency(flow, check)
        warped = flow_warp(prev, flow, interpolation)
        warped_mask = (flow_warp(prev_mask, flow) > 0.1).astype(prev.dtype)
        fill = (mask_cur * valid * (1 - warped_mask)) > 0.1
        feat = jnp.where(fill, warped, current)
        mask = ((mask_cur * (1 - valid * (1 - warped_mask))) > 0.1).astype(prev.dtype)
        feat, mask = lane_dense(jnp.where(i > 0, feat, current)), lane_dense(jnp.where(i > 0, mask, mask_cur))
        return (i + 1, feat, mask), (feat, mask)

    def run(inputs, in_masks, backward: bool):
        flows = (_step_flows(lane_dense(flows_f), lane_dense(flows_b), True) if backward
                 else _step_flows(lane_dense(flows_b), lane_dense(flows_f), False))
        xs = [jnp.moveaxis(a, 1, 0) for a in (inputs, in_masks)]
        if backward:
            xs = [a[::-1] for a in xs]
        init = (jnp.zeros((), jnp.int32), jnp.zeros_like(xs[0][0]), jnp.zeros_like(xs[1][0]))
        _, (feats, out_masks) = jax.lax.scan(step, init, (*xs, *flows))
        if backward:
            feats, out_masks = feats[::-1], out_masks[::-1]
        return jnp.moveaxis(feats, 0, 1), jnp.moveaxis(out_masks, 0, 1)

    feats, out_masks = run(lane_dense(frames), lane_dense(masks), True)
    feats, out_masks = run(feats, out_masks, False)
    return pixels(feats, c), pixels(out_masks, 1)


class FlowGuidedDeformableAlignment(nn.Module):
    """ProPainter's DeformableAlignment: conv_offset (conv3x3 -> LReLU(0.1) x3 -> conv3x3 to 27 * groups) on the
    condition gives (o1, o2, m); offset = 3 * tanh(cat(o1, o2)) + the flow as (dy, dx) on every (group, tap) pair;
    mask = sigmoid(m); a modulated deformable conv 3x3 (pad 1) of x (the UNWARPED previous feature). Offsets in
    float32; returns the raw deformable-conv output (N, H, W, features)."""

    features: int = CHANNELS
    deform_groups: int = DEFORM_GROUPS
    max_residue_magnitude: float = MAX_RESIDUE
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, cond, flow):
        act = lambda a: jax.nn.leaky_relu(a, 0.1)  # noqa: E731
        out = act(conv2d(self.features, 3, dtype=self.dtype, name="conv_offset_0")(cond.astype(self.dtype)))
        out = act(conv2d(self.features, 3, dtype=self.dtype, name="conv_offset_2")(out))
        out = act(conv2d(self.features, 3, dtype=self.dtype, name="conv_offset_4")(out))
        out = nn.Conv(27 * self.deform_groups, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                      kernel_init=nn.initializers.zeros, name="conv_offset_6",
                      conv_general_dilated=conv_general_dilated)(out).astype(jnp.float32)
        o1, o2, m = jnp.split(out, 3, axis=-1)
        offset = self.max_residue_magnitude * jnp.tanh(jnp.concatenate([o1, o2], axis=-1))
        offset = offset + jnp.tile(flow.astype(jnp.float32)[..., ::-1], (1, 1, 1, offset.shape[-1] // 2))
        kernel = self.param("kernel", _dcn_kernel_init, (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return modulated_deform_conv2d(x.astype(self.dtype), offset, jax.nn.sigmoid(m), kernel, bias, 1, 1, 1, 1,
                                       self.deform_groups)


class FeaturePropagationStep(nn.Module):
    """One step of a learnable pass. carry (step index, previous result); xs (current feature, flow, check flow,
    2-channel mask). Step 0 keeps the current feature; later steps align the previous result. Every step adds
    backbone(cat(current, result, mask)). Returns (carry, (result, aligned))."""

    channels: int = CHANNELS
    interpolation: str = "bilinear"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, carry, xs):
        i, prev = carry
        current, flow, check, mask = xs
        valid = fb_consistency(flow, check)
        warped = flow_warp(prev, flow, self.interpolation)
        cond = jnp.concatenate([current, warped, flow, valid, mask], axis=-1)
        aligned = FlowGuidedDeformableAlignment(self.channels, dtype=self.dtype, name="deform_align")(
            prev, cond, flow).astype(jnp.float32)
        feat = jnp.where(i > 0, aligned, current)
        refine = jnp.concatenate([current, feat, mask], axis=-1).astype(self.dtype)
        refine = _lrelu(conv2d(self.channels, 3, dtype=self.dtype, name="backbone_0")(refine))
        feat = feat + conv2d(self.channels, 3, dtype=self.dtype, name="backbone_2")(refine).astype(jnp.float32)
        return (i + 1, feat), (feat, aligned)


class FeaturePropagation(nn.Module):
    """The official feat_prop_module (BidirectionalPropagation(128, learnable=True)): x (B, L, h, w, C), flows
    (B, L-1, h, w, 2), mask (B, L, h, w, 2) -> (fuse(cat(backward, forward, mask)) + x, the backward pass's and the
    forward pass's first alignments (B, h, w, C), step 1 of each)."""

    channels: int = CHANNELS
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, flows_f, flows_b, mask, interpolation: str = "bilinear"):
        frames = jnp.moveaxis(x, 1, 0).astype(jnp.float32)  # (L, B, h, w, C)
        masks = jnp.moveaxis(mask, 1, 0).astype(jnp.float32)
        scan = nn.scan(FeaturePropagationStep, variable_broadcast="params", split_rngs={"params": False},
                       in_axes=0, out_axes=0)
        init = (jnp.zeros((), jnp.int32), jnp.zeros_like(frames[0]))
        _, (backward, aligned_b) = scan(self.channels, interpolation, self.dtype, name="backward_1")(
            init, (frames[::-1], *_step_flows(flows_f, flows_b, True), masks[::-1]))
        backward = backward[::-1]
        # the forward pass runs over the backward pass's results (and the same masks)
        _, (forward, aligned_f) = scan(self.channels, interpolation, self.dtype, name="forward_1")(
            init, (backward, *_step_flows(flows_b, flows_f, False), masks))
        # batch-major again before the fusion convs flatten the leading axes: flattening (L, B) would interleave a
        # batch sharded over devices, and XLA gathered the whole batch on every device (all-gathers per step)
        batch_major = lambda a: jnp.moveaxis(a, 0, 1)  # noqa: E731
        fused = jnp.concatenate([batch_major(backward), batch_major(forward), mask.astype(jnp.float32)],
                                axis=-1).astype(self.dtype)
        fused = _lrelu(conv2d(self.channels, 3, dtype=self.dtype, name="fuse_0")(fused))
        fused = conv2d(self.channels, 3, dtype=self.dtype, name="fuse_2")(fused).astype(jnp.float32)
        return fused + x.astype(jnp.float32), aligned_b[1], aligned_f[1]


# --- transformer ----------------------------------------------------------------------------------
class TemporalSparseTransformer(nn.Module):
    """x + SparseWindowAttention(LN1(x)); x + FusionFeedForward(LN2(x)) (exact GELU). Returns (x, attention
    output before the residual)."""

    dim: int
    heads: int
    window: tuple
    pool: tuple
    ffn_hidden: int
    kernel: int
    stride: int
    padding: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, feature_size, window_masked, frames):
        ln = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)  # noqa: E731
        attended = SparseWindowAttention(self.dim, self.heads, self.window, self.pool, self.dtype,
                                         name="attention")(ln("norm1")(x), window_masked, frames)
        x = x + attended
        x = x + FusionFeedForward(self.dim, self.ffn_hidden, self.kernel, self.stride, self.padding, "gelu",
                                  self.dtype, name="mlp")(ln("norm2")(x), feature_size)
        return x, attended


class DepthwisePool(nn.Module):
    """Conv2d(C, C, k, stride k, groups C) with bias on (N, H, W, C) (trailing rows/columns dropped)."""

    size: tuple
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        n, h, w, c = x.shape
        ph, pw = self.size
        kernel = self.param("kernel", nn.initializers.constant(1.0 / (ph * pw)), (ph, pw, 1, c), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        oh, ow = h // ph, w // pw
        x = x[:, : oh * ph, : ow * pw].reshape(n, oh, ph, ow, pw, c)
        return jnp.einsum("nipjqc,pqc->nijc", x, kernel[:, :, 0].astype(self.dtype)) + bias.astype(self.dtype)


class SparseWindowAttention(nn.Module):
    """ProPainter's mask-guided sparse window attention on tokens (B, T, fh, fw, C) (see the module docstring).

    window_masked (B, nh * nw) bool from `_window_mask`; frames: the static tuple of frames whose keys the masked
    windows read (t_dilation). Returns (B, T, fh, fw, C) after the output projection."""

    dim: int
    heads: int
    window: tuple
    pool: tuple
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, window_masked, frames):
        b, t, fh, fw, c = x.shape
        wh, ww = self.window
        nh, nw = -(-fh // wh), -(-fw // ww)
        nwin, n = nh * nw, wh * ww
        x = jnp.pad(x, ((0, 0), (0, 0), (0, nh * wh - fh), (0, nw * ww - fw), (0, 0)))  # padding joins as keys
        dense = lambda name: nn.Dense(c, dtype=self.dtype, kernel_init=normal_init, name=name)  # noqa: E731
        query, key, value = dense("query"), dense("key"), dense("value")
        q, k, v = query(x), key(x), value(x)
        windows = lambda a: window_partition(a, self.window).reshape(b, nwin, t, n, c)  # noqa: E731
        qw, kw, vw = windows(q), windows(k), windows(v)
        expand = ((wh + 1) // 2, (ww + 1) // 2)
        ring = lambda a: rolled_tokens(a, self.window, expand).reshape(b, nwin, t, -1, c)  # noqa: E731
        pooled = DepthwisePool(self.pool, self.dtype, name="pool_layer")(x.reshape(b * t, nh * wh, nw * ww, c))
        pooled = pooled.reshape(b, 1, t, -1, c)
        per_frame = lambda own, a, proj: jnp.concatenate(  # noqa: E731
            [own, ring(a), jnp.broadcast_to(proj(pooled), (b, nwin, t, pooled.shape[3], c))], axis=3)
        sel = np.asarray(frames)
        keys = per_frame(kw, k, key)[:, :, sel].reshape(b, nwin, -1, c)
        values = per_frame(vw, v, value)[:, :, sel].reshape(b, nwin, -1, c)
        scale = 1.0 / math.sqrt(c // self.heads)
        heads = lambda a: split_heads(a, self.heads)  # noqa: E731
        # masked windows: all T frames' queries jointly over the selected frames' own + rolled + pooled keys
        joint = attend(heads(qw.reshape(b, nwin, t * n, c)), heads(keys), heads(values), scale=scale)
        joint = merge_heads(joint).reshape(b, nwin, t, n, c)
        # unmasked windows: each frame's queries over its own window tokens
        alone = merge_heads(attend(heads(qw), heads(kw), heads(vw), scale=scale))
        out = jnp.where(window_masked[:, :, None, None, None], joint, alone)
        out = window_reverse(out.reshape(b, nh, nw, t, n, c), self.window)[:, :, :fh, :fw]
        return nn.Dense(self.dim, dtype=self.dtype, kernel_init=normal_init, name="proj")(out)


# --- checkpoints ---------------------------------------------------------------------------------------
_ANCHOR = "feat_prop_module.deform_align.backward_1.conv_offset.0.weight"


def _identify(sd) -> str | None:
    """What another network's state_dict is, or None when it looks like ProPainter's InpaintGenerator."""
    keys = list(sd.keys())
    if _ANCHOR in sd and "transformers.transformer.0.attention.query.weight" in sd:
        return None
    if any(k == "fnet.conv1.weight" or k.endswith(".fnet.conv1.weight") for k in keys):
        return "a RAFT optical-flow checkpoint (raft-things.pth layout); load it as model 'raft'"
    if "feat_prop_module.deform_align.backward_.conv_offset.0.weight" in sd or "downsample.0.weight" in sd:
        return ("a ProPainter RecurrentFlowCompleteNet checkpoint (recurrent_flow_completion.pth layout); load it as "
                "model 'recurrent_flow_completion'")
    shown = ", ".join(sorted(keys)[:6]) + (" ..." if len(keys) > 6 else "")
    return (f"not a ProPainter InpaintGenerator state_dict (no '{_ANCHOR}' among its {len(keys)} keys: "
            f"{shown or 'none'})")


def from_torch(sd, model: InpaintGenerator) -> dict:
    """Key mapping of the official InpaintGenerator (ProPainter.pth)."""
    what = _identify(sd)
    if what is not None:
        raise CheckpointError(f"checkpoint does not match model 'propainter': it is {what}")
    fp = "feat_prop_module"
    prop = {"fuse_0": sd.conv(f"{fp}.fuse.0"), "fuse_2": sd.conv(f"{fp}.fuse.2")}
    for branch in ("backward_1", "forward_1"):
        align = sd.conv(f"{fp}.deform_align.{branch}")
        for i in (0, 2, 4, 6):
            align[f"conv_offset_{i}"] = sd.conv(f"{fp}.deform_align.{branch}.conv_offset.{i}")
        prop[branch] = {"deform_align": align, "backbone_0": sd.conv(f"{fp}.backbone.{branch}.0"),
                        "backbone_2": sd.conv(f"{fp}.backbone.{branch}.2")}
    wh, ww = model.window
    expected_rolled = rolled_ring_indices(model.window, ((wh + 1) // 2, (ww + 1) // 2))
    params = {"encoder": encoder_from_torch(sd),
              "feat_prop_module": prop, "ss": sd.linear("ss.embedding")}
    for i in range(model.num_blocks):
        p = f"transformers.transformer.{i}"
        rolled = sd.raw(f"{p}.attention.valid_ind_rolled", np.int64).reshape(-1)  # a derived table: check it
        if rolled.size and (rolled.shape != expected_rolled.shape or (rolled != expected_rolled).any()):
            raise CheckpointError(f"checkpoint does not match model 'propainter': {p}.attention.valid_ind_rolled = "
                                  f"{rolled.tolist()} differs from the indices this model derives for window "
                                  f"{tuple(model.window)}")
        attention = {n: sd.linear(f"{p}.attention.{n}") for n in ("query", "key", "value", "proj")}
        attention["pool_layer"] = sd.conv(f"{p}.attention.pool_layer")
        params[f"transformers_{i}"] = {"attention": attention, "norm1": sd.norm(f"{p}.norm1"),
                                       "norm2": sd.norm(f"{p}.norm2"),
                                       "mlp": {"fc1": sd.linear(f"{p}.mlp.fc1.0"), "fc2": sd.linear(f"{p}.mlp.fc2.1")}}
    params["sc"] = sd.linear("sc.embedding")
    params["sc_bias_conv"] = sd.conv("sc.bias_conv")
    params["decoder"] = decoder_from_torch(sd)
    return {"params": params}


def example_inputs(model: InpaintGenerator):
    frames = jnp.zeros((1, 2, 16, 16, 3), jnp.float32)
    masks = jnp.zeros((1, 2, 16, 16, 1), jnp.float32)
    flows = jnp.zeros((1, 1, 16, 16, 2), jnp.float32)
    return frames, (flows, flows), masks, masks, 2


register("propainter", InpaintGenerator, from_torch, example_inputs, kind="block", pipeline="propainter",
         trained_by="inpainting", train_inputs="flow_guided", discriminator="fuseformer_discriminator",
         description="ProPainter's InpaintGenerator (ICCV 2023): image propagation (img_propagation) and the "
                     "generator forward (frames, completed flows, masks, updated masks, num_local_frames); "
                     "video inpainting with RAFT and the flow completion network: inference.propainter")
