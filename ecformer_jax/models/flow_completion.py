"""ProPainter's recurrent flow completion network (`RecurrentFlowCompleteNet`, sczhou/ProPainter
model/recurrent_flow_completion.py; Zhou et al., "ProPainter", ICCV 2023): completes the optical flows inside
the holes of a clip before ProPainter propagates pixels along them.

    model = models.build("recurrent_flow_completion")
    pred, edges = model.apply(variables, masked_flows, masks)                    # official forward
    (pred_f, pred_b), _ = model.apply(variables, (flows_f, flows_b), masks, method="forward_bidirect_flow")
    comb_f, comb_b = model.apply(variables, (flows_f, flows_b), (pred_f, pred_b), masks, method="combine_flow")

Layouts are channels-last: flows (B, N, H, W, 2) in pixels, channel 0 horizontal (x), masks (B, N, H, W, 1) with
1 = hole (forward); for the bidirectional calls flows (B, T-1, H, W, 2) (flows_f[:, k]: frame k -> k+1,
flows_b[:, k]: frame k+1 -> k) and masks (B, T, H, W, 1). H and W must be multiples of 8.

* `__call__` (the official `forward(masked_flows, masks)`): the flows are expected already zeroed in the holes;
  returns (flows (B, N, H, W, 2), None), or (flows, edges (B, N, H, W, 1)) when built with training=True (the
  official training mode also runs the edge detector on the prediction).
* `forward_bidirect_flow(masked_flows_bi, masks)`: forward direction flows_f * (1 - masks[:, :-1]) with
  masks[:, :-1]; backward direction flows_b * (1 - masks[:, 1:]) with masks[:, 1:], reversed in time through
  the same network and the prediction reversed back. Returns ((pred_f, pred_b), (edges_f, edges_b)), the edges
  None unless training=True. (The official lists are tuples here.)
* `combine_flow(masked_flows_bi, pred_flows_bi, masks)`: the prediction inside the holes and the input flow
  outside: (pred_f * m_f + flows_f * (1 - m_f), likewise backward), m_f = masks[:, :-1], m_b = masks[:, 1:].
* `detect_edges(flows)`: the edge detector (training-only branch) on flows (B, N, H, W, 2) -> (B, N, H, W, 1).

Network: input cat(flow x, flow y, mask) per frame; downsample Conv3d (1,5,5)/2 with replicate padding; two P3D
encoders (each: spatial (1,3,3) conv + LReLU(0.2), then a temporal (3,1,1) conv with dilation 2 and zero padding
2, no skip) to 1/4 and 1/8; three dilated (3, 2, 1) Conv3d; a second-order recurrent propagation at 1/8 that
uses no flow (backward pass over frames N-1..0, then a forward pass 0..N-1 that also reads the backward pass's
result of each frame; deformable alignment with offsets 5 * tanh(.), 16 offset groups; fusion conv1x1 +
residual); per-frame decoders with bilinear x2 (align_corners) + conv upsampling and the encoder1 skip.

The recurrence runs as a scan (one compiled step per pass whatever N). Intermediates (apply(...,
mutable=["intermediates"]), channels-last, the official module path -> our key in `INTERMEDIATES`) are those
of every forward call: downsample, encoder1, encoder2, mid_dilation (B, N, h, w, C), the backward pass's first
deformable alignment (B, h, w, 128), the propagation output and the decoders (B * N, h, w, C), b-major.

Checkpoints: the bare state_dict of `recurrent_flow_completion.pth` (74 keys, parameters only; the edge
detector's keys are converted too). RAFT, ProPainter generator and other state_dicts are refused naming them.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecformer_jax.errors import CheckpointError
from ecformer_jax.layers.checks import check_video
from ecformer_jax.layers.conv import Deconv, conv2d, conv_general_dilated, normal_init
from ecformer_jax.layers.deform import _dcn_kernel_init, deform_align_from_torch, modulated_deform_conv2d
from ecformer_jax.models.registry import register

CHANNELS = 128
DEFORM_GROUPS = 16
MAX_RESIDUE = 5.0

# official module path (the fixture's intermediate names) -> our intermediates key
INTERMEDIATES = {
    "downsample": "downsample_out",
    "encoder1": "encoder1_out",
    "encoder2": "encoder2_out",
    "mid_dilation": "mid_dilation_out",
    "feat_prop_module.deform_align.backward_": "feat_prop_module.deform_align.backward_",
    "feat_prop_module": "feat_prop_module_out",
    "decoder2": "decoder2_out",
    "decoder1": "decoder1_out",
}


def _lrelu(x, slope: float = 0.2):
    return jax.nn.leaky_relu(x, slope)


class Conv3d(nn.Module):
    """nn.Conv3d on (B, N, H, W, C) for the two kernel shapes of this network: (1, k, k) (a 2-D conv over all
    frames, spatial stride / padding / dilation) and (k, 1, 1) (a temporal conv, temporal padding / dilation,
    zero padded). Params kernel (kt, kh, kw, Cin, Cout) and bias, as the converter maps Conv3d weights."""

    features: int
    kernel: tuple = (1, 3, 3)
    stride: int = 1  # spatial
    padding: int = 1  # spatial for (1, k, k), temporal for (k, 1, 1)
    dilation: int = 1  # likewise
    replicate: bool = False  # spatial replicate padding instead of zeros
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, n, h, w, cin = x.shape
        kt, kh, kw = self.kernel
        kernel = self.param("kernel", normal_init, (kt, kh, kw, cin, self.features), jnp.float32).astype(self.dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
        x = x.astype(self.dtype)
        p, d = self.padding, self.dilation
        if kt == 1:
            y = x.reshape(b * n, h, w, cin)
            pad = ((p, p), (p, p))
            if self.replicate:
                y = jnp.pad(y, ((0, 0), (p, p), (p, p), (0, 0)), mode="edge")
                pad = ((0, 0), (0, 0))
            y = conv_general_dilated(y, kernel[0], (self.stride, self.stride), pad, rhs_dilation=(d, d),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
            y = y.reshape(b, n, *y.shape[1:])
        else:
            if kh != 1 or kw != 1 or self.stride != 1 or self.replicate:
                raise ValueError("Conv3d here supports (1, k, k) or (k, 1, 1) kernels, the latter unstrided")
            # a 2-D conv over (time, pixels): no stacked copy of the taps (3x the input: 7 GB for 80 720p frames)
            y = conv_general_dilated(x.reshape(b, n, h * w, cin), kernel.reshape(kt, 1, cin, self.features),
                                     (1, 1), ((p, p), (0, 0)), rhs_dilation=(d, 1),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
            y = y.reshape(b, y.shape[1], h, w, self.features)
        return y + bias


class P3DBlock(nn.Module):
    """Conv3d (1,3,3) stride (1,s,s) pad (0,1,1) + LReLU(0.2), then Conv3d (3,1,1) pad 2 dilation 2 (temporal)."""

    features: int
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, valid=None):
        """valid (N,): 0 for frames outside the video (a chunk's halo past its ends), which the temporal conv
        must see as its zero padding."""
        x = _lrelu(Conv3d(self.features, (1, 3, 3), self.stride, 1, dtype=self.dtype, name="conv1")(x))
        if valid is not None:
            x = x * valid[None, :, None, None, None].astype(x.dtype)
        return Conv3d(self.features, (3, 1, 1), 1, 2, 2, dtype=self.dtype, name="conv2")(x)


class DeformableAlignment(nn.Module):
    """The flow completion's SecondOrderDeformableAlignment (no flow term): conv_offset (conv3x3 -> LReLU(0.1)
    x3 -> conv3x3 to 27 * deform_groups) on `cond` gives (o1, o2, m) thirds; offset = 5 * tanh(cat(o1, o2)),
    mask = sigmoid(m); then the modulated deformable conv 3x3 (pad 1) of x with deform_groups groups."""

    features: int = CHANNELS
    deform_groups: int = DEFORM_GROUPS
    max_residue_magnitude: float = MAX_RESIDUE
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, cond):
        act = lambda a: jax.nn.leaky_relu(a, 0.1)  # noqa: E731
        out = act(conv2d(self.features, 3, dtype=self.dtype, name="conv_offset_0")(cond.astype(self.dtype)))
        out = act(conv2d(self.features, 3, dtype=self.dtype, name="conv_offset_2")(out))
        out = act(conv2d(self.features, 3, dtype=self.dtype, name="conv_offset_4")(out))
        out = nn.Conv(27 * self.deform_groups, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                      kernel_init=nn.initializers.zeros, name="conv_offset_6",
                      conv_general_dilated=conv_general_dilated)(out).astype(jnp.float32)
        o1, o2, m = jnp.split(out, 3, axis=-1)
        offset = self.max_residue_magnitude * jnp.tanh(jnp.concatenate([o1, o2], axis=-1))
        kernel = self.param("kernel", _dcn_kernel_init, (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return modulated_deform_conv2d(x.astype(self.dtype), offset, jax.nn.sigmoid(m), kernel, bias, 1, 1, 1, 1,
                                       self.deform_groups)


class PropagationStep(nn.Module):
    """One step of a propagation pass. carry (step index, previous result, result two steps back); xs (current
    feature, [backward-pass result of this frame: forward pass only]). Returns (carry, (result, aligned))."""

    channels: int = CHANNELS
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, carry, xs):
        i, prev, prev2 = carry
        current, others = xs[0], list(xs[1:])
        cond = jnp.concatenate([prev, current, prev2], axis=-1)
        aligned = DeformableAlignment(self.channels, dtype=self.dtype, name="deform_align")(
            jnp.concatenate([prev, prev2], axis=-1), cond)
        aligned = jnp.where(i > 0, aligned.astype(prev.dtype), jnp.zeros_like(prev))  # step 0 starts from zeros
        feat = jnp.concatenate([current, *others, aligned], axis=-1).astype(self.dtype)
        feat = _lrelu(conv2d(self.channels, 3, dtype=self.dtype, name="backbone_0")(feat), 0.1)
        result = aligned + conv2d(self.channels, 3, dtype=self.dtype, name="backbone_2")(feat).astype(prev.dtype)
        return (i + 1, result, prev), (result, aligned)


class BidirectionalPropagation(nn.Module):
    """Backward pass (frames N-1..0), then forward pass (0..N-1, also fed the backward result of each frame);
    output per frame fusion(cat(backward, forward)) + input. x (B, N, h, w, C) -> (B, N, h, w, C); also returns
    the backward pass's first alignment (step 1; zeros-derived if N == 1)."""

    channels: int = CHANNELS
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, n, h, w, c = x.shape
        frames = jnp.moveaxis(x, 1, 0).astype(jnp.float32)  # (N, B, h, w, C)
        scan = nn.scan(PropagationStep, variable_broadcast="params", split_rngs={"params": False}, in_axes=0,
                       out_axes=0)
        zeros = jnp.zeros((b, h, w, self.channels), jnp.float32)
        init = (jnp.zeros((), jnp.int32), zeros, zeros)
        _, (backward, aligned_b) = scan(self.channels, self.dtype, name="backward_")(init, (frames[::-1],))
        backward = backward[::-1]
        _, (forward, _) = scan(self.channels, self.dtype, name="forward_")(init, (frames, backward))
        # batch-major before the fusion conv flattens the leading axes: flattening (N, B) interleaves a batch
        # sharded over devices, and XLA then gathers the whole batch on every device
        batch_major = lambda a: jnp.moveaxis(a, 0, 1)  # noqa: E731
        fused = conv2d(self.channels, 1, dtype=self.dtype, name="fusion")(
            jnp.concatenate([batch_major(backward), batch_major(forward)], axis=-1)).astype(jnp.float32)
        first = aligned_b[1] if n > 1 else aligned_b[0]
        return fused + x.astype(jnp.float32), first


class EdgeDetection(nn.Module):
    """p = LReLU(0.2)(conv 2->16); e = conv(LReLU(0.2)(conv(p))); sigmoid(conv1x1(LReLU(0.01)(p + e)))."""

    mid: int = 16
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, flow):
        p = _lrelu(conv2d(self.mid, 3, dtype=self.dtype, name="projection")(flow.astype(self.dtype)))
        e = _lrelu(conv2d(self.mid, 3, dtype=self.dtype, name="mid_layer_1")(p))
        e = conv2d(self.mid, 3, dtype=self.dtype, name="mid_layer_2")(e)
        return jax.nn.sigmoid(conv2d(1, 1, dtype=self.dtype, name="out_layer")(_lrelu(p + e, 0.01)))


DECODE_FRAMES = 8  # frames of each clip decoded at a time: the decoder's full-resolution 32-channel maps of every
# frame never exist at once (80 720p frames: 9.3 GB for one of them)
ENCODE_FRAMES = 16  # frames encoded at a time in clips longer than ENCODE_FRAMES + 2 * HALO: the encoder's
# 1/2-resolution maps of every frame never exist at once (80 720p frames: 2.3 GB each)
HALO = 8  # the encoder's reach in time: four temporal convs of dilation 2 (each chunk encodes HALO more frames
# on each side, whose values its edges spoil, and keeps its middle ENCODE_FRAMES: the same numbers)


class RecurrentFlowCompleteNet(nn.Module):
    """ProPainter's flow completion network; see the module docstring for the calls, layouts and intermediates."""

    training: bool = False  # the official training mode: forward also returns the edge map of its prediction
    dtype: Any = jnp.float32  # convolutions; offsets, recurrence carries and outputs stay float32

    def setup(self):
        d = self.dtype
        self.downsample = Conv3d(32, (1, 5, 5), 2, 2, replicate=True, dtype=d)
        self.encoder1 = [P3DBlock(32, 1, d), P3DBlock(64, 2, d)]
        self.encoder2 = [P3DBlock(64, 1, d), P3DBlock(128, 2, d)]
        self.mid_dilation = [Conv3d(CHANNELS, (1, 3, 3), 1, r, r, dtype=d) for r in (3, 2, 1)]
        self.feat_prop_module = BidirectionalPropagation(CHANNELS, d)
        self.decoder2_0 = conv2d(128, 3, dtype=d)
        self.decoder2_2 = Deconv(64, d)
        self.decoder1_0 = conv2d(64, 3, dtype=d)
        self.decoder1_2 = Deconv(32, d)
        self.upsample_0 = conv2d(32, 3, dtype=d)
        self.upsample_2 = Deconv(2, d)
        self.edge_detector = EdgeDetection(16, d)

    def _check(self, flows, masks, what: str):
        b, n, h, w, _ = check_video(flows, f"{what} flows", 2)
        check_video(masks, f"{what} masks", 1)
        if h % 8 or w % 8:
            raise ValueError(f"{what}: H and W must be multiples of 8 (three stride-2 stages); got {h}x{w}")
        return b, n, h, w

    def __call__(self, masked_flows, masks):
        """The official forward: masked_flows (B, N, H, W, 2), masks (B, N, H, W, 1) -> (flows, edges or None)."""
        b, n, h, w = self._check(masked_flows, masks, "RecurrentFlowCompleteNet")
        if tuple(masks.shape[:4]) != (b, n, h, w):
            raise ValueError(f"RecurrentFlowCompleteNet: masks {tuple(masks.shape)} must match the flows "
                             f"{tuple(masked_flows.shape)} in (B, N, H, W)")
        x = jnp.concatenate([masked_flows.astype(jnp.float32), masks.astype(jnp.float32)], axis=-1)
        if n <= ENCODE_FRAMES + 2 * HALO:
            x, feat_e1 = self._encode(x, record=True)
        else:  # ENCODE_FRAMES frames at a time, each chunk with HALO frames of context on each side
            chunks = -(-n // ENCODE_FRAMES)
            span = ENCODE_FRAMES + 2 * HALO
            padded = jnp.pad(x, ((0, 0), (HALO, chunks * ENCODE_FRAMES - n + HALO), (0, 0), (0, 0), (0, 0)))
            valid = jnp.pad(jnp.ones((n,), x.dtype), (HALO, chunks * ENCODE_FRAMES - n + HALO))

            def chunk(mdl, carry, start, padded, valid):
                part = jax.lax.dynamic_slice_in_dim(padded, start, span, axis=1)
                y, e1 = mdl._encode(part, jax.lax.dynamic_slice_in_dim(valid, start, span))
                return carry, (y[:, HALO:HALO + ENCODE_FRAMES], e1[:, HALO:HALO + ENCODE_FRAMES])

            scan = nn.scan(chunk, variable_broadcast="params", split_rngs={"params": False},
                           in_axes=(0, nn.broadcast, nn.broadcast))
            _, (x, feat_e1) = scan(self, None, jnp.arange(chunks) * ENCODE_FRAMES, padded, valid)
            # (chunks, B, F, ...) -> (B, N, ...)
            join = lambda a: jnp.moveaxis(a, 0, 1).reshape(b, chunks * ENCODE_FRAMES, *a.shape[3:])[:, :n]  # noqa
            x, feat_e1 = join(x), join(feat_e1)
        x, aligned = self.feat_prop_module(x)
        self.sow("intermediates", "feat_prop_module.deform_align.backward_", aligned)
        self.sow("intermediates", "feat_prop_module_out", x.reshape(b * n, *x.shape[2:]))
        if n <= DECODE_FRAMES:
            flow = self._decode(x.reshape(b * n, *x.shape[2:]), feat_e1.reshape(b * n, *feat_e1.shape[2:]),
                                record=True).reshape(b, n, h, w, 2)
        else:  # DECODE_FRAMES frames of every clip at a time (the last group padded): the same per-frame numbers.
            # Grouped along time, not along the flattened (B * N) frames, so a batch sharded over devices stays put.
            groups = -(-n // DECODE_FRAMES)
            split = lambda a: jnp.moveaxis(jnp.pad(  # noqa: E731  (B, N, ...) -> (groups, B * DECODE_FRAMES, ...)
                a, ((0, 0), (0, groups * DECODE_FRAMES - n)) + ((0, 0),) * (a.ndim - 2)).reshape(
                b, groups, DECODE_FRAMES, *a.shape[2:]), 1, 0).reshape(groups, b * DECODE_FRAMES, *a.shape[2:])
            scan = nn.scan(lambda mdl, carry, xs: (carry, mdl._decode(*xs)), variable_broadcast="params",
                           split_rngs={"params": False})
            flow = scan(self, None, (split(x), split(feat_e1)))[1].reshape(groups, b, DECODE_FRAMES, h, w, 2)
            flow = jnp.moveaxis(flow, 0, 1).reshape(b, groups * DECODE_FRAMES, h, w, 2)[:, :n]
        edges = None
        if self.training or self.is_initializing():  # init creates the edge detector's params too
            edges = self.detect_edges(flow)
        return flow, (edges if self.training else None)

    def _encode(self, x, valid=None, record: bool = False):
        """downsample, encoder1, encoder2, mid_dilation on (B, F, H, W, 3) inputs -> (1/8 features, encoder1's
        1/4 features); valid (F,): see P3DBlock."""
        sow = (lambda name, v: self.sow("intermediates", name, v)) if record else (lambda name, v: None)
        x = _lrelu(self.downsample(x))
        sow("downsample_out", x)
        for block in self.encoder1:
            x = _lrelu(block(x, valid))
        feat_e1 = x
        sow("encoder1_out", x)
        for block in self.encoder2:
            x = _lrelu(block(x, valid))
        sow("encoder2_out", x)
        for conv in self.mid_dilation:
            x = _lrelu(conv(x))
        sow("mid_dilation_out", x)
        return x, feat_e1

    def _decode(self, x, feat_e1, record: bool = False):
        """The per-frame decoder: propagated features (F, h/4, w/4, 128) + encoder1 features -> flows (F, H, W, 2)."""
        x = _lrelu(self.decoder2_2(_lrelu(self.decoder2_0(x))))
        if record:
            self.sow("intermediates", "decoder2_out", x)
        x = _lrelu(self.decoder1_2(_lrelu(self.decoder1_0(x + feat_e1))))
        if record:
            self.sow("intermediates", "decoder1_out", x)
        return self.upsample_2(_lrelu(self.upsample_0(x))).astype(jnp.float32)

    def detect_edges(self, flows):
        """The edge detector on flows (B, N, H, W, 2) -> (B, N, H, W, 1) in (0, 1)."""
        b, n, h, w, _ = check_video(flows, "detect_edges flows", 2)
        return self.edge_detector(flows.reshape(b * n, h, w, 2)).astype(jnp.float32).reshape(b, n, h, w, 1)

    def _bidirectional(self, flows_bi, masks, what):
        if not isinstance(flows_bi, (tuple, list)) or len(flows_bi) != 2:
            raise ValueError(f"{what}: flows must be a pair (forward, backward)")
        flows_f, flows_b = flows_bi
        b, n, h, w = self._check(flows_f, masks, what)
        if tuple(flows_b.shape) != tuple(flows_f.shape):
            raise ValueError(f"{what}: forward {tuple(flows_f.shape)} and backward {tuple(flows_b.shape)} flows "
                             "must have the same shape")
        if tuple(masks.shape[:4]) != (b, n + 1, h, w):
            raise ValueError(f"{what}: masks {tuple(masks.shape)} must be (B, T, H, W, 1) with T = "
                             f"{n + 1} (one more than the flows {tuple(flows_f.shape)})")
        masks = masks.astype(jnp.float32)
        return flows_f.astype(jnp.float32), flows_b.astype(jnp.float32), masks[:, :-1], masks[:, 1:]

    def forward_bidirect_flow(self, masked_flows_bi, masks):
        """(flows_f, flows_b) (B, T-1, H, W, 2), masks (B, T, H, W, 1) -> ((pred_f, pred_b), (edges_f, edges_b))."""
        flows_f, flows_b, m_f, m_b = self._bidirectional(masked_flows_bi, masks, "forward_bidirect_flow")
        pred_f, edges_f = self(flows_f * (1 - m_f), m_f)
        pred_b, edges_b = self((flows_b * (1 - m_b))[:, ::-1], m_b[:, ::-1])
        pred_b = pred_b[:, ::-1]
        edges_b = None if edges_b is None else edges_b[:, ::-1]
        return (pred_f, pred_b), (edges_f, edges_b)

    def combine_flow(self, masked_flows_bi, pred_flows_bi, masks):
        """The prediction inside the holes, the input flows outside: (comb_f, comb_b) (B, T-1, H, W, 2)."""
        flows_f, flows_b, m_f, m_b = self._bidirectional(masked_flows_bi, masks, "combine_flow")
        pred_f, pred_b = pred_flows_bi
        return pred_f * m_f + flows_f * (1 - m_f), pred_b * m_b + flows_b * (1 - m_b)


# --- checkpoints ---------------------------------------------------------------------------------------
_ANCHOR = "feat_prop_module.deform_align.backward_.conv_offset.0.weight"


def _identify(sd) -> str | None:
    """What another network's state_dict is, or None when it looks like a RecurrentFlowCompleteNet."""
    keys = list(sd.keys())
    if _ANCHOR in sd and "downsample.0.weight" in sd:
        return None
    if any(k == "fnet.conv1.weight" or k.endswith(".fnet.conv1.weight") for k in keys):
        return "a RAFT optical-flow checkpoint (raft-things.pth layout); load it as model 'raft'"
    if any(k.startswith(("transformers.", "ss.", "sc.", "feat_prop_module.deform_align.backward_1")) for k in keys):
        return "a ProPainter InpaintGenerator checkpoint (ProPainter.pth layout), not the flow completion network"
    shown = ", ".join(sorted(keys)[:6]) + (" ..." if len(keys) > 6 else "")
    return f"not a RecurrentFlowCompleteNet state_dict (no '{_ANCHOR}' among its {len(keys)} keys: {shown or 'none'})"


def from_torch(sd, model: RecurrentFlowCompleteNet) -> dict:
    """Key mapping of the official RecurrentFlowCompleteNet (recurrent_flow_completion.pth)."""
    what = _identify(sd)
    if what is not None:
        raise CheckpointError(f"checkpoint does not match model 'recurrent_flow_completion': it is {what}")
    p3d = lambda prefix: {"conv1": sd.conv(f"{prefix}.conv1.0"), "conv2": sd.conv(f"{prefix}.conv2.0")}  # noqa: E731
    prop = {"fusion": sd.conv("feat_prop_module.fusion")}
    for branch in ("backward_", "forward_"):
        prop[branch] = {"deform_align": deform_align_from_torch(sd, f"feat_prop_module.deform_align.{branch}"),
                        "backbone_0": sd.conv(f"feat_prop_module.backbone.{branch}.0"),
                        "backbone_2": sd.conv(f"feat_prop_module.backbone.{branch}.2")}
    params = {
        "downsample": sd.conv("downsample.0"),
        "encoder1_0": p3d("encoder1.0"), "encoder1_1": p3d("encoder1.2"),
        "encoder2_0": p3d("encoder2.0"), "encoder2_1": p3d("encoder2.2"),
        **{f"mid_dilation_{i}": sd.conv(f"mid_dilation.{2 * i}") for i in range(3)},
        "feat_prop_module": prop,
        "decoder2_0": sd.conv("decoder2.0"), "decoder2_2": {"conv": sd.conv("decoder2.2.conv")},
        "decoder1_0": sd.conv("decoder1.0"), "decoder1_2": {"conv": sd.conv("decoder1.2.conv")},
        "upsample_0": sd.conv("upsample.0"), "upsample_2": {"conv": sd.conv("upsample.2.conv")},
        "edge_detector": {"projection": sd.conv("edgeDetector.projection.0"),
                          "mid_layer_1": sd.conv("edgeDetector.mid_layer_1.0"),
                          "mid_layer_2": sd.conv("edgeDetector.mid_layer_2.0"),
                          "out_layer": sd.conv("edgeDetector.out_layer")},
    }
    return {"params": params}


def example_inputs(model: RecurrentFlowCompleteNet):
    return jnp.zeros((1, 2, 16, 16, 2), jnp.float32), jnp.zeros((1, 2, 16, 16, 1), jnp.float32)


register("recurrent_flow_completion", RecurrentFlowCompleteNet, from_torch, example_inputs, kind="flow",
         trained_by="flow_completion",
         description="ProPainter's recurrent flow completion network (completes flows inside the holes)")
