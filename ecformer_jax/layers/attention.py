"""Scaled dot-product attention: one core (`attend`) under the dense, top-k and windowed attentions, and the
multi-head wrapper.

Why tiles: on the CPU the (..., Lq, Lk) score tensor of a whole layer is written, read back by the softmax and
read again by the value product; at E2FGVI's 64 x 360 x 1680 or FuseFormer's 4 x 3600 x 3600 logits that is
150-200 MB per pass, and the attention ran at half the speed of the same matmuls on cache-sized blocks.
`attend` therefore evaluates the attention in tiles of about `layers.tiling.CPU_TILE` logits (a group of
heads/windows, or a block of queries of one), one tile after another in a `lax.map`. Every query row gets
the same arithmetic as untiled (up to matmul rounding).

Fused kernels: on the accelerators dense attention never writes its logits to memory. When the *target*
platform (`layers.tiling.target_platform`, set by `with on_platform("tpu"):` for an ahead-of-time compile
on a CPU host) is a TPU, `attend` runs the Pallas flash-attention kernel
(`jax.experimental.pallas.ops.tpu.flash_attention`); on a GPU, cuDNN's through
`jax.nn.dot_product_attention(implementation="cudnn")`; where a kernel's constraints are not met (see
`attend`), the untiled XLA path. The CPU keeps the tiled path (the same forward numerics).

`with implementation("xla"):` forces the XLA path for the code traced inside (like `on_platform`, the
setting is part of jit's cache key); "flash" / "cudnn" force that kernel wherever it fits, whatever the
platform (the Pallas kernel off a TPU only runs in Pallas' TPU interpret mode).

The XLA path's backward (`_rows_bwd`) takes each query's softmax row sum as dout . out, as flash attention does,
where the rows are longer than the head (and, off the CPU, have at least FLASH_MIN_LENGTH keys).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ecformer_jax.layers.conv import normal_init
from ecformer_jax.layers.tiling import default_tile, target_platform, traced_context

IMPLEMENTATIONS = ("auto", "xla", "flash", "cudnn")
MASKED_LOGIT = -100.0  # a static bias entry at or below this masks its key (the fused kernels drop it exactly)
FLASH_MIN_LENGTH = 128  # one kernel block; shorter attentions (the windows) run better as XLA batched matmuls
FLASH_MAX_HEAD_DIM = 512
CUDNN_MAX_HEAD_DIM = 128  # 256 on Hopper and later, but an ahead-of-time trace cannot tell which GPU
_IMPLEMENTATION = traced_context("auto")


def implementation(name: str = "auto"):
    """Context manager: the attention implementation for the code traced inside it. "auto": by target
    platform (flash on TPU, cudnn on GPU, xla on CPU); "xla": the XLA path (tiled on the CPU) everywhere;
    "flash" / "cudnn": that kernel wherever its constraints allow (`attend`), else xla."""
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {name!r} is not one of {', '.join(IMPLEMENTATIONS)}")
    return _IMPLEMENTATION(name)


def _flash_module():
    """The Pallas TPU flash-attention module, or None where this jax has no (working) Pallas TPU."""
    try:
        from jax.experimental.pallas.ops.tpu import flash_attention
    except Exception:  # ImportError, or Pallas / Mosaic failing to initialise on this jax build
        return None
    return flash_attention


def _key_mask(bias, nlead: int, lk: int):
    """A NumPy `bias` that is the same for every query and holds only 0 and <= MASKED_LOGIT entries, as a
    bool keep-mask of shape (nlead dims, Lk) (size 1 where it does not vary); None for any other bias."""
    if not isinstance(bias, np.ndarray):
        return None
    b = np.asarray(bias, np.float32)
    b = b.reshape((1,) * max(0, 2 - b.ndim) + b.shape)
    if (b.shape[-2] != 1 or b.shape[-1] not in (1, lk) or b.ndim - 2 > nlead
            or not np.all((b == 0) | (b <= MASKED_LOGIT))):
        return None
    keep = np.broadcast_to(b[..., 0, :] == 0, b.shape[:-2] + (lk,))
    return keep.reshape((1,) * (nlead + 2 - b.ndim) + keep.shape)


def _static(scale) -> bool:
    """The kernels take the scale as a compile-time constant."""
    return scale is None or (isinstance(scale, (int, float, np.number)) and not isinstance(scale, bool))


def _fused_kernel(q, k, v, scale, bias, topk, tile):
    """("flash", key mask or None) | ("cudnn", None) | (None, None): the kernel for this call."""
    name = _IMPLEMENTATION.value
    if name == "auto":
        name = {"tpu": "flash", "gpu": "cudnn"}.get(target_platform(), "xla")
    (lq, d), (lk, dv) = q.shape[-2:], v.shape[-2:]
    if (name == "xla" or tile is not None or (topk is not None and topk < lk) or dv != d
            or not q.dtype == k.dtype == v.dtype or not _static(scale)):
        return None, None
    if name == "flash":
        keep = None if bias is None else _key_mask(bias, q.ndim - 2, lk)
        if keep is not None and any(m not in (1, n) for m, n in zip(keep.shape, q.shape[:-2])):
            return None, None  # does not broadcast: the XLA path says so
        fits = (q.dtype in (jnp.float32, jnp.bfloat16) and min(lq, lk) >= FLASH_MIN_LENGTH
                and (d < 128 or (d % 128 == 0 and d <= FLASH_MAX_HEAD_DIM))
                and (bias is None or keep is not None) and _flash_module() is not None)
        return ("flash", None if keep is None or keep.all() else keep) if fits else (None, None)
    fits = (q.dtype in (jnp.bfloat16, jnp.float16) and d % 8 == 0 and d <= CUDNN_MAX_HEAD_DIM
            and (bias is None or (lq % 2 == 0 and lk % 2 == 0)))  # cuDNN's bias gradient wants even lengths
    return ("cudnn", None) if fits else (None, None)


def _flash_block(n: int) -> int:
    """Kernel block for a sequence of n: the largest of 512 / 256 that pads n by at most an eighth, else 128."""
    for block in (512, 256):
        if -(-n // block) * block - n <= n // 8:
            return block
    return 128


def _auto_axes(x):
    """(mesh, its axes a jit may split x over), or (None, ()) outside a multi-device jit."""
    try:
        mesh = jax.typeof(x).sharding.mesh
        names, types = tuple(mesh.axis_names), tuple(mesh.axis_types)
    except AttributeError:  # an older jax: no sharding in the abstract value
        return None, ()
    manual = getattr(jax.sharding.AxisType, "Manual", None)
    axes = tuple(a for a, t in zip(names, types) if t != manual and mesh.shape[a] > 1)
    if axes and len(axes) < sum(mesh.shape[a] > 1 for a in names):
        return mesh, None  # partly inside a shard_map: leave it to XLA
    return mesh, axes


def _shard_map(f, mesh, in_specs, out_specs):
    if hasattr(jax, "shard_map"):
        return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    from jax.experimental.shard_map import shard_map  # jax < 0.7
    return shard_map(f, mesh, in_specs, out_specs, check_rep=False)


def _flash(q, k, v, scale, keep):
    """The Pallas TPU flash kernel on (B, ..., L, D) inputs, or None where the call cannot be partitioned.

    Leading axes become the kernel's (batch, heads): the batch axis with every axis the key mask varies
    over, then the rest. L is zero-padded to a whole number of blocks; padded and masked keys get segment
    id 0 (queries 1), so they get exactly zero weight. Under a multi-device jit the kernel runs in a
    `shard_map` over the kernel's batch (else heads) axis, since XLA cannot partition a Mosaic kernel.
    """
    fa = _flash_module()
    squeeze = q.ndim == 2
    if squeeze:
        q, k, v = q[None], k[None], v[None]
        keep = None if keep is None else keep[None]
    lead, (lq, d), lk = q.shape[:-2], q.shape[-2:], k.shape[-2]
    n = len(lead)
    vary = [i for i in range(1, n) if keep is not None and keep.shape[i] > 1]
    perm = (0, *vary, *(i for i in range(1, n) if i not in vary), n, n + 1)
    nb = lead[0] * math.prod(lead[i] for i in vary)
    nh = math.prod(lead[1:]) * lead[0] // nb
    mesh, axes = _auto_axes(q)
    if axes is None:
        return None
    size = math.prod(mesh.shape[a] for a in axes) if axes else 1
    if size > 1 and nb % size and nh % size:
        return None

    bq, bk = _flash_block(lq), _flash_block(lk)
    lq_p, lk_p = -(-lq // bq) * bq, -(-lk // bk) * bk

    def arrange(a, length):  # (B, ..., L, D) -> (nb, nh, length, D)
        a = a if perm == tuple(range(n + 2)) else jnp.transpose(a, perm)
        a = a.reshape(nb, nh, *a.shape[-2:])
        return jnp.pad(a, ((0, 0), (0, 0), (0, length - a.shape[2]), (0, 0))) if length > a.shape[2] else a

    ids = ()
    if keep is not None or lk_p > lk:
        kv = np.zeros((1 if keep is None else keep.shape[0], nb // lead[0], lk_p), np.int32)
        kv[..., :lk] = 1 if keep is None else np.transpose(keep, perm[:-1]).reshape(keep.shape[0], -1, lk)
        kv = jnp.broadcast_to(jnp.asarray(kv), (lead[0], *kv.shape[1:])).reshape(nb, lk_p)
        ids = (jnp.ones((nb, lq_p), jnp.int32), kv)
    blocks = fa.BlockSizes(block_q=bq, block_k_major=bk, block_k=bk, block_b=1, block_q_major_dkv=bq,
                           block_k_major_dkv=bk, block_k_dkv=bk, block_q_dkv=bq, block_k_major_dq=bk,
                           block_k_dq=bk, block_q_dq=bq)

    def kernel(qf, kf, vf, *ids):
        segments = fa.SegmentIds(*ids) if ids else None
        return fa.flash_attention(qf, kf, vf, None, segments, sm_scale=1.0 if scale is None else float(scale),
                                  block_sizes=blocks)

    args = (arrange(q, lq_p), arrange(k, lk_p), arrange(v, lk_p), *ids)
    if size > 1:
        P = jax.sharding.PartitionSpec
        spec, ispec = (P(axes), P(axes)) if nb % size == 0 else (P(None, axes), P())
        specs = (spec,) * 3 + (ispec,) * len(ids)
        explicit = getattr(jax.sharding.AxisType, "Explicit", None)
        if explicit in (dict(zip(mesh.axis_names, mesh.axis_types))[a] for a in axes):  # typed shardings
            args = tuple(jax.sharding.reshard(a, jax.sharding.NamedSharding(mesh, s)) for a, s in zip(args, specs))
        kernel = _shard_map(kernel, mesh, specs, spec)
    out = kernel(*args)[:, :, :lq]
    out = out.reshape(*(lead[i] for i in perm[:-2]), lq, d)
    out = out if perm == tuple(range(n + 2)) else jnp.transpose(out, np.argsort(perm))
    return out[0] if squeeze else out


def _cudnn(q, k, v, scale, bias):
    """cuDNN's fused attention (jax.nn.dot_product_attention) on (B, ..., L, D) inputs: leading axes become
    (batch, heads); a bias goes in as (1 or B, heads, Lq, Lk) in the inputs' dtype."""
    lead, lq, lk = q.shape[:-2] or (1,), q.shape[-2], k.shape[-2]
    b, g = lead[0], math.prod(lead[1:])
    to4 = lambda a: jnp.swapaxes(a.reshape(b, g, *a.shape[-2:]), 1, 2)  # (B, L, heads, D)
    bias4 = None
    if bias is not None:
        bias4 = jnp.asarray(bias, jnp.float32)
        bias4 = bias4.reshape((1,) * (len(lead) + 2 - bias4.ndim) + bias4.shape)
        bb = b if q.ndim > 2 and bias4.shape[0] != 1 else 1
        bias4 = jnp.broadcast_to(bias4, (bb, *lead[1:], lq, lk)).reshape(bb, g, lq, lk).astype(q.dtype)
    out = jax.nn.dot_product_attention(to4(q), to4(k), to4(v), bias=bias4, scale=1.0 if scale is None else scale,
                                       implementation="cudnn")
    return jnp.swapaxes(out, 1, 2).reshape(q.shape)


def _softmax_rows(q, k, v, scale, bias, topk):
    if q.ndim > 3:  # one batch axis: XLA's CPU dot runs slower with several
        lead = q.shape[:-2]
        flat = lambda a: None if a is None else a.reshape(-1, *a.shape[-2:])
        out = _softmax_rows(flat(q), flat(k), flat(v), scale, flat(bias), topk)
        return out.reshape(*lead, *out.shape[-2:])
    lk, dv = k.shape[-2], v.shape[-1]
    if _static(scale) and lk > dv and (target_platform() == "cpu" or lk >= FLASH_MIN_LENGTH):
        return _rows(q, k, v, bias, scale, topk)
    return _rows_forward(q, k, v, bias, scale, topk)[0]


def _rows_forward(q, k, v, bias, scale, topk):
    """softmax(scale * q k^T + bias) v, and the float32 probabilities."""
    scores = jnp.einsum("...qd,...kd->...qk", q, k, preferred_element_type=jnp.float32)
    if scale is not None:
        scores = scores * scale
    if bias is not None:
        scores = scores + bias
    if topk is not None and topk < scores.shape[-1]:
        kth = jax.lax.stop_gradient(jax.lax.top_k(scores, topk)[0][..., -1:])
        scores = jnp.where(scores >= kth, scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("...qk,...kd->...qd", probs.astype(v.dtype), v), probs


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _rows(q, k, v, bias, scale, topk):
    return _rows_forward(q, k, v, bias, scale, topk)[0]


def _rows_fwd(q, k, v, bias, scale, topk):
    out, probs = _rows_forward(q, k, v, bias, scale, topk)
    return out, (q, k, v, bias, probs, out)


def _rows_bwd(scale, topk, residuals, dout):
    """The softmax's backward with each query's sum_k p dp taken as dout . out (one Lq x Dv product, as flash
    attention does) instead of a reduction over the Lq x Lk logits: XLA's CPU backend ran that reduction at
    ~13 ms per 1440 x 1440 head (FuseFormer: 0.39 s of a 4.4 s training step). Only for rows longer than the
    head (Lk > Dv): with few keys and long values (STTN's patch attention: a few hundred keys at most, thousands
    of values per token) the two float32 sums disagree by more than the small true differences dp - row, and
    STTN's second training step moved 4e-3 from the official one (8e-4 with autodiff's form). Used on the CPU,
    and on a TPU or GPU for rows of at least FLASH_MIN_LENGTH keys (the top-k and biased attentions that no
    kernel takes: a v5e compile of ECFormer's top-k attention gradient accesses 21 % fewer bytes; short windows,
    where the saved output outweighs the logits, keep autodiff's form: 16-query x 80-key windows would access
    6 % more)."""
    q, k, v, bias, probs, out = residuals
    f32 = jnp.float32
    dvalues = jnp.einsum("...qk,...qd->...kd", probs.astype(v.dtype), dout, preferred_element_type=f32).astype(v.dtype)
    dprobs = jnp.einsum("...qd,...kd->...qk", dout, v, preferred_element_type=f32)
    row = jnp.sum(dout.astype(f32) * out.astype(f32), axis=-1, keepdims=True)
    dscores = probs * (dprobs - row)
    dbias = None if bias is None else _unbroadcast(dscores, bias.shape).astype(bias.dtype)
    if scale is not None:
        dscores = dscores * scale
    dscores = dscores.astype(q.dtype)
    dq = jnp.einsum("...qk,...kd->...qd", dscores, k, preferred_element_type=f32).astype(q.dtype)
    dk = jnp.einsum("...qk,...qd->...kd", dscores, q, preferred_element_type=f32).astype(k.dtype)
    return dq, dk, dvalues, dbias


_rows.defvjp(_rows_fwd, _rows_bwd)


def _unbroadcast(x, shape):
    """Sum x over the axes that broadcasting `shape` to x.shape added or stretched."""
    x = x.sum(axis=tuple(range(x.ndim - len(shape))))
    return x.sum(axis=tuple(i for i, n in enumerate(shape) if n == 1 and x.shape[i] != 1), keepdims=True)


def _tiling(groups: int, lq: int, lk: int, tile: int):
    """(heads/windows per tile, query blocks per head) for `groups` independent attentions of lq x lk."""
    if lq * lk <= tile:
        per = max(d for d in range(1, groups + 1) if groups % d == 0 and d * lq * lk <= tile)
        return per, 1
    return 1, math.ceil(lq * lk / tile)


def attend(q, k, v, *, scale: float | None = None, bias=None, topk: int | None = None, tile: int | None = None):
    """softmax(scale * q k^T + bias) v over the key axis, in float32 logits; the result has v's dtype.

    q (B, ..., Lq, D), k (B, ..., Lk, D), v (B, ..., Lk, Dv) with the same leading dims; `scale` None means q
    is already scaled; `bias` broadcastable to (B, ..., Lq, Lk) is added to the logits; `topk` keeps only
    each query's topk best keys (ties with the topk-th kept; the rest get -inf). `tile`: logits per tile,
    default `layers.tiling.CPU_TILE` on the CPU and untiled elsewhere; 0 = untiled. The leading (batch)
    axis is never split, so a batch-sharded input stays sharded.

    Fused kernels (module docstring) need q, k, v of one dtype, Dv == D, a Python-number (or None) scale,
    no `topk` (or topk >= Lk) and no explicit `tile`, and besides:
    flash (TPU): float32 / bfloat16, Lq and Lk >= FLASH_MIN_LENGTH (lengths are padded to the kernel's
    blocks), D < 128 or a multiple of 128 up to FLASH_MAX_HEAD_DIM, and either no bias or a key mask: a
    NumPy bias the same for every query with only 0 and <= MASKED_LOGIT entries (masked keys then get
    weight exactly 0 rather than e^-100). Any other bias would be a (B, H, Lq, Lk) kernel operand in
    memory, the very tensor the kernel avoids, so it takes the XLA path.
    cudnn (GPU): bfloat16 / float16, D a multiple of 8 up to CUDNN_MAX_HEAD_DIM; a bias (in the inputs'
    dtype) needs even Lq and Lk.
    XLA cannot partition the Pallas kernel, so under a multi-device jit it runs in a shard_map over the mesh
    that the inputs' shardings name: pass jax Arrays / ShapeDtypeStructs that carry their NamedSharding (as
    the trainer and tools/aot_compile.py do), not NumPy arrays with `in_shardings`, or use
    `implementation("xla")`.
    """
    lead, (lq, d), (lk, dv) = q.shape[:-2], q.shape[-2:], v.shape[-2:]
    if k.shape[:-2] != lead or v.shape[:-2] != lead or k.shape[-2] != lk or k.shape[-1] != d:
        raise ValueError(f"attend: q {q.shape}, k {k.shape}, v {v.shape} do not line up as (..., L, D)")
    kernel, keep = _fused_kernel(q, k, v, scale, bias, topk, tile)
    if kernel == "cudnn":
        return _cudnn(q, k, v, scale, bias)
    if kernel == "flash":
        out = _flash(q, k, v, scale, keep)
        if out is not None:
            return out
    tile = default_tile(tile)
    if bias is not None:
        bias = jnp.asarray(bias, jnp.float32)
        bias = jnp.broadcast_to(bias, lead + bias.shape[-2:] if bias.ndim >= 2 else lead + (1, lk))
    groups = math.prod(lead[1:])
    per, blocks = _tiling(groups, lq, lk, tile) if tile else (groups, 1)
    if len(lead) == 0 or (per == groups and blocks == 1):
        return _softmax_rows(q, k, v, scale, bias, topk)

    b = lead[0]
    n = groups // per
    cq = math.ceil(lq / blocks)

    def to_tiles(a):  # (B, ..., L, X) -> (n, B * per, L, X); one batch axis: XLA's CPU dot is slower with two
        return jnp.moveaxis(a.reshape(b, n, per, *a.shape[-2:]), 1, 0).reshape(n, b * per, *a.shape[-2:])

    def one_group(args):
        qg, kg, vg, bg = args
        if blocks == 1:
            return _softmax_rows(qg, kg, vg, scale, bg, topk)
        pad = blocks * cq - lq
        split = lambda a: jnp.moveaxis(jnp.pad(a, ((0, 0), (0, pad), (0, 0))).reshape(
            b * per, blocks, cq, a.shape[-1]), 1, 0)  # (blocks, B * per, cq, X)
        qb = split(qg)
        if bg is not None and bg.shape[-2] == lq:
            out = jax.lax.map(lambda a: _softmax_rows(a[0], kg, vg, scale, a[1], topk), (qb, split(bg)))
        else:
            out = jax.lax.map(lambda qc: _softmax_rows(qc, kg, vg, scale, bg, topk), qb)
        return jnp.moveaxis(out, 0, 1).reshape(b * per, blocks * cq, dv)[:, :lq]

    tiles = (to_tiles(q), to_tiles(k), to_tiles(v), None if bias is None else to_tiles(bias))
    out = jax.lax.map(one_group, tiles) if n > 1 else one_group(tuple(None if a is None else a[0] for a in tiles))[None]
    return jnp.moveaxis(out.reshape(n, b, per, lq, dv), 0, 1).reshape(*lead, lq, dv)


def dot_product_attention(q, k, v, scale: float | None = None):
    """softmax(q k^T * scale) v over the key axis; scale defaults to D ** -0.5. q (..., Lq, D),
    k (..., Lk, D), v (..., Lk, Dv). Scores and softmax run in float32; the result has v's dtype. A fused
    kernel on TPU / GPU where the shapes allow (`attend`)."""
    return attend(q, k, v, scale=q.shape[-1] ** -0.5 if scale is None else scale)


def split_heads(x, heads: int):
    """(..., L, heads * d) -> (..., heads, L, d), head-major channel split as view(b, n, heads, d)."""
    *lead, n, c = x.shape
    return jnp.moveaxis(x.reshape(*lead, n, heads, c // heads), -2, -3)


def merge_heads(x):
    *lead, h, n, d = x.shape
    return jnp.moveaxis(x, -3, -2).reshape(*lead, n, h * d)


class MultiHeadAttention(nn.Module):
    """Linear q/k/v projections, `heads` heads over all tokens, linear output projection."""

    dim: int
    heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        dense = lambda name: nn.Dense(self.dim, dtype=self.dtype, kernel_init=normal_init, name=name)
        q, k, v = (split_heads(dense(n)(x), self.heads) for n in ("query", "key", "value"))
        out = dot_product_attention(q, k, v)
        return dense("out")(merge_heads(out))


def topk_attention(q, k, v, topk: int | None, scale: float | None = None):
    """kNN attention: per query, softmax over only its `topk` highest-scoring keys (the rest get weight 0).

    q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv). A key is kept when its score is >= the query's
    topk-th largest score, so keys tied with that score are all kept; `topk` None or >= Lk is exactly
    `dot_product_attention`. Dropped keys get -inf before the softmax: their weights and their gradients
    are exactly zero. Scores and softmax run in float32; the result has v's dtype. Never fused (the kernels
    have no top-k) unless topk is None or >= Lk.
    """
    if topk is not None and (isinstance(topk, bool) or int(topk) < 1):
        raise ValueError(f"topk_attention: topk must be a positive int or None; got {topk!r}")
    return attend(q, k, v, scale=q.shape[-1] ** -0.5 if scale is None else scale,
                  topk=None if topk is None else int(topk))
