"""RAFT optical flow (Teed & Deng, "RAFT: Recurrent All-Pairs Field Transforms for Optical Flow", ECCV 2020), the
large "raft-things" configuration in the copy ProPainter (sczhou/ProPainter, RAFT/) uses to estimate the flows it
completes.

    flow_low, flow_up = models.build("raft").apply(variables, image1, image2, iters=20)
    forward, backward = models.build("raft").apply(variables, clip, iters=20, method="bidirectional")

image1, image2 (B, H, W, 3) RGB in [-1, 1] (ProPainter's copy does not rescale: it is fed u8 / 255 * 2 - 1),
H and W multiples of 8, at least 64. Returns the official `test_mode=True` pair: flow_low (B, H/8, W/8, 2), the
flow on the 1/8 grid after the last iteration (coords1 - coords0), and flow_up (B, H, W, 2), its convex
upsampling (values x8). Channel 0 is the horizontal displacement; both float32 whatever `dtype` is. `iters` (a
Python int >= 1, static under jit) is the number of refinement iterations (ProPainter: 20). `flow_init`
(B, H/8, W/8, 2) optionally starts the iterations from a flow, as the official argument does. `bidirectional`
is ProPainter's RAFT_bi: for a clip (B, T, H, W, 3) the forward flows RAFT(frame t, frame t+1) and backward
flows RAFT(frame t+1, frame t), each (B, T-1, H, W, 2) (all pairs run as one batch).

Network (all channels-last): feature encoder `fnet` (instance norm) on both images, context encoder `cnet`
(batch norm, running statistics) on image1 split into tanh(hidden) and relu(context); the all-pairs correlation
f1 . f2 / sqrt(256) of the 1/8 feature maps with a 4-level 2x2 average-pooling pyramid over image2's axes;
per iteration a 9x9 bilinear lookup per level around the current match (the window's first axis moves x, as in
the official code; channel = level * 81 + i * 9 + j, zeros outside), the motion encoder, a separable ConvGRU
(1x5 then 5x1) and the flow head; after the last iteration the mask head and the convex 8x upsampling.

Correlation (`corr`): "dense" precomputes the whole pyramid, B * (HW/64)^2 * 4 bytes at level 0 (1080p: 4.2 GB
per pair); "chunked" never builds it: it pools image2's features instead (pooling commutes with the dot
product) and, `corr_chunk` query pixels at a time, gathers each pixel's 12x12 window of pooled features and
dots it with the pixel's feature, so memory is O(corr_chunk * 144 * 256) whatever the frame size. "auto" (the
default) is dense up to DENSE_LIMIT_BYTES of level-0 volume per clip; above it, when a few pairs fit, dense for that
many pairs of each clip at a time (the iterations then run group after group: the same numbers as one dense call),
and chunked only when not even one pair fits (1080p). Both sample the same positions with the same weights; they differ
only by float32 rounding (order of pooling and dot products). On the CPU dense is much the faster: the chunked
lookup gathers 144 x 256 features per pixel, level and iteration (one 720p pair, 20 iterations: 10.4 s dense,
28.1 s chunked).

Tap positions are rounded as in the official grid_sample call (bit for bit): the position p is normalised
as 2p / (S - 1) - 1 and grid_sample (align_corners=True) maps it back with (g + 1) * ((S - 1) / 2). A level of
extent 1 (1/8 maps 8..15 wide, i.e. frames 64..127 px) makes the official code divide by zero and return NaN;
here such a level is sampled at p directly.

Intermediates (apply(..., mutable=["intermediates"])), channels-last, named per `INTERMEDIATES` (official module
path -> ours): fnet_out (2B, h, w, 256: image1 rows then image2 rows), cnet_out, and the FIRST iteration's
update_block.encoder (motion features), update_block_out (hidden state), update_block.flow_head (delta flow)
and update_block.mask (mask logits before the 0.25 scale).

Checkpoints: `raft-things.pth` (the DataParallel state_dict: keys `module.fnet.conv1.weight`, ...; the prefix
is stripped), a bare state_dict, or one whose RAFT keys share another prefix (e.g. `fix_raft.`). Each stride-2
block's third norm is in the checkpoint twice, as `norm3` and `downsample.1` (one module, two names): either
is accepted, and when both are present they must be equal. `num_batches_tracked` is optional. RAFT-small and
non-RAFT checkpoints are refused with a message saying what they are. Eval only (frozen in ProPainter): batch
norm uses its running statistics, dropout is 0; the training mode's per-iteration flow list is not provided.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ecformer_jax.errors import CheckpointError
from ecformer_jax.layers.checks import check_video
from ecformer_jax.layers.conv import conv2d
from ecformer_jax.layers.correlation import (
    CORR_LEVELS,
    coords_grid,
    corr_pyramid,
    feature_pyramid,
    lookup_chunked,
    lookup_dense,
)
from ecformer_jax.layers.flow import frame_pairs
from ecformer_jax.models.registry import register

FEATURE_DIM = 256
HIDDEN_DIM = 128
CONTEXT_DIM = 128
NORM_EPS = 1e-5
DENSE_LIMIT_BYTES = 1 << 30  # corr="auto": dense while a clip's level-0 volume pairs * N * N * 4 bytes stays below
CORR_MODES = ("auto", "dense", "chunked")

# official module path (the fixtures' intermediate names) -> our intermediates key
INTERMEDIATES = {
    "fnet": "fnet_out",
    "cnet": "cnet_out",
    "update_block.encoder": "update_block.encoder",
    "update_block": "update_block_out",
    "update_block.flow_head": "update_block.flow_head",
    "update_block.mask": "update_block.mask",
}

_ENCODER_LAYERS = ((64, 1), (96, 2), (128, 2))  # (channels, stride of the first block) of layer1..3


# --- encoders ----------------------------------------------------------------------------------------
def instance_norm(x, eps: float = NORM_EPS):
    """InstanceNorm2d without affine or running statistics: per sample and channel over H, W (biased var)."""
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = xf.mean(axis=(1, 2), keepdims=True)
    var = jnp.square(xf - mean).mean(axis=(1, 2), keepdims=True)
    return ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class _Norm(nn.Module):
    kind: str  # "instance" | "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.kind == "instance":
            return instance_norm(x)
        return nn.BatchNorm(use_running_average=True, epsilon=NORM_EPS, momentum=0.9, dtype=self.dtype,
                            name="bn")(x)


class ResidualBlock(nn.Module):
    """relu(shortcut + relu(norm2(conv2(relu(norm1(conv1(x))))))); stride 2: shortcut = norm3(conv1x1/2(x))."""

    features: int
    stride: int
    norm: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = conv2d(self.features, 3, self.stride, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(_Norm(self.norm, self.dtype, name="norm1")(y))
        y = conv2d(self.features, 3, dtype=self.dtype, name="conv2")(y)
        y = nn.relu(_Norm(self.norm, self.dtype, name="norm2")(y))
        if self.stride != 1:
            x = conv2d(self.features, 1, self.stride, dtype=self.dtype, name="downsample")(x)
            x = _Norm(self.norm, self.dtype, name="norm3")(x)
        return nn.relu(x + y)


class BasicEncoder(nn.Module):
    """conv 7x7/2 (3->64) + norm + relu, layer1 (64), layer2 (96, /2), layer3 (128, /2), conv 1x1 -> out: 1/8."""

    out_dim: int = FEATURE_DIM
    norm: str = "instance"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = conv2d(64, 7, 2, dtype=self.dtype, name="conv1")(x.astype(self.dtype))
        x = nn.relu(_Norm(self.norm, self.dtype, name="norm1")(x))
        for i, (features, stride) in enumerate(_ENCODER_LAYERS, start=1):
            x = ResidualBlock(features, stride, self.norm, self.dtype, name=f"layer{i}_0")(x)
            x = ResidualBlock(features, 1, self.norm, self.dtype, name=f"layer{i}_1")(x)
        return conv2d(self.out_dim, 1, dtype=self.dtype, name="conv2")(x)


# --- update block ------------------------------------------------------------------------------------
class MotionEncoder(nn.Module):
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, flow, corr):
        c = lambda f, k, name: conv2d(f, k, dtype=self.dtype, name=name)
        cor = nn.relu(c(256, 1, "convc1")(corr))
        cor = nn.relu(c(192, 3, "convc2")(cor))
        flo = nn.relu(c(128, 7, "convf1")(flow))
        flo = nn.relu(c(64, 3, "convf2")(flo))
        out = nn.relu(c(128 - 2, 3, "conv")(jnp.concatenate([cor, flo], axis=-1)))
        return jnp.concatenate([out, flow], axis=-1)


class SepConvGRU(nn.Module):
    """A ConvGRU step with 1x5 kernels, then one with 5x1 kernels (each z, r, q conv (hidden + input) -> hidden)."""

    hidden: int = HIDDEN_DIM
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, x):
        for suffix, kernel in (("1", (1, 5)), ("2", (5, 1))):
            pad = tuple((k // 2, k // 2) for k in kernel)
            conv = lambda name, kernel=kernel, pad=pad, suffix=suffix: nn.Conv(
                self.hidden, kernel, padding=pad, dtype=self.dtype, name=name + suffix)
            hx = jnp.concatenate([h, x], axis=-1)
            z = nn.sigmoid(conv("convz")(hx))
            r = nn.sigmoid(conv("convr")(hx))
            q = jnp.tanh(conv("convq")(jnp.concatenate([r * h, x], axis=-1)))
            h = (1 - z) * h + z * q
        return h


class FlowHead(nn.Module):
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.relu(conv2d(256, 3, dtype=self.dtype, name="conv1")(x))
        return conv2d(2, 3, dtype=self.dtype, name="conv2")(x)


class UpdateBlock(nn.Module):
    """BasicUpdateBlock: (net, inp, corr, flow) -> (net, delta_flow, motion features); `mask_logits(net)` is the
    upsampling-mask head (conv 3x3 -> relu -> conv 1x1 to 9 * 64), before the official 0.25 scale."""

    hidden: int = HIDDEN_DIM
    dtype: Any = jnp.float32

    def setup(self):
        self.encoder = MotionEncoder(self.dtype)
        self.gru = SepConvGRU(self.hidden, self.dtype)
        self.flow_head = FlowHead(self.dtype)
        self.mask_0 = conv2d(256, 3, dtype=self.dtype)
        self.mask_2 = conv2d(64 * 9, 1, dtype=self.dtype)

    def __call__(self, net, inp, corr, flow):
        motion = self.encoder(flow.astype(self.dtype), corr.astype(self.dtype))
        net = self.gru(net, jnp.concatenate([inp, motion], axis=-1))
        return net, self.flow_head(net), motion

    def mask_logits(self, net):
        return self.mask_2(nn.relu(self.mask_0(net)))


# --- upsampling --------------------------------------------------------------------------------------
def upsample_flow(flow, mask, factor: int = 8):
    """Convex upsampling: flow (B, h, w, 2), mask (B, h, w, 9 * f * f) (channel = tap * f^2 + sub_y * f + sub_x,
    the 0.25-scaled logits) -> (B, f*h, f*w, 2): per fine pixel a softmax-weighted sum of the 3x3 (zero-padded)
    neighbourhood of f * flow, tap = ky * 3 + kx."""
    b, h, w, _ = flow.shape
    mask = jax.nn.softmax(mask.astype(jnp.float32).reshape(b, h, w, 9, factor, factor), axis=3)
    padded = jnp.pad(factor * flow.astype(jnp.float32), ((0, 0), (1, 1), (1, 1), (0, 0)))
    taps = jnp.stack([padded[:, ky:ky + h, kx:kx + w] for ky in range(3) for kx in range(3)], axis=3)
    up = jnp.einsum("bhwkyx,bhwkc->bhywxc", mask, taps, precision=jax.lax.Precision.HIGHEST)
    return up.reshape(b, factor * h, factor * w, 2)


# --- the network -------------------------------------------------------------------------------------
def _update(block, net, inp, coords0, coords1, lookup):
    """One refinement: (hidden state, new coordinates, delta flow, motion features)."""
    coords1 = jax.lax.stop_gradient(coords1)  # the official loop detaches the coordinates
    net, delta, motion = block(net, inp, lookup(coords1), coords1 - coords0)
    return net, coords1 + delta.astype(jnp.float32), delta, motion


def _iterate(block, net, inp, coords0, coords1, lookup, iters: int):
    """`iters` refinements as one scan: (hidden state, coordinates)."""
    if iters < 1:
        return net, coords1

    def body(ub, carry, _):
        net, coords1 = carry
        net, coords1, _, _ = _update(ub, net, inp, coords0, coords1, lookup)
        return (net, coords1), None

    scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False}, length=iters)
    return scan(block, (net, coords1), None)[0]


class RAFT(nn.Module):
    """Large RAFT as ProPainter builds it (hidden 128, context 128, 4 levels, radius 4, dropout 0); see the
    module docstring for the call, the correlation modes and the intermediates."""

    corr: str = "auto"  # "auto" | "dense" | "chunked"
    corr_chunk: int = 1024  # query pixels per step of the chunked lookup
    dtype: Any = jnp.float32  # encoders and update block; correlation, coordinates and upsampling stay float32

    def _check(self, image1, image2):
        b, h, w, _ = check_video(image1, "RAFT image1", 3, ndim=4)
        check_video(image2, "RAFT image2", 3, ndim=4)
        if tuple(image2.shape) != tuple(image1.shape):
            raise ValueError(f"RAFT: image1 {tuple(image1.shape)} and image2 {tuple(image2.shape)} must have the "
                             "same shape")
        if h % 8 or w % 8 or h < 64 or w < 64:
            raise ValueError(f"RAFT needs frame sizes that are multiples of 8 and at least 64 (1/8 features with "
                             f"{CORR_LEVELS} pooled correlation levels); got {h}x{w}")
        if self.corr not in CORR_MODES:
            raise ValueError(f"RAFT corr must be one of {CORR_MODES}; got {self.corr!r}")
        return b, h, w

    def corr_mode(self, batch: int, height: int, width: int) -> str:
        """'dense' or 'chunked': what `corr` means for frames of this size."""
        return "dense" if self.corr_group(batch, height, width) else "chunked"

    def corr_group(self, batch: int, height: int, width: int) -> int:
        """Pairs whose dense pyramid is built at a time (a divisor of `batch`; `batch` = all at once), 0 = chunked."""
        if self.corr != "auto":
            return batch if self.corr == "dense" else 0
        n = (height // 8) * (width // 8)
        fits = DENSE_LIMIT_BYTES // (n * n * 4)
        return max((g for g in range(1, batch + 1) if batch % g == 0 and g <= fits), default=0)

    @nn.compact
    def __call__(self, image1, image2, iters: int = 20, flow_init=None, clips: int = 1):
        """Pairs image1 -> image2 (B, H, W, 3) in [-1, 1] -> (flow at 1/8, flow) (B, ...). `clips`: the batch is that
        many equal blocks of pairs (one per clip, as `bidirectional` lays them out); corr="auto" groups the pairs of
        each block and runs every block's group together, so a batch sharded by clip stays on its devices."""
        b, h, w = self._check(image1, image2)
        iters = int(iters)
        if iters < 1:
            raise ValueError(f"RAFT iters must be >= 1; got {iters}")
        if clips < 1 or b % clips:
            raise ValueError(f"RAFT clips must divide the batch of {b} pairs; got {clips}")
        h8, w8 = h // 8, w // 8
        # both images in one call, stacked behind the batch axis: a batch sharded over devices stays put
        # (concatenating along the batch axis would make XLA exchange halves between devices)
        fmaps = BasicEncoder(FEATURE_DIM, "instance", self.dtype, name="fnet")(
            jnp.stack([image1, image2], axis=1).reshape(2 * b, *image1.shape[1:]))
        fmaps = fmaps.reshape(b, 2, *fmaps.shape[1:])
        fmap1, fmap2 = fmaps[:, 0], fmaps[:, 1]
        self.sow("intermediates", "fnet_out", jnp.concatenate([fmap1, fmap2]))  # the official layout
        context = BasicEncoder(HIDDEN_DIM + CONTEXT_DIM, "batch", self.dtype, name="cnet")(image1)
        self.sow("intermediates", "cnet_out", context)
        net = jnp.tanh(context[..., :HIDDEN_DIM])
        inp = nn.relu(context[..., HIDDEN_DIM:])

        coords0 = coords_grid(b, h8, w8)
        coords1 = coords0
        if flow_init is not None:
            if tuple(flow_init.shape) != (b, h8, w8, 2):
                raise ValueError(f"RAFT flow_init must have shape {(b, h8, w8, 2)}; got {tuple(flow_init.shape)}")
            coords1 = coords1 + flow_init.astype(jnp.float32)
        block = UpdateBlock(HIDDEN_DIM, self.dtype, name="update_block")
        per = b // clips
        group = self.corr_group(per, h, w)  # pairs of each clip at a time
        group = b if group == per else group
        if group == b:
            pyramid = corr_pyramid(fmap1, fmap2)
            lookup = lambda coords: lookup_dense(pyramid, coords)  # noqa: E731
        elif group == 0:
            feats = feature_pyramid(fmap2)
            lookup = lambda coords: lookup_chunked(fmap1, feats, coords, chunk=self.corr_chunk)  # noqa: E731
        if group in (0, b):
            net, coords1, delta, motion = _update(block, net, inp, coords0, coords1, lookup)  # recorded
            self.sow("intermediates", "update_block.encoder", motion)
            self.sow("intermediates", "update_block_out", net)
            self.sow("intermediates", "update_block.flow_head", delta)
            self.sow("intermediates", "update_block.mask", block.mask_logits(net))  # dead code unless recorded
            net, coords1 = _iterate(block, net, inp, coords0, coords1, lookup, iters - 1)
        else:  # `group` pairs of every clip at a time, each group's dense pyramid alive during its iterations only
            def one_group(ub, carry, xs):
                f1, f2, net, inp, c1 = xs
                pyramid = corr_pyramid(f1, f2)
                return carry, _iterate(ub, net, inp, c0, c1, lambda c: lookup_dense(pyramid, c), iters)

            steps = per // group
            c0 = coords_grid(clips * group, h8, w8)
            # (clips * per, ...) -> (steps, clips * group, ...): the scan runs over each clip's own pairs
            split = lambda a: jnp.swapaxes(a.reshape(clips, steps, group, *a.shape[1:]), 0, 1).reshape(  # noqa: E731
                steps, clips * group, *a.shape[1:])
            merge = lambda a: jnp.swapaxes(a.reshape(steps, clips, group, *a.shape[2:]), 0, 1).reshape(  # noqa: E731
                b, *a.shape[2:])
            scan = nn.scan(one_group, variable_broadcast="params", split_rngs={"params": False})
            _, (net, coords1) = scan(block, None, tuple(map(split, (fmap1, fmap2, net, inp, coords1))))
            net, coords1 = merge(net), merge(coords1)
        mask = 0.25 * block.mask_logits(net).astype(jnp.float32)
        flow_low = coords1 - coords0
        return flow_low, upsample_flow(flow_low, mask)

    def bidirectional(self, frames, iters: int = 20):
        """ProPainter's RAFT_bi: frames (B, T, H, W, 3) in [-1, 1] -> (forward, backward) flows (B, T-1, H, W, 2),
        forward[:, t] = flow_up(frame t -> t+1), backward[:, t] = flow_up(frame t+1 -> t)."""
        b, t, h, w, _ = check_video(frames, "RAFT bidirectional frames", 3)
        if t < 2:
            raise ValueError(f"RAFT bidirectional needs at least 2 frames; got {t}")
        first, second = frames[:, :-1], frames[:, 1:]
        _, flows = self(frame_pairs(first, second), frame_pairs(second, first), iters, clips=b)
        flows = flows.reshape(b, 2, t - 1, h, w, 2)
        return flows[:, 0], flows[:, 1]


# --- checkpoints ---------------------------------------------------------------------------------------
_ANCHOR = "fnet.conv1.weight"
_BN_ENTRIES = (("weight", "params", "scale"), ("bias", "params", "bias"), ("running_mean", "batch_stats", "mean"),
               ("running_var", "batch_stats", "var"))


def _prefix(sd) -> str:
    """The common prefix in front of the RAFT keys ('' for a bare state_dict; DataParallel's 'module.' is
    already gone). CheckpointError when the state_dict is not a (large) RAFT."""
    hits = sorted({k[: -len(_ANCHOR)] for k in sd.keys() if k == _ANCHOR or k.endswith("." + _ANCHOR)})
    keys = sorted(sd.keys())
    if not hits:
        shown = ", ".join(keys[:6]) + (" ..." if len(keys) > 6 else "")
        raise CheckpointError(f"checkpoint does not match model 'raft': not a RAFT state_dict (no '{_ANCHOR}' "
                              f"among its {len(keys)} keys: {shown or 'none'})")
    if len(hits) > 1:
        raise CheckpointError(f"checkpoint does not match model 'raft': it holds several RAFT networks (key "
                              f"prefixes {hits}); pass the state_dict of one")
    return hits[0]


def _is_small(sd, p: str) -> bool:
    """RAFT-small (raft-small.pth): bottleneck encoders with 32 stem channels, no mask head."""
    return (f"{p}fnet.layer1.0.conv3.weight" in sd or f"{p}update_block.gru.convz.weight" in sd
            or (f"{p}update_block.encoder.convc1.weight" in sd and f"{p}update_block.mask.0.weight" not in sd))


def _norm3(sd, p: str, layer: str, params: dict, stats: dict):
    """A stride-2 block's third batch norm, registered as both `norm3` and `downsample.1`: either name is
    accepted; when both are present their values must agree."""
    params["norm3"], stats["norm3"] = {"bn": {}}, {"bn": {}}
    for entry, col, ours in _BN_ENTRIES + (("num_batches_tracked", None, None),):
        names = [f"{p}{layer}.norm3.{entry}", f"{p}{layer}.downsample.1.{entry}"]
        present = [n for n in names if n in sd]
        if entry == "num_batches_tracked":
            for n in present:  # a counter, unused in eval
                sd.raw(n, np.int64)
            continue
        if not present:
            value = sd.tensor(names[0])  # reported as missing under its norm3 name
        else:
            value = sd.tensor(present[0])
            for other in present[1:]:
                again = sd.tensor(other)
                if again.shape != value.shape or not np.array_equal(again, value):
                    diff = (float(np.max(np.abs(again - value))) if again.shape == value.shape
                            else f"shapes {value.shape} and {again.shape}")
                    raise CheckpointError(
                        f"checkpoint does not match model 'raft': {present[0]} and {other} name the same norm (one "
                        f"module registered twice) but differ (max |difference| {diff})")
        (params if col == "params" else stats)["norm3"]["bn"][ours] = value


def _encoder_from_torch(sd, p: str, batch_norm: bool):
    params, stats = {}, {}

    def norm(prefix, params_at, stats_at, name):
        if not batch_norm:
            return
        params_at[name] = {"bn": {"scale": sd.tensor(f"{prefix}.weight"), "bias": sd.tensor(f"{prefix}.bias")}}
        stats_at[name] = {"bn": {"mean": sd.tensor(f"{prefix}.running_mean"),
                                 "var": sd.tensor(f"{prefix}.running_var")}}
        if f"{prefix}.num_batches_tracked" in sd:
            sd.raw(f"{prefix}.num_batches_tracked", np.int64)

    params["conv1"] = sd.conv(f"{p}conv1")
    norm(f"{p}norm1", params, stats, "norm1")
    for i, (_, stride) in enumerate(_ENCODER_LAYERS, start=1):
        for j in (0, 1):
            layer, ours = f"{p}layer{i}.{j}", f"layer{i}_{j}"
            bp, bs = {"conv1": sd.conv(f"{layer}.conv1"), "conv2": sd.conv(f"{layer}.conv2")}, {}
            norm(f"{layer}.norm1", bp, bs, "norm1")
            norm(f"{layer}.norm2", bp, bs, "norm2")
            if j == 0 and stride != 1:
                bp["downsample"] = sd.conv(f"{layer}.downsample.0")
                if batch_norm:
                    _norm3(sd, "", layer, bp, bs)
            params[ours] = bp
            if bs:
                stats[ours] = bs
    params["conv2"] = sd.conv(f"{p}conv2")
    return params, stats


def from_torch(sd, model: RAFT) -> dict:
    """Key mapping of the official large RAFT (ProPainter's RAFT/raft.py; raft-things.pth)."""
    p = _prefix(sd)
    if _is_small(sd, p):
        raise CheckpointError("checkpoint does not match model 'raft': it is a RAFT-small checkpoint "
                              "(raft-small.pth layout); ProPainter and this model use the large 'raft-things' RAFT")
    fnet, _ = _encoder_from_torch(sd, f"{p}fnet.", batch_norm=False)
    cnet, cnet_stats = _encoder_from_torch(sd, f"{p}cnet.", batch_norm=True)
    u = f"{p}update_block."
    update = {
        "encoder": {n: sd.conv(f"{u}encoder.{n}") for n in ("convc1", "convc2", "convf1", "convf2", "conv")},
        "gru": {f"{g}{k}": sd.conv(f"{u}gru.{g}{k}") for k in "12" for g in ("convz", "convr", "convq")},
        "flow_head": {n: sd.conv(f"{u}flow_head.{n}") for n in ("conv1", "conv2")},
        "mask_0": sd.conv(f"{u}mask.0"),
        "mask_2": sd.conv(f"{u}mask.2"),
    }
    return {"params": {"fnet": fnet, "cnet": cnet, "update_block": update}, "batch_stats": {"cnet": cnet_stats}}


def example_inputs(model: RAFT):
    x = jnp.zeros((1, 64, 64, 3), jnp.float32)
    return x, x


register("raft", RAFT, from_torch, example_inputs, kind="flow",
         description="RAFT optical flow, large raft-things configuration as in ProPainter; images in [-1, 1]")
