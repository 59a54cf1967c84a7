"""ImageNet backbones whose blocks are the token mixers of the mixer generators:
PoolFormer-S12 (sail-sg/poolformer), Swin-T (microsoft/Swin-Transformer), Focal-T
(microsoft/Focal-Transformer), converted from the official checkpoints.

    logits = models.build("swin_tiny").apply(variables, images)     # images (B, H, W, 3) -> (B, 1000)

Images are channels-last and already normalised (ImageNet mean / std). PoolFormer takes any size;
Swin-T and Focal-T are built for `img_size` (224) and refuse other sizes (as the official patch
embedding does) - build with img_size=... for another one (every stage's resolution must then be a whole
number of windows).
The features before the final norm are sown as 'features' (mutable=["intermediates"]).

Block-level entries (kind "block") run one official module alone, on (B, H, W, C) maps:
"poolformer_block" (PoolFormerBlock), "swin_block" (a Swin BasicLayer of two blocks, the second
shifted), "focal_block" (one FocalTransformerBlock).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ecformer_jax.errors import CheckpointError
from ecformer_jax.layers.mixers import (
    FocalAttention,
    GroupNorm1,
    PoolMixer,
    ShiftedWindowAttention,
    effective_window,
    focal_kernel,
    focal_window_index,
    relative_position_index,
    shift_mask,
    trunc_normal,
    window_reverse_nd,
)
from ecformer_jax.layers.windows import FocalPool, rolled_ring_indices
from ecformer_jax.models.registry import register


def _check_images(images, what="images"):
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"{what} must be a 4-D array (B, H, W, 3) (channels-last RGB); got shape {shape}")
    return shape


def _check_map(x, dim, what):
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 4 or shape[-1] != dim:
        raise ValueError(f"{what} input must be a (B, H, W, {dim}) map (channels-last); got shape {shape}")
    return shape


class Mlp(nn.Module):
    """Linear(C -> hidden) -> exact GELU -> Linear(hidden -> C) (1x1 convs in PoolFormer)."""

    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        y = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=trunc_normal, name="fc1")(x)
        return nn.Dense(c, dtype=self.dtype, kernel_init=trunc_normal, name="fc2")(jax.nn.gelu(y, approximate=False))


def _conv(features, kernel, stride, padding, dtype, name):
    return nn.Conv(features, (kernel, kernel), (stride, stride), [(padding, padding)] * 2, dtype=dtype,
                   kernel_init=trunc_normal, name=name)


# =================================================================================================
# PoolFormer
# =================================================================================================
class PoolFormerBlock(nn.Module):
    """x + ls1 * (avgpool(u) - u) with u = GN(x); then x + ls2 * MLP(GN(x)). (B, H, W, C) -> same."""

    dim: int = 64
    pool_size: int = 3
    mlp_ratio: float = 4.0
    layer_scale_init: float = 1e-5  # 0 = no layer scale
    resolution: tuple = (16, 16)  # example input size only; any size runs
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        _check_map(x, self.dim, "PoolFormerBlock")
        x = x.astype(self.dtype)
        u = GroupNorm1(dtype=self.dtype, name="norm1")(x)
        self.sow("intermediates", "norm1_out", u)
        y = PoolMixer((self.pool_size, self.pool_size), name="token_mixer")(u)
        self.sow("intermediates", "token_mixer_out", y)
        if self.layer_scale_init:
            y = y * self.param("layer_scale_1", nn.initializers.constant(self.layer_scale_init), (self.dim,))
        x = x + y.astype(self.dtype)
        y = Mlp(int(self.dim * self.mlp_ratio), self.dtype, name="mlp")(GroupNorm1(dtype=self.dtype, name="norm2")(x))
        self.sow("intermediates", "mlp_out", y)
        if self.layer_scale_init:
            y = y * self.param("layer_scale_2", nn.initializers.constant(self.layer_scale_init), (self.dim,))
        return x + y.astype(self.dtype)


class PoolFormer(nn.Module):
    """PoolFormer (MetaFormer with pooling): conv 7x7/4 stem, four stages of PoolFormer blocks with
    conv 3x3/2 downsamples between them, GroupNorm(1), mean over H, W, linear head. Any input size."""

    layers: tuple = (2, 2, 6, 2)
    embed_dims: tuple = (64, 128, 320, 512)
    mlp_ratios: tuple = (4, 4, 4, 4)
    pool_size: int = 3
    layer_scale_init: float = 1e-5
    num_classes: int = 1000
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images):
        _check_images(images)
        x = _conv(self.embed_dims[0], 7, 4, 2, self.dtype, "patch_embed")(images.astype(self.dtype))
        self.sow("intermediates", "patch_embed_out", x)
        for s, (depth, dim, ratio) in enumerate(zip(self.layers, self.embed_dims, self.mlp_ratios)):
            if s > 0:
                x = _conv(dim, 3, 2, 1, self.dtype, f"network_{2 * s - 1}")(x)
            for j in range(depth):
                x = PoolFormerBlock(dim, self.pool_size, ratio, self.layer_scale_init, dtype=self.dtype,
                                    name=f"network_{2 * s}_{j}")(x)
            self.sow("intermediates", f"network.{2 * s}", x)
        self.sow("intermediates", "features", x)
        x = GroupNorm1(dtype=self.dtype, name="norm")(x).mean(axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=trunc_normal, name="head")(x)


def poolformer_block_from_torch(sd, prefix: str, layer_scale: bool = True) -> dict:
    out = {"norm1": sd.norm(f"{prefix}norm1"), "norm2": sd.norm(f"{prefix}norm2"),
           "mlp": {"fc1": sd.linear(f"{prefix}mlp.fc1"), "fc2": sd.linear(f"{prefix}mlp.fc2")}}
    if layer_scale:
        out["layer_scale_1"] = sd.tensor(f"{prefix}layer_scale_1")
        out["layer_scale_2"] = sd.tensor(f"{prefix}layer_scale_2")
    return out


def poolformer_from_torch(sd, model: PoolFormer) -> dict:
    params = {"patch_embed": sd.conv("patch_embed.proj")}
    for s, depth in enumerate(model.layers):
        if s > 0:
            params[f"network_{2 * s - 1}"] = sd.conv(f"network.{2 * s - 1}.proj")
        for j in range(depth):
            params[f"network_{2 * s}_{j}"] = poolformer_block_from_torch(sd, f"network.{2 * s}.{j}.",
                                                                         bool(model.layer_scale_init))
    params["norm"] = sd.norm("norm")
    params["head"] = sd.linear("head")
    return {"params": params}


# =================================================================================================
# Swin Transformer
# =================================================================================================
class SwinBlock(nn.Module):
    """x + W-MSA(LN(x)) (shifted when `shift` > 0), then x + MLP(LN(x)); (B, H, W, C) -> same.

    Swin's clamp: if min(H, W) <= window, the window becomes min(H, W) and the shift 0 (the bias table
    then has (2 min(H, W) - 1)^2 rows, as in the official model). H, W must be multiples of the window.
    """

    dim: int
    heads: int
    window: int = 7
    shift: int = 0
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        _, h, w, _ = _check_map(x, self.dim, "SwinBlock")
        x = x.astype(self.dtype)
        eff_w, eff_s = effective_window((h, w), (self.window,) * 2, (self.shift,) * 2, per_axis=False)
        ln = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)
        u = ln("norm1")(x)
        self.sow("intermediates", "norm1_out", u)
        x = x + ShiftedWindowAttention(self.dim, self.heads, eff_w, dtype=self.dtype, name="attn")(u, eff_w, eff_s)
        return x + Mlp(int(self.dim * self.mlp_ratio), self.dtype, name="mlp")(ln("norm2")(x))


class PatchMerging(nn.Module):
    """(B, H, W, C) -> (B, H/2, W/2, 2C): concat the (even, even), (odd, even), (even, odd), (odd, odd)
    sub-grids (row, col), LayerNorm(4C), Linear(4C -> 2C, no bias)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        _, h, w, c = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"PatchMerging needs an even token grid; got {h}x{w}")
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(x)
        return nn.Dense(2 * c, use_bias=False, dtype=self.dtype, kernel_init=trunc_normal, name="reduction")(x)


class SwinStage(nn.Module):
    """Swin BasicLayer: `depth` blocks (odd ones shifted by window // 2), then optional PatchMerging."""

    dim: int = 96
    depth: int = 2
    heads: int = 3
    window: int = 7
    mlp_ratio: float = 4.0
    downsample: bool = False
    resolution: tuple = (14, 14)  # example input size for the block-level entry
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        _check_map(x, self.dim, "SwinStage")
        for j in range(self.depth):
            x = SwinBlock(self.dim, self.heads, self.window, 0 if j % 2 == 0 else self.window // 2, self.mlp_ratio,
                          self.dtype, name=f"blocks_{j}")(x)
            self.sow("intermediates", f"blocks.{j}", x)
        if self.downsample:
            x = PatchMerging(self.dtype, name="downsample")(x)
        return x


class PatchEmbed(nn.Module):
    """Conv(k = s = patch) -> LayerNorm over channels (Swin / Focal stem and Focal's downsampling)."""

    features: int
    patch: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = _conv(self.features, self.patch, self.patch, 0, self.dtype, "proj")(x)
        return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(x)


def _check_size(images, img_size, name):
    _, h, w, _ = _check_images(images)
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if (h, w) != size:
        raise ValueError(f"{name} is built for {size[0]}x{size[1]} images (its windows and checkpoint buffers "
                         f"depend on the size); got {h}x{w}. Resize / crop to {size[0]}x{size[1]} (the official "
                         "eval resizes to 256 and centre-crops 224) or build the model with img_size=...")
    return size


class SwinTransformer(nn.Module):
    """Swin Transformer v1 classifier (Swin-T defaults)."""

    img_size: int = 224
    patch_size: int = 4
    embed_dim: int = 96
    depths: tuple = (2, 2, 6, 2)
    heads: tuple = (3, 6, 12, 24)
    window: int = 7
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images):
        _check_size(images, self.img_size, "Swin")
        x = PatchEmbed(self.embed_dim, self.patch_size, self.dtype, name="patch_embed")(images.astype(self.dtype))
        for s, (depth, heads) in enumerate(zip(self.depths, self.heads)):
            x = SwinStage(self.embed_dim * 2 ** s, depth, heads, self.window, self.mlp_ratio,
                          downsample=s < len(self.depths) - 1, dtype=self.dtype, name=f"layers_{s}")(x)
            self.sow("intermediates", f"layers.{s}", x)
        self.sow("intermediates", "features", x)
        x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(x).mean(axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=trunc_normal, name="head")(x)


def check_buffer(sd, key: str, expected: np.ndarray, dtype=np.int64):
    """A derivable buffer of the official state_dict: if present, it must equal what we compute."""
    if key not in sd:
        return
    got = sd.raw(key, dtype)
    if got.shape != expected.shape or not np.array_equal(got, expected.astype(dtype)):
        raise CheckpointError(f"{key} (shape {got.shape}) differs from the value this model derives "
                              f"(shape {expected.shape}); the checkpoint was made for another configuration")


def swin_block_from_torch(sd, prefix: str, resolution, window: int, shift: int) -> dict:
    eff_w, eff_s = effective_window(resolution, (window,) * 2, (shift,) * 2, per_axis=False)
    check_buffer(sd, f"{prefix}attn.relative_position_index", relative_position_index(eff_w))
    if any(eff_s):
        check_buffer(sd, f"{prefix}attn_mask", shift_mask(resolution, eff_w, eff_s), np.float32)
    return {
        "norm1": sd.norm(f"{prefix}norm1"),
        "attn": {"qkv": sd.linear(f"{prefix}attn.qkv"), "proj": sd.linear(f"{prefix}attn.proj"),
                 "relative_position_bias_table": sd.tensor(f"{prefix}attn.relative_position_bias_table")},
        "norm2": sd.norm(f"{prefix}norm2"),
        "mlp": {"fc1": sd.linear(f"{prefix}mlp.fc1"), "fc2": sd.linear(f"{prefix}mlp.fc2")},
    }


def swin_stage_from_torch(sd, prefix: str, stage: SwinStage, resolution) -> dict:
    out = {f"blocks_{j}": swin_block_from_torch(sd, f"{prefix}blocks.{j}.", resolution, stage.window,
                                                0 if j % 2 == 0 else stage.window // 2)
           for j in range(stage.depth)}
    if stage.downsample:
        out["downsample"] = {"norm": sd.norm(f"{prefix}downsample.norm"),
                             "reduction": sd.linear(f"{prefix}downsample.reduction", bias=False)}
    return out


def _stage_resolutions(img_size, patch, n):
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    return [(size[0] // patch // 2 ** s, size[1] // patch // 2 ** s) for s in range(n)]


def swin_from_torch(sd, model: SwinTransformer) -> dict:
    params = {"patch_embed": {"proj": sd.conv("patch_embed.proj"), "norm": sd.norm("patch_embed.norm")}}
    for s, res in enumerate(_stage_resolutions(model.img_size, model.patch_size, len(model.depths))):
        stage = SwinStage(model.embed_dim * 2 ** s, model.depths[s], model.heads[s], model.window,
                          downsample=s < len(model.depths) - 1)
        params[f"layers_{s}"] = swin_stage_from_torch(sd, f"layers.{s}.", stage, res)
    params["norm"] = sd.norm("norm")
    params["head"] = sd.linear("head")
    return {"params": params}


# =================================================================================================
# Focal Transformer
# =================================================================================================
class FocalBlock(nn.Module):
    """Focal Transformer block (no shift, 'fc' pooling, focal level 1 or 2); (B, H, W, C) -> same.

    x + FocalAttention(pad(LN(x))) cropped back, then x + MLP(LN(x)). Clamp: if min(H, W) <= window,
    window = min(H, W) and expand = 0. LN(x) is zero-padded at the bottom / right to whole windows; the
    padded tokens are ordinary keys and enter the window pooling.
    """

    dim: int = 96
    heads: int = 3
    window: int = 7
    expand: int = 3
    focal_level: int = 2
    focal_window: int = 7
    mlp_ratio: float = 4.0
    resolution: tuple = (20, 26)  # example input size for the block-level entry
    dtype: Any = jnp.float32

    def config(self, h: int, w: int):
        if self.focal_level not in (1, 2):
            raise ValueError(f"FocalBlock supports focal_level 1 or 2 (one pooled level, as Focal-T/S/B); got "
                             f"{self.focal_level}")
        if min(h, w) <= self.window:
            return min(h, w), 0
        return self.window, self.expand

    @nn.compact
    def __call__(self, x):
        b, h, w, c = _check_map(x, self.dim, "FocalBlock")
        x = x.astype(self.dtype)
        ws, e = self.config(h, w)
        ln = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)
        u = ln("norm1")(x)
        self.sow("intermediates", "norm1_out", u)
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        up = jnp.pad(u, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
        pooled = None
        if self.focal_level > 1:
            pooled = FocalPool((ws, ws), self.dtype, name="pool_layers_0")(up[:, None])[:, 0]  # (B, nh, nw, C)
            self.sow("intermediates", "pool_layers.0", pooled[..., None])
        out = FocalAttention(self.dim, self.heads, ws, e, self.focal_window, self.focal_level, dtype=self.dtype,
                             name="attn")(up, pooled)  # (B, nh, nw, N, C)
        out = out.reshape(b, -1, ws * ws, c)
        self.sow("intermediates", "attn_out", out)
        x = x + window_reverse_nd(out, (ws, ws), (hp, wp))[:, :h, :w]
        y = Mlp(int(self.dim * self.mlp_ratio), self.dtype, name="mlp")(ln("norm2")(x))
        self.sow("intermediates", "mlp_out", y)
        return x + y


class FocalStage(nn.Module):
    """Focal BasicLayer: `depth` focal blocks, then optional PatchEmbed(conv 2x2/2 + LN) downsampling."""

    dim: int
    depth: int
    heads: int
    window: int = 7
    expand: int = 3
    focal_level: int = 2
    focal_window: int = 7
    mlp_ratio: float = 4.0
    downsample: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for j in range(self.depth):
            x = FocalBlock(self.dim, self.heads, self.window, self.expand, self.focal_level, self.focal_window,
                           self.mlp_ratio, dtype=self.dtype, name=f"blocks_{j}")(x)
            self.sow("intermediates", f"blocks.{j}", x)
        if self.downsample:
            x = PatchEmbed(2 * self.dim, 2, self.dtype, name="downsample")(x)
        return x


class FocalTransformer(nn.Module):
    """Focal Transformer classifier (Focal-T defaults: no conv embedding, no shift, 'fc' pooling)."""

    img_size: int = 224
    patch_size: int = 4
    embed_dim: int = 96
    depths: tuple = (2, 2, 6, 2)
    heads: tuple = (3, 6, 12, 24)
    window: int = 7
    focal_levels: tuple = (2, 2, 2, 2)
    focal_windows: tuple = (7, 5, 3, 1)
    expand_sizes: tuple = (3, 3, 3, 3)
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    dtype: Any = jnp.float32

    def stage_config(self, s: int) -> dict:
        return dict(dim=self.embed_dim * 2 ** s, depth=self.depths[s], heads=self.heads[s], window=self.window,
                    expand=self.expand_sizes[s], focal_level=self.focal_levels[s], focal_window=self.focal_windows[s],
                    mlp_ratio=self.mlp_ratio, downsample=s < len(self.depths) - 1)

    @nn.compact
    def __call__(self, images):
        _check_size(images, self.img_size, "Focal Transformer")
        x = PatchEmbed(self.embed_dim, self.patch_size, self.dtype, name="patch_embed")(images.astype(self.dtype))
        for s in range(len(self.depths)):
            x = FocalStage(**self.stage_config(s), dtype=self.dtype, name=f"layers_{s}")(x)
            self.sow("intermediates", f"layers.{s}", x)
        self.sow("intermediates", "features", x)
        x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(x).mean(axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=trunc_normal, name="head")(x)


def focal_block_from_torch(sd, prefix: str, block: FocalBlock, resolution) -> dict:
    ws, e = block.config(*resolution)
    p = f"{prefix}attn."
    check_buffer(sd, f"{p}relative_position_index", relative_position_index((ws, ws)))
    attn = {"qkv": sd.linear(f"{p}qkv"), "proj": sd.linear(f"{p}proj"),
            "relative_position_bias_table": sd.tensor(f"{p}relative_position_bias_table")}
    if e > 0:
        check_buffer(sd, f"{p}valid_ind_rolled", rolled_ring_indices((ws, ws), (e, e)))
        attn["relative_position_bias_table_to_neighbors"] = sd.tensor(f"{p}relative_position_bias_table_to_neighbors")
    out = {"norm1": sd.norm(f"{prefix}norm1"), "attn": attn, "norm2": sd.norm(f"{prefix}norm2"),
           "mlp": {"fc1": sd.linear(f"{prefix}mlp.fc1"), "fc2": sd.linear(f"{prefix}mlp.fc2")}}
    if block.focal_level > 1:
        kern = focal_kernel(block.focal_window)
        check_buffer(sd, f"{p}relative_position_index_0", focal_window_index(ws, kern))
        attn["relative_position_bias_table_to_windows_0"] = sd.tensor(f"{p}relative_position_bias_table_to_windows.0")
        out["pool_layers_0"] = {"fc": sd.linear(f"{prefix}pool_layers.0")}
    return out


def focal_from_torch(sd, model: FocalTransformer) -> dict:
    params = {"patch_embed": {"proj": sd.conv("patch_embed.proj"), "norm": sd.norm("patch_embed.norm")}}
    for s, res in enumerate(_stage_resolutions(model.img_size, model.patch_size, len(model.depths))):
        cfg = model.stage_config(s)
        block = FocalBlock(cfg["dim"], cfg["heads"], cfg["window"], cfg["expand"], cfg["focal_level"],
                           cfg["focal_window"])
        out = {f"blocks_{j}": focal_block_from_torch(sd, f"layers.{s}.blocks.{j}.", block, res)
               for j in range(cfg["depth"])}
        if cfg["downsample"]:
            out["downsample"] = {"proj": sd.conv(f"layers.{s}.downsample.proj"),
                                 "norm": sd.norm(f"layers.{s}.downsample.norm")}
        params[f"layers_{s}"] = out
    params["norm"] = sd.norm("norm")
    params["head"] = sd.linear("head")
    return {"params": params}


# =================================================================================================
# registration
# =================================================================================================
def _images(model):
    size = getattr(model, "img_size", 64)
    size = (size, size) if isinstance(size, int) else tuple(size)
    return (jnp.zeros((1, *size, 3), jnp.float32),)


def _block_input(model):
    return (jnp.zeros((1, *model.resolution, model.dim), jnp.float32),)


register("poolformer_s12", PoolFormer, poolformer_from_torch, _images, kind="backbone",
         description="PoolFormer-S12 ImageNet classifier (sail-sg/poolformer), any size; images (B, H, W, 3)")
register("swin_tiny", SwinTransformer, swin_from_torch, _images, kind="backbone",
         description="Swin-T (patch 4, window 7) ImageNet classifier, 224x224; images (B, 224, 224, 3)")
register("focal_tiny", FocalTransformer, focal_from_torch, _images, kind="backbone",
         description="Focal-T (window 7, 'fc' pooling, no conv embedding) ImageNet classifier, 224x224")
register("poolformer_block", PoolFormerBlock, lambda sd, m: {"params": poolformer_block_from_torch(
    sd, "", bool(m.layer_scale_init))}, _block_input, kind="block",
    description="one PoolFormerBlock on (B, H, W, C) maps")
register("swin_block", SwinStage, lambda sd, m: {"params": swin_stage_from_torch(sd, "", m, m.resolution)},
         _block_input, kind="block", description="Swin BasicLayer (blocks 0 plain, 1 shifted) on (B, H, W, C) maps")
register("focal_block", FocalBlock, lambda sd, m: {"params": focal_block_from_torch(sd, "", m, m.resolution)},
         _block_input, kind="block", description="one FocalTransformerBlock on (B, H, W, C) maps")
