"""E2FGVI and E2FGVI-HQ (Li et al., "Towards An End-to-End Framework for Flow-Guided Video Inpainting",
CVPR 2022; MCG-NKU/E2FGVI).

    frames, (flows_forward, flows_backward) = models.build("e2fgvi").apply(
        variables, masked_frames, num_local_frames=L)

masked_frames (B, T, H, W, 3) in [-1, 1] with holes at 0 (the mask is not an input); the first L frames
are a window of consecutive local frames, the remaining T - L distant reference frames. Returns the
frames (B, T, H, W, 3) after tanh for ALL T frames, and the completed flows of the local frames at 1/4
resolution, (B, L - 1, H/4, W/4, 2) each, channel 0 horizontal: flows_forward[:, i] = SPyNet(frame i ->
frame i + 1), flows_backward[:, i] = SPyNet(frame i + 1 -> frame i). `num_local_frames` must be a
Python int (static under jit); None means all T frames are local.

Pipeline: flow completion (SPyNet on the masked local frames at 1/4) -> encoder -> bidirectional
second-order flow-guided deformable propagation over the local frames -> soft split (7x7 patches,
stride 3) -> 8 temporal focal transformer blocks -> soft composition + residual -> decoder -> tanh.

"e2fgvi" (the CVPR model) is tied to 240x432 by its per-pixel composition bias (128, 60, 108);
`resize_embeddings=True` interpolates that bias (bilinear) so other valid sizes run. "e2fgvi_hq"
replaces the bias by a 3x3 conv and takes any valid size: H, W multiples of 4 whose token grid
((H/4 - 1) // 3 + 1, (W/4 - 1) // 3 + 1) is a whole number of 5x9 windows - multiples of (60, 108)
always are, and `layers.padding.pad_to_multiple` / `crop` do the official test-time mirror padding.

Intermediates (apply(..., mutable=["intermediates"])): encoder_out, update_spynet/basic_module.5
(finest SPyNet residual; SPyNet runs both directions as one batch, the first B*(L-1) rows are the
flows_forward pairs), feat_prop/align_backward (the backward branch's first raw deformable-alignment
output, step 1), feat_prop_out (B, L, h, w, C), transformer.{i} (tokens (B, T, nh, nw, C)),
sc_out, decoder_out (pre-tanh).
"""
from __future__ import annotations

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ecformer_jax.errors import CheckpointError
from ecformer_jax.layers.checks import check_video
from ecformer_jax.layers.conv import Decoder, Encoder, conv2d, decoder_from_torch, encoder_from_torch
from ecformer_jax.layers.deform import SecondOrderDeformableAlignment, deform_align_from_torch
from ecformer_jax.layers.feedforward import FusionFeedForward
from ecformer_jax.layers.flow import SPyNet, flow_warp, frame_pairs, spynet_from_torch
from ecformer_jax.layers.patches import PatchDense, fold, grid_size, unfold
from ecformer_jax.layers.remat import block_class
from ecformer_jax.layers.resize import upsample_bilinear
from ecformer_jax.layers.windows import FocalPool, TemporalFocalAttention, rolled_ring_indices
from ecformer_jax.models.registry import ProtocolDefaults, SizeRule, register

# the official test.py pads frames to multiples of these (the token grid then tiles into 5x9 windows)
PAD_MULTIPLE = (60, 108)


class E2FGVI(nn.Module):
    """The CVPR'22 generator (`model/e2fgvi.py`): composition bias tensor, fixed 240x432 weights."""

    hidden: int = 512
    heads: int = 4
    num_blocks: int = 8
    window: tuple = (5, 9)
    focal_window: tuple = (5, 9)
    kernel: int = 7
    stride: int = 3
    padding: int = 3
    ffn_hidden: int = 1960
    base_size: tuple = (240, 432)  # frame size of the composition bias (CVPR model only)
    resize_embeddings: bool = False  # CVPR model: interpolate the composition bias to other sizes
    dtype: Any = jnp.float32

    hq: ClassVar[bool] = False
    remat: bool = False  # rematerialise each block in the backward pass (saves training memory)

    # --- input checks -----------------------------------------------------------------------------
    def check_size(self, height: int, width: int):
        name = "E2FGVI-HQ" if self.hq else "E2FGVI"
        if height % 4 or width % 4:
            raise ValueError(
                f"{name} needs frame sizes that are multiples of 4 (the flows at 1/4 must match the encoder's "
                f"1/4 feature map); got {height}x{width}. Pad with layers.padding.pad_to_multiple (multiples of "
                f"{PAD_MULTIPLE[0]}x{PAD_MULTIPLE[1]}) and crop the output back."
            )
        nh, nw = grid_size(height // 4, width // 4, self.kernel, self.stride, self.padding)
        wh, ww = self.window
        if nh % wh or nw % ww:
            raise ValueError(
                f"{name} cannot run on {height}x{width} frames: their {nh}x{nw} token grid is not a whole number of "
                f"{wh}x{ww} attention windows. Pad the frames with layers.padding.pad_to_multiple (to multiples of "
                f"{PAD_MULTIPLE[0]}x{PAD_MULTIPLE[1]}, as the official test.py does) and crop the output back."
            )
        if not self.hq and (height, width) != tuple(self.base_size) and not self.resize_embeddings:
            bh, bw = self.base_size
            raise ValueError(
                f"E2FGVI's weights are made for {bh}x{bw} frames (a {bh // 4}x{bw // 4} composition bias); got "
                f"{height}x{width}. Resize the video to that size (the official test.py does), use e2fgvi_hq, or "
                "build the model with resize_embeddings=True to interpolate the bias to the new size."
            )

    @staticmethod
    def check_local_frames(num_local_frames, t: int) -> int:
        if num_local_frames is None:
            num_local_frames = t
        if isinstance(num_local_frames, bool) or not isinstance(num_local_frames, (int, np.integer)):
            raise ValueError(
                "num_local_frames must be a Python int (static under jit: jax.jit(..., static_argnames="
                f"'num_local_frames')); got {type(num_local_frames).__name__}"
            )
        if not 2 <= num_local_frames <= t:
            raise ValueError(
                f"num_local_frames must be between 2 and the number of frames T = {t} (flows need a pair of local "
                f"frames); got {num_local_frames}"
            )
        return int(num_local_frames)

    # --- forward ----------------------------------------------------------------------------------
    @nn.compact
    def __call__(self, masked_frames, num_local_frames: int | None = None):
        b, t, height, width, _ = check_video(masked_frames, "masked_frames", 3)
        lt = self.check_local_frames(num_local_frames, t)
        self.check_size(height, width)
        h, w = height // 4, width // 4
        k, s, p = self.kernel, self.stride, self.padding
        nh, nw = grid_size(h, w, k, s, p)

        # 1. flow completion on the masked local frames (both directions, float32, at 1/4 resolution)
        flows_forward, flows_backward = local_flows(SPyNet(self.dtype, name="update_spynet"), masked_frames, lt)

        # 2. encoder on all frames
        x = masked_frames.astype(self.dtype).reshape(b * t, height, width, 3)
        enc = Encoder(self.dtype, name="encoder")(x)
        self.sow("intermediates", "encoder_out", enc)
        c = enc.shape[-1]
        enc = enc.reshape(b, t, h, w, c)

        # 3. propagation over the local frames. QUIRK (official argument order): flows_forward drives the
        #    'backward_' branch and flows_backward the 'forward_' branch.
        local_feat = BidirectionalPropagation(c, self.dtype, name="feat_prop")(enc[:, :lt], flows_forward,
                                                                                flows_backward)
        self.sow("intermediates", "feat_prop_out", local_feat)
        feat = jnp.concatenate([local_feat, enc[:, lt:]], axis=1).reshape(b * t, h, w, c)

        # 4. soft split -> temporal focal transformer -> soft composition (overlaps SUMMED)
        tokens = PatchDense(self.hidden, k * k, "in", self.dtype, name="ss")(unfold(feat, k, s, p))
        tokens = tokens.reshape(b, t, nh, nw, self.hidden)
        block_cls = block_class(TemporalFocalBlock, self.remat, (2,))
        for i in range(self.num_blocks):
            tokens = block_cls(self.hidden, self.heads, self.window, self.focal_window, self.ffn_hidden,
                               k, s, p, self.dtype, name=f"block{i}")(tokens, (h, w))
            self.sow("intermediates", f"transformer.{i}", tokens)
        patches = PatchDense(c * k * k, k * k, "out", self.dtype, name="sc")(tokens)
        sc = fold(patches.reshape(b * t, nh, nw, c * k * k), (h, w), k, s, p)
        if self.hq:
            sc = conv2d(c, 3, dtype=self.dtype, name="sc_bias_conv")(sc)  # replaces the bias (not a residual)
        else:
            bh, bw = self.base_size[0] // 4, self.base_size[1] // 4
            bias = self.param("sc_bias", nn.initializers.zeros, (bh, bw, c), jnp.float32)
            if (h, w) != (bh, bw):
                bias = upsample_bilinear(bias, (h, w), align_corners=False)
            sc = sc + bias.astype(self.dtype)
        self.sow("intermediates", "sc_out", sc)

        # 5. decoder
        y = Decoder(self.dtype, name="decoder")(feat + sc.astype(feat.dtype))
        self.sow("intermediates", "decoder_out", y)
        return jnp.tanh(y).reshape(b, t, height, width, 3), (flows_forward, flows_backward)


def local_flows(spynet, frames, num_local: int):
    """(flows_forward, flows_backward), each (B, L-1, H/4, W/4, 2), of the first `num_local` frames.

    E2FGVI's flow completion input, shared by the model and the trainer's flow-loss targets: frames in
    [-1, 1] mapped to [0, 1], bilinearly resized to 1/4 (align_corners=True) in float32; forward[i] =
    spynet(frame i, frame i+1), backward[i] = spynet(frame i+1, frame i), both directions in one batched
    call of `spynet(ref, supp)` (rows (sample, direction, pair)).
    """
    b, _, height, width, _ = frames.shape
    h, w, nl = height // 4, width // 4, num_local
    local = (frames[:, :nl].astype(jnp.promote_types(frames.dtype, jnp.float32)) + 1) / 2
    local = upsample_bilinear(local.reshape(b * nl, height, width, 3), (h, w), align_corners=True)
    local = local.reshape(b, nl, h, w, 3)
    first, second = local[:, :-1], local[:, 1:]
    flows = spynet(frame_pairs(first, second), frame_pairs(second, first)).reshape(b, 2, nl - 1, h, w, 2)
    return flows[:, 0], flows[:, 1]


class E2FGVIHQ(E2FGVI):
    """E2FGVI-HQ (`model/e2fgvi_hq.py`): the composition bias becomes a 3x3 conv on the folded map, so
    any valid size runs (`base_size` / `resize_embeddings` are unused)."""

    hq: ClassVar[bool] = True


# --- propagation ----------------------------------------------------------------------------------
def _lrelu(x):
    return jax.nn.leaky_relu(x, 0.1)


class PropagationBackbone(nn.Module):
    """conv3x3 -> LeakyReLU(0.1) -> conv3x3 (the residual of one propagation step)."""

    channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = _lrelu(conv2d(self.channels, 3, dtype=self.dtype, name="conv0")(x))
        return conv2d(self.channels, 3, dtype=self.dtype, name="conv1")(x)


UNROLLED_STEPS = 2  # propagation steps per branch written out; more are one scan


class BidirectionalPropagation(nn.Module):
    """BasicVSR++-style second-order, flow-guided deformable propagation (E2FGVI's feat_prop_module).

    __call__(x, backward_branch_flows, forward_branch_flows): x (B, L, H, W, C) local features, flows
    (B, L - 1, H, W, 2). The 'backward' branch visits frames L-1, ..., 0 and the 'forward' branch 0, ...,
    L-1; step s >= 1 of EITHER branch uses flows[:, s - 1] (and flows[:, s - 2] for the second-order
    flow) - for the backward branch this index is not reversed (official quirk). Returns
    fusion(cat[backward, forward]) + x, (B, L, H, W, C).

    Steps 1..L-1 of a branch are one scan (`_step`): the program, and its compile time, do not grow with L
    (up to UNROLLED_STEPS steps are written out instead: a scan that short compiles slower than its steps).
    """

    channels: int = 128
    dtype: Any = jnp.float32

    def setup(self):
        for name in ("backward", "forward"):
            setattr(self, f"deform_align_{name}", SecondOrderDeformableAlignment(dtype=self.dtype))
            setattr(self, f"backbone_{name}", PropagationBackbone(self.channels, self.dtype))
        self.fusion = conv2d(self.channels, 1, dtype=self.dtype)

    def _step(self, carry, xs, name: str):
        """Step s >= 1 of a branch. carry: (result of step s-1, result of step s-2 (zeros at s = 1), the first
        alignment); xs: (s, current frame, flows[:, s-1], flows[:, s-2] (zeros at s = 1)[, backward result])."""
        feat_prop, feat_n2, first = carry
        s, current, flow_n1, flow_prev, *others = xs
        cond_n1 = flow_warp(feat_prop, flow_n1)
        flow_n2 = jnp.where(s > 1, flow_n1 + flow_warp(flow_prev, flow_n1), jnp.zeros_like(flow_n1))
        cond_n2 = flow_warp(feat_n2, flow_n2)  # zeros at s = 1 (zero features, zero flow)
        aligned = getattr(self, f"deform_align_{name}")(jnp.concatenate([feat_prop, feat_n2], axis=-1),
                                                        jnp.concatenate([cond_n1, current, cond_n2], axis=-1),
                                                        flow_n1, flow_n2)
        first = jnp.where(s == 1, aligned.astype(first.dtype), first)
        result = aligned + getattr(self, f"backbone_{name}")(jnp.concatenate([current, *others, aligned], axis=-1))
        return (result, feat_prop, first), result

    def __call__(self, x, backward_branch_flows, forward_branch_flows):
        b, lt, h, w, c = x.shape
        time_major = lambda a: jnp.moveaxis(a, 1, 0)  # noqa: E731
        branches = {}
        for name, flows, order in (("backward", backward_branch_flows, np.arange(lt - 1, -1, -1)),
                                   ("forward", forward_branch_flows, np.arange(lt))):
            zeros = jnp.zeros((b, h, w, self.channels), x.dtype)
            others = [branches["backward"]] if name == "forward" else []  # the forward branch's order is 0..L-1
            step0 = getattr(self, f"backbone_{name}")(jnp.concatenate([x[:, order[0]], *[o[:, 0] for o in others],
                                                                        zeros], axis=-1))  # no alignment
            out = [step0[:, None]]
            if lt > 1:
                flows = time_major(flows[:, :lt - 1])
                xs = (jnp.arange(1, lt), time_major(x[:, order[1:]]), flows,
                      jnp.concatenate([jnp.zeros_like(flows[:1]), flows[:-1]]),
                      *[time_major(o[:, 1:]) for o in others])
                carry = (step0, zeros, zeros)
                if lt - 1 <= UNROLLED_STEPS:  # a scan of one or two steps compiles slower than the steps
                    results = []
                    for i in range(lt - 1):
                        carry, result = self._step(carry, [a[i] for a in xs], name)
                        results.append(result)
                    results = jnp.stack(results)
                else:
                    scan = nn.scan(functools.partial(BidirectionalPropagation._step, name=name),
                                   variable_broadcast="params", split_rngs={"params": False}, in_axes=0, out_axes=0)
                    carry, results = scan(self, carry, xs)
                aligned = carry[2]
                if name == "backward":
                    self.sow("intermediates", "align_backward", aligned)
                out.append(jnp.moveaxis(results, 0, 1))
            out = jnp.concatenate(out, axis=1)
            branches[name] = out[:, order] if name == "backward" else out  # back to frame order
        return self.fusion(jnp.concatenate([branches["backward"], branches["forward"]], axis=-1)) + x


# --- transformer ----------------------------------------------------------------------------------
class TemporalFocalBlock(nn.Module):
    """x + TemporalFocalAttention(LN(x), FocalPool(LN(x))); x + FusionFeedForward(LN(x)).

    Tokens (B, T, nh, nw, C); `feature_size` is the (h, w) feature map the tokens were split from.
    """

    dim: int
    heads: int
    window: tuple
    focal_window: tuple
    ffn_hidden: int
    kernel: int
    stride: int
    padding: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, feature_size):
        ln = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)
        y = ln("norm1")(x)
        pooled = FocalPool(self.window, self.dtype, name="pool")(y)
        x = x + TemporalFocalAttention(self.dim, self.heads, self.window, self.focal_window, self.dtype,
                                       name="attn")(y, pooled)
        return x + FusionFeedForward(self.dim, self.ffn_hidden, self.kernel, self.stride, self.padding, "gelu",
                                     self.dtype, name="mlp")(ln("norm2")(x), feature_size)



# --- checkpoint mapping ---------------------------------------------------------------------------
def from_torch(sd, model: E2FGVI) -> dict:
    params = {"encoder": encoder_from_torch(sd)}
    params["update_spynet"] = spynet_from_torch(sd, "update_spynet")
    fp = "feat_prop_module"
    prop = {"fusion": sd.conv(f"{fp}.fusion")}
    for name in ("backward", "forward"):
        prop[f"deform_align_{name}"] = deform_align_from_torch(sd, f"{fp}.deform_align.{name}_")
        prop[f"backbone_{name}"] = {"conv0": sd.conv(f"{fp}.backbone.{name}_.0"),
                                    "conv1": sd.conv(f"{fp}.backbone.{name}_.2")}
    params["feat_prop"] = prop
    params["ss"] = sd.linear("ss.embedding")
    expected_rolled = rolled_ring_indices(model.window, (model.window[0] // 2, model.window[1] // 2))
    for i in range(model.num_blocks):
        p = f"transformer.{i}"
        key = f"{p}.attn.valid_ind_rolled"
        if key in sd:  # a derivable buffer: check it, do not store it
            got = sd.raw(key, np.int64).reshape(-1)
            if got.shape != expected_rolled.shape or (got != expected_rolled).any():
                raise CheckpointError(f"{key} = {got.tolist()} differs from the ring indices this model derives "
                                      f"for window {tuple(model.window)}")
        params[f"block{i}"] = {
            "norm1": sd.norm(f"{p}.norm1"),
            "pool": {"fc": sd.linear(f"{p}.pool_layers.0")},
            "attn": {"qkv": sd.linear(f"{p}.attn.qkv"), "proj": sd.linear(f"{p}.attn.proj")},
            "norm2": sd.norm(f"{p}.norm2"),
            "mlp": {"fc1": sd.linear(f"{p}.mlp.conv1.0"), "fc2": sd.linear(f"{p}.mlp.conv2.1")},
        }
    params["sc"] = sd.linear("sc.embedding")
    if model.hq:
        params["sc_bias_conv"] = sd.conv("sc.bias_conv")
    else:
        params["sc_bias"] = sd.tensor("sc.bias", lambda a: a.transpose(1, 2, 0))
    params["decoder"] = decoder_from_torch(sd)
    return {"params": params}


def example_inputs(model: E2FGVI):
    return (jnp.zeros((1, 2, *model.base_size, 3), jnp.float32),)


def e2fgvi_size(model: E2FGVI) -> SizeRule:
    """E2FGVI: 240x432 (its composition bias); E2FGVI-HQ (and E2FGVI with resize_embeddings): the native
    size, mirror-padded to multiples of (60, 108) so the token grid tiles into the attention windows."""
    if model.hq or model.resize_embeddings:
        return SizeRule(None, PAD_MULTIPLE)
    return SizeRule(tuple(model.base_size), PAD_MULTIPLE)


# the official test.py tells the model how many window frames are local (num_local_frames); the masks are
# not a network input (holes are already 0); apply returns (frames, (flows_forward, flows_backward))
FACTS = dict(kind="inpainting", inputs=("masked_frames", "num_local_frames"), outputs=("frames", "flows"),
             size_rule=e2fgvi_size, protocol=ProtocolDefaults("e2fgvi", local_frames=True),
             discriminator="fuseformer_discriminator", extra_losses=("flow",))
register("e2fgvi", E2FGVI, from_torch, example_inputs, **FACTS,
         description="E2FGVI generator (CVPR 2022), 240x432; returns (frames, (flows_forward, flows_backward))")
register("e2fgvi_hq", E2FGVIHQ, from_torch, example_inputs, **FACTS,
         description="E2FGVI-HQ generator (CVPR 2022), any size (pad with layers.padding.pad_to_multiple)")
