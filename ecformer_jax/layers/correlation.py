"""RAFT's all-pairs correlation on channels-last 1/8 feature maps: the dense 4-level pyramid of f1 . f2 / sqrt(C)
(`corr_pyramid` + `lookup_dense`) and the chunked form that never builds it (`feature_pyramid` +
`lookup_chunked`), both sampling a (2r+1)^2 bilinear window per level around each pixel's current match, with
the official grid_sample roundings. Used by models/raft.py, which picks between them (see its docstring)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ecformer_jax.layers.resize import avg_pool2d

CORR_LEVELS = 4
CORR_RADIUS = 4


def coords_grid(b: int, h: int, w: int):
    """(B, h, w, 2) float32 pixel grid, [..., 0] = x (column), [..., 1] = y (row)."""
    y, x = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    return jnp.broadcast_to(jnp.stack([x, y], axis=-1), (b, h, w, 2))


def _tap_positions(center, size: int, radius: int):
    """center (...,) float32 coordinate on one axis of a level of extent `size` -> (..., 2r+1) sample positions
    as the official grid_sample sees them: center + offset, normalised 2p/(S-1) - 1, unnormalised (g+1)*((S-1)/2)."""
    p = center[..., None] + jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    if size > 1:
        # the barriers keep torch's roundings: XLA turns a division by a broadcast scalar into a product with
        # its reciprocal and folds (g - 1) + 1 into g (last-bit differences in ~25% of the positions otherwise)
        barrier = jax.lax.optimization_barrier
        g = barrier(2 * p / barrier(jnp.full(p.shape, size - 1, jnp.float32)) - 1)
        p = (g + 1) * np.float32((size - 1) / 2)
    return p


def _corners(centers, h: int, w: int, radius: int):
    """The four bilinear corners of the (2r+1)^2 taps around `centers` (..., 2) (x, y) on an h x w level.

    Returns [(iy, ix, valid, weight)] in grid_sample's order (nw, ne, sw, se), each (..., 2r+1, 2r+1) indexed
    [i, j] = [x offset, y offset] (the official window's first axis moves x)."""
    px = _tap_positions(centers[..., 0], w, radius)  # (..., K) along i
    py = _tap_positions(centers[..., 1], h, radius)  # (..., K) along j
    x0, y0 = jnp.floor(px), jnp.floor(py)
    fx, fy = px - x0, py - y0
    ex, sy = 1 - fx, 1 - fy
    ix0, iy0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    out = []
    for dy, dx, wy, wx in ((0, 0, sy, ex), (0, 1, sy, fx), (1, 0, fy, ex), (1, 1, fy, fx)):
        ix = (ix0 + dx)[..., :, None]
        iy = (iy0 + dy)[..., None, :]
        valid = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        out.append((iy, ix, valid, wy[..., None, :] * wx[..., :, None]))
    return out


def _bilinear(values_at, corners, radius: int):
    """sum over corners of value * weight (zero outside), flattened to (..., (2r+1)^2) with channel i*(2r+1)+j."""
    out = None
    for iy, ix, valid, weight in corners:
        term = values_at(iy, ix) * jnp.where(valid, weight, 0)
        out = term if out is None else out + term
    k = 2 * radius + 1
    return out.reshape(*out.shape[:-2], k * k)


def corr_pyramid(fmap1, fmap2, levels: int = CORR_LEVELS):
    """The dense all-pairs pyramid: [(B, N, h_l, w_l)] with N = h*w query pixels of fmap1 (row-major), level 0 =
    f1 . f2 / sqrt(C), level l = 2x2 average pooling (floor sizes) of level l-1 over fmap2's axes."""
    b, h, w, c = fmap1.shape
    f1 = fmap1.astype(jnp.float32).reshape(b, h * w, c)
    corr = jnp.einsum("bnc,bhwc->bnhw", f1, fmap2.astype(jnp.float32)) / np.float32(np.sqrt(c))
    pyramid = [corr]
    for _ in range(levels - 1):
        pyramid.append(avg_pool2d(pyramid[-1][..., None], 2, 2)[..., 0])
    return pyramid


def lookup_dense(pyramid, coords, radius: int = CORR_RADIUS):
    """Correlation features (B, h, w, levels * (2r+1)^2) at coords (B, h, w, 2) (x, y on the level-0 grid)."""
    b, h, w, _ = coords.shape
    centers = coords.astype(jnp.float32).reshape(b, h * w, 2)
    out = []
    for level, corr in enumerate(pyramid):
        hl, wl = corr.shape[-2:]
        flat = corr.reshape(b, h * w, hl * wl)

        def values_at(iy, ix, flat=flat, hl=hl, wl=wl):
            idx = jnp.clip(iy, 0, hl - 1) * wl + jnp.clip(ix, 0, wl - 1)  # (B, N, K, K)
            vals = jnp.take_along_axis(flat, idx.reshape(b, h * w, -1), axis=-1)
            return vals.reshape(idx.shape)

        out.append(_bilinear(values_at, _corners(centers / np.float32(2 ** level), hl, wl, radius), radius))
    return jnp.concatenate(out, axis=-1).reshape(b, h, w, -1)


def feature_pyramid(fmap2, levels: int = CORR_LEVELS):
    """[(B, h_l, w_l, C)]: fmap2 average-pooled like the correlation volume's image2 axes (float32)."""
    pyramid = [fmap2.astype(jnp.float32)]
    for _ in range(levels - 1):
        pyramid.append(avg_pool2d(pyramid[-1], 2, 2))
    return pyramid


def lookup_chunked(fmap1, feats, coords, radius: int = CORR_RADIUS, chunk: int = 1024):
    """`lookup_dense(corr_pyramid(fmap1, fmap2), coords)` without the volume: per query pixel, the dot products
    with a (2r+4)^2 window of the pooled fmap2 features (`feature_pyramid`), `chunk` pixels (over B * h * w)
    at a time. Memory O(chunk * (2r+4)^2 * C)."""
    b, h, w, c = fmap1.shape
    n = b * h * w
    k = 2 * radius + 4  # covers the taps' corners even when the position round trip moves a floor by one
    scale = np.float32(np.sqrt(c))
    f1 = fmap1.astype(jnp.float32).reshape(n, c)
    centers = coords.astype(jnp.float32).reshape(n, 2)
    batch = jnp.repeat(jnp.arange(b, dtype=jnp.int32), h * w)
    chunk = max(1, min(int(chunk), n))
    pad = -n % chunk
    if pad:
        f1 = jnp.pad(f1, ((0, pad), (0, 0)))
        centers = jnp.pad(centers, ((0, pad), (0, 0)))
        batch = jnp.pad(batch, (0, pad))
    flats = [f.reshape(b * f.shape[1] * f.shape[2], c) for f in feats]
    sizes = [f.shape[1:3] for f in feats]
    offs = jnp.arange(k, dtype=jnp.int32) - (radius + 1)

    def one_chunk(args):
        f1c, cc, bc = args  # (P, C), (P, 2), (P,)
        out = []
        for level, (flat, (hl, wl)) in enumerate(zip(flats, sizes)):
            cl = cc / np.float32(2 ** level)
            ox = jnp.floor(cl[:, 0]).astype(jnp.int32)[:, None] + offs  # (P, k) window columns
            oy = jnp.floor(cl[:, 1]).astype(jnp.int32)[:, None] + offs  # (P, k) window rows
            inside = ((oy >= 0) & (oy < hl))[:, :, None] & ((ox >= 0) & (ox < wl))[:, None, :]  # (P, k, k)
            idx = (bc[:, None, None] * (hl * wl) + jnp.clip(oy, 0, hl - 1)[:, :, None] * wl
                   + jnp.clip(ox, 0, wl - 1)[:, None, :])
            window = jnp.take(flat, idx.reshape(-1), axis=0).reshape(-1, k * k, c)
            corr = jnp.einsum("pc,pkc->pk", f1c, window) / scale
            corr = jnp.where(inside.reshape(-1, k * k), corr, 0)

            def values_at(iy, ix, corr=corr, oy=oy, ox=ox):
                ly = jnp.clip(iy - oy[:, :1, None], 0, k - 1)
                lx = jnp.clip(ix - ox[:, :1, None], 0, k - 1)
                idx = (ly * k + lx).reshape(ly.shape[0], -1)
                return jnp.take_along_axis(corr, idx, axis=-1).reshape(jnp.broadcast_shapes(ly.shape, lx.shape))

            out.append(_bilinear(values_at, _corners(cl, hl, wl, radius), radius))
        return jnp.concatenate(out, axis=-1)

    parts = (f1.reshape(-1, chunk, c), centers.reshape(-1, chunk, 2), batch.reshape(-1, chunk))
    res = jax.lax.map(one_chunk, parts) if parts[0].shape[0] > 1 else one_chunk(tuple(p[0] for p in parts))[None]
    return res.reshape(-1, res.shape[-1])[:n].reshape(b, h, w, -1)
