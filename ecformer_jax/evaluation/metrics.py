"""Video-inpainting quality metrics as the anchors (FuseFormer / E2FGVI `evaluate.py`) compute them.

* `psnr`: 20 log10(data_range / sqrt(MSE)) of one frame in float64 (inf when identical); the anchors
  average it over ALL frames of ALL videos (`frame_psnrs` gives the per-frame values).
* `ssim`: scikit-image's `structural_similarity(..., win_size=65, data_range=255, channel_axis=-1)` -
  the old `compare_ssim(win_size=65, multichannel=True)` of the anchors: a UNIFORM 65x65 window
  (scipy `uniform_filter`, reflect borders), sample covariances (N / (N - 1), N = 65 * 65), K1 = 0.01,
  K2 = 0.03, the SSIM map cropped by 32 pixels on each side, averaged per channel, then over the channels.
  Not the 7x7 / Gaussian SSIM of other libraries. Frames must be at least 65x65.
* `frechet_distance`: ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), with the trace of the
  square root computed as tr((S1^(1/2) S2 S1^(1/2))^(1/2)) from symmetric eigendecompositions
  (eigenvalues clipped at 0). It is always a real number, also for the rank-deficient covariances of
  VFID (50 videos, 1024 dims), where the anchors' `scipy.linalg.sqrtm` can return complex values.
* `warping_errors`: the flow warping error E_warp of Lai et al. 2018 (phoenix104104/
  fast_blind_video_consistency, `evaluate_WarpError.py` + `compute_flow_occlusion.py`): for each pair
  (t - 1, t), frame t of the evaluated video is warped to t - 1 with the forward flow F (t - 1 -> t;
  `resample2d` = FlowNet2's Resample2d, bilinear with clamped indices), and
  err_t = sum(noc * (warp - frame_{t-1})^2) / sum(noc) over the three channels of images in [0, 1],
  where noc = 1 - occlusion and the occlusion is Lai's forward-backward check in frame t - 1:
  |B(p + F(p)) + F(p)|^2 > 0.01 (|B(p + F(p))|^2 + |F(p)|^2) + 0.5, or the motion boundary
  |grad F|^2 > 0.01 |F|^2 + 0.002 (one-sided differences, 0 in the last row / column). A video's E_warp
  is the mean over its T - 1 pairs; a data set's is the mean over videos.
  Papers print E_warp* = E_warp x 100 (units of 1e-2).
* `SPyNetFlow`: the flow estimator for E_warp. The papers used FlowNet2 inside Lai's code; we use this
  project's SPyNet (`models.build("spynet")`, mmediting / BasicVSR weights `spynet_20210409-c6c1bd09.pth`),
  so E_warp values are comparable between methods evaluated here but NOT with the published tables.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

SSIM_WINDOW = 65


@functools.lru_cache(maxsize=8)
def jitted_apply(model):
    """jax.jit(model.apply), shared by every evaluator built on an equal (hashable) flax module, so
    several extractors / repeated evaluations compile each input shape once. Pure: no state besides
    XLA's compilation cache."""
    import jax

    return jax.jit(model.apply)
DATA_RANGE = 255.0
SSIM_K1, SSIM_K2 = 0.01, 0.03


# --- input checks ----------------------------------------------------------------------------------
def _pair(a, b, what: str):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"{what}: the two images must have the same shape; got {a.shape} and {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"{what}: expected an (H, W) or (H, W, C) image; got shape {a.shape}")
    for x in (a, b):
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise ValueError(f"{what}: images must be numeric arrays; got dtype {x.dtype}")
    return a.astype(np.float64), b.astype(np.float64)


def _videos(a, b, what: str):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"{what}: the two videos must have the same shape (T, H, W, C); got {a.shape} and {b.shape}")
    if a.ndim != 4:
        raise ValueError(f"{what}: expected videos of shape (T, H, W, C); got {a.shape}")
    return a, b


# --- PSNR ------------------------------------------------------------------------------------------
def psnr(a, b, data_range: float = DATA_RANGE) -> float:
    """PSNR of one frame in float64: 20 log10(data_range / sqrt(MSE)); inf when the images are equal."""
    a, b = _pair(a, b, "psnr")
    if not data_range > 0:
        raise ValueError(f"psnr: data_range must be positive; got {data_range}")
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return float("inf")
    return float(20.0 * np.log10(data_range / np.sqrt(mse)))


def frame_psnrs(video_a, video_b, data_range: float = DATA_RANGE) -> np.ndarray:
    """Per-frame PSNR (T,) of two (T, H, W, C) videos."""
    video_a, video_b = _videos(video_a, video_b, "frame_psnrs")
    return np.array([psnr(x, y, data_range) for x, y in zip(video_a, video_b)], np.float64)


# --- SSIM ------------------------------------------------------------------------------------------
def ssim(a, b, win_size: int = SSIM_WINDOW, data_range: float = DATA_RANGE) -> float:
    """Mean SSIM of one (H, W) or (H, W, C) image pair with a uniform win_size x win_size window,
    as skimage.metrics.structural_similarity(a, b, win_size=win_size, data_range=data_range,
    channel_axis=-1) (per channel, then averaged), in float64."""
    from scipy.ndimage import uniform_filter

    a, b = _pair(a, b, "ssim")
    if win_size < 1 or win_size % 2 != 1:
        raise ValueError(f"ssim: win_size must be a positive odd number; got {win_size}")
    if not data_range > 0:
        raise ValueError(f"ssim: data_range must be positive; got {data_range}")
    h, w = a.shape[:2]
    if h < win_size or w < win_size:
        raise ValueError(f"ssim: images of {h}x{w} are smaller than the {win_size}x{win_size} SSIM window "
                         f"(the anchors' setting needs frames of at least {win_size}x{win_size})")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    size = (win_size, win_size, 1)  # no filtering across channels

    def box(x):
        return uniform_filter(x, size=size)

    n = win_size * win_size
    cov_norm = n / (n - 1)
    ux, uy = box(a), box(b)
    vx = cov_norm * (box(a * a) - ux * ux)
    vy = cov_norm * (box(b * b) - uy * uy)
    vxy = cov_norm * (box(a * b) - ux * uy)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win_size - 1) // 2
    s = s[pad: h - pad, pad: w - pad]
    per_channel = [np.ascontiguousarray(s[..., c]).mean(dtype=np.float64) for c in range(s.shape[-1])]
    return float(np.mean(per_channel))


def frame_ssims(video_a, video_b, win_size: int = SSIM_WINDOW, data_range: float = DATA_RANGE) -> np.ndarray:
    """Per-frame SSIM (T,) of two (T, H, W, C) videos (anchors' 65x65 uniform window by default)."""
    video_a, video_b = _videos(video_a, video_b, "frame_ssims")
    return np.array([ssim(x, y, win_size, data_range) for x, y in zip(video_a, video_b)], np.float64)


def masked_psnr(video_a, video_b, masks, data_range: float = DATA_RANGE) -> float:
    """PSNR over the hole pixels only (masks (T, H, W) bool, True = hole), MSE pooled over the video.
    nan when there are no hole pixels; inf when they are all equal."""
    video_a, video_b = _videos(video_a, video_b, "masked_psnr")
    masks = np.asarray(masks, bool)
    if masks.shape != video_a.shape[:3]:
        raise ValueError(f"masked_psnr: masks {masks.shape} do not match the videos {video_a.shape} in (T, H, W)")
    if not masks.any():
        return float("nan")
    d = video_a.astype(np.float64)[masks] - video_b.astype(np.float64)[masks]
    mse = np.mean(d**2)
    return float("inf") if mse == 0 else float(20.0 * np.log10(data_range / np.sqrt(mse)))


# --- Frechet distance / VFID -----------------------------------------------------------------------
def _clip_eigenvalues(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with the rounding noise (|w| <= n * eps * max|w|) set to 0: the square
    roots of noise-level eigenvalues would otherwise add up over the null space of rank-deficient
    covariances."""
    tol = w.size * np.finfo(np.float64).eps * max(float(np.abs(w).max(initial=0.0)), 0.0)
    return np.where(w > tol, w, 0.0)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(_clip_eigenvalues(w))) @ v.T


def _trace_sqrt_psd(m: np.ndarray) -> float:
    return float(np.sum(np.sqrt(_clip_eigenvalues(np.linalg.eigvalsh((m + m.T) / 2)))))


def trace_sqrt_product(sigma1, sigma2) -> float:
    """tr((sigma1 sigma2)^(1/2)) for symmetric PSD matrices, as tr((A sigma2 A)^(1/2)) with
    A = sigma1^(1/2); A sigma2 A is symmetric PSD, so every step is real."""
    a = _psd_sqrt(np.asarray(sigma1, np.float64))
    return _trace_sqrt_psd(a @ np.asarray(sigma2, np.float64) @ a)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2); real and >= 0 by construction."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"frechet_distance: means must be vectors of the same length; got {mu1.shape} and {mu2.shape}")
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (d, d):
            raise ValueError(f"frechet_distance: {name} must be a ({d}, {d}) covariance; got {s.shape}")
        if not np.all(np.isfinite(s)):
            raise ValueError(f"frechet_distance: {name} has non-finite entries")
        if not np.allclose(s, s.T, rtol=1e-6, atol=1e-9 * max(1.0, float(np.abs(s).max()))):
            raise ValueError(f"frechet_distance: {name} is not symmetric")
    if not (np.all(np.isfinite(mu1)) and np.all(np.isfinite(mu2))):
        raise ValueError("frechet_distance: the means have non-finite entries")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(value, 0.0))  # rounding can leave -1e-12 for identical distributions


def vfid(real_features, fake_features) -> float:
    """VFID: Frechet distance between the (N, D) I3D features of N real and N' completed videos
    (means and np.cov sample covariances, as the anchors' calculate_vfid). Needs at least 2 videos each.
    With N <= D the trace term is computed in the N-dimensional sample space (same value, much faster)."""
    real, fake = np.asarray(real_features, np.float64), np.asarray(fake_features, np.float64)
    for name, f in (("real", real), ("fake", fake)):
        if f.ndim != 2:
            raise ValueError(f"vfid: {name} features must be (num_videos, dims); got shape {f.shape}")
        if f.shape[0] < 2:
            raise ValueError(f"vfid: needs at least 2 videos for a covariance; got {f.shape[0]} {name} video(s)")
        if not np.all(np.isfinite(f)):
            raise ValueError(f"vfid: {name} features have non-finite values")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"vfid: feature sizes differ: real {real.shape[1]}, fake {fake.shape[1]}")
    mu1, mu2 = real.mean(0), fake.mean(0)
    sigma1, sigma2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    n, d = real.shape
    if n > d:
        return frechet_distance(mu1, sigma1, mu2, sigma2)
    # fewer videos than dimensions (VFID's usual case): sigma1 = X^T X with X = centred real / sqrt(n - 1),
    # and the non-zero eigenvalues of sigma1 sigma2 are those of the small symmetric X sigma2 X^T (n x n)
    x = (real - mu1) / np.sqrt(n - 1)
    tr_sqrt = _trace_sqrt_psd(x @ sigma2 @ x.T)
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_sqrt, 0.0))


# --- E_warp ----------------------------------------------------------------------------------------
def _check_flows(frames_shape, fw, bw):
    t, h, w = frames_shape[:3]
    want = (t - 1, h, w, 2)
    for name, f in (("forward", fw), ("backward", bw)):
        if tuple(np.shape(f)) != want:
            raise ValueError(f"warping_errors: {name} flows must have shape (T - 1, H, W, 2) = {want} for "
                             f"frames {tuple(frames_shape)}; got {tuple(np.shape(f))}")


def resample2d(images, flows):
    """FlowNet2's Resample2d (the warping layer of Lai et al.'s code) for (N, H, W, C) images and
    (N, H, W, 2) flows in pixels: bilinear sampling at p + flow(p) with the weights of the unclamped
    position and the four source indices clamped to the image (= border padding). float32, numpy."""
    images = np.asarray(images, np.float32)
    flows = np.asarray(flows, np.float32)
    n, h, w, c = images.shape
    xf = np.arange(w, dtype=np.float32)[None, None, :] + flows[..., 0]
    yf = np.arange(h, dtype=np.float32)[None, :, None] + flows[..., 1]
    x0, y0 = np.floor(xf), np.floor(yf)
    a, b = (xf - x0)[..., None], (yf - y0)[..., None]
    xl, xr = np.clip(x0, 0, w - 1).astype(np.int64), np.clip(x0 + 1, 0, w - 1).astype(np.int64)
    yt, yb = np.clip(y0, 0, h - 1).astype(np.int64), np.clip(y0 + 1, 0, h - 1).astype(np.int64)
    idx = np.arange(n)[:, None, None]

    def at(yy, xx):
        return images[idx, yy, xx]

    return ((1 - a) * (1 - b) * at(yt, xl) + a * (1 - b) * at(yt, xr) + (1 - a) * b * at(yb, xl)
            + a * b * at(yb, xr))


def occlusion_masks(fw, bw) -> np.ndarray:
    """Lai et al.'s occlusion test in frame t - 1 for forward flows fw (t-1 -> t) and backward flows
    bw (t -> t-1), both (N, H, W, 2) in pixels -> bool (N, H, W), True = occluded / motion boundary."""
    fw = np.asarray(fw, np.float32)
    bw = np.asarray(bw, np.float32)
    bw_w = resample2d(bw, fw)  # B(p + F(p))
    mag = lambda f: np.sum(f * f, axis=-1)  # noqa: E731
    inconsistent = mag(bw_w + fw) > 0.01 * (mag(bw_w) + mag(fw)) + 0.5
    du, dv = np.zeros_like(fw), np.zeros_like(fw)
    du[:, :, :-1] = fw[:, :, :-1] - fw[:, :, 1:]
    dv[:, :-1] = fw[:, :-1] - fw[:, 1:]
    boundary = mag(du) + mag(dv) > 0.01 * mag(fw) + 0.002
    return inconsistent | boundary


def warping_errors(frames, fw, bw) -> np.ndarray:
    """E_warp terms (T - 1,) float64 of a video.

    frames: (T, H, W, 3) uint8 (or floats in [0, 1]) - the video being judged (the completed result);
    fw[t - 1]: flow from frame t - 1 to frame t (frame t sampled at p + fw(p) matches frame t - 1 at p);
    bw[t - 1]: flow from frame t to frame t - 1. The flows can come from any video of the same motion
    (the evaluator estimates them on the ground truth by default).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"warping_errors: frames must be (T, H, W, 3); got {frames.shape}")
    if frames.shape[0] < 2:
        raise ValueError(f"warping_errors: needs at least 2 frames; got {frames.shape[0]}")
    _check_flows(frames.shape, fw, bw)
    x = frames.astype(np.float32) / np.float32(255) if frames.dtype == np.uint8 else frames.astype(np.float32)
    out = np.empty(frames.shape[0] - 1, np.float64)
    for i in range(len(out)):  # one pair at a time: bounded memory for long videos
        warped = resample2d(x[i + 1: i + 2], np.asarray(fw[i: i + 1]))[0]
        noc = ~occlusion_masks(np.asarray(fw[i: i + 1]), np.asarray(bw[i: i + 1]))[0]
        diff2 = (warped.astype(np.float64) - x[i].astype(np.float64)) ** 2 * noc[..., None]
        n = 3.0 * noc.sum()
        out[i] = diff2.sum() / (n if n else float(diff2.size))  # all occluded: divide by H * W * C
    return out


class SPyNetFlow:
    """Forward / backward flows of consecutive frames with this project's SPyNet (mmediting weights).

        flow = SPyNetFlow.from_checkpoint("spynet_20210409-c6c1bd09.pth")   # or a converted folder
        fw, bw = flow(frames_uint8)          # (T - 1, H, W, 2) each

    SPyNet sees the frames in [0, 1] at their own size (it resizes to multiples of 32 inside and scales
    the flow back). Pairs run `batch_size` at a time through one jitted function.
    """

    description = ("SPyNet (Ranjan & Black 2017; ecformer_jax.layers.flow.SPyNet with the mmediting/BasicVSR "
                   "weights) - NOT the FlowNet2 of Lai et al.'s code that the papers used, so E_warp values "
                   "are not comparable with published tables")

    def __init__(self, variables, dtype: Any = None, batch_size: int = 8):
        import jax
        import jax.numpy as jnp

        from ecformer_jax import models

        if batch_size < 1:
            raise ValueError(f"SPyNetFlow: batch_size must be >= 1; got {batch_size}")
        self.model = models.build("spynet", **({"dtype": jnp.dtype(dtype)} if dtype else {}))
        self.variables = jax.tree.map(jnp.asarray, variables)
        self.batch_size = batch_size
        self._apply = jitted_apply(self.model)

    @classmethod
    def from_checkpoint(cls, path, **kwargs) -> SPyNetFlow:
        """An mmediting SPyNet .pth (or any state_dict holding one under a common prefix) or a folder
        written by `python -m ecformer_jax.convert --model spynet`."""
        from ecformer_jax import convert

        return cls(convert.resolve(path, model="spynet").variables, **kwargs)

    def __call__(self, frames):
        import jax.numpy as jnp

        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"SPyNetFlow: frames must be (T, H, W, 3); got {frames.shape}")
        if frames.shape[0] < 2:
            raise ValueError(f"SPyNetFlow: needs at least 2 frames; got {frames.shape[0]}")
        x = frames.astype(np.float32) / 255.0 if frames.dtype == np.uint8 else frames.astype(np.float32)
        refs = np.concatenate([x[:-1], x[1:]])  # forward pairs, then backward pairs
        supps = np.concatenate([x[1:], x[:-1]])
        out = []
        n, b = len(refs), self.batch_size
        for i in range(0, n, b):
            r, s = refs[i: i + b], supps[i: i + b]
            k = len(r)
            if k < b:  # pad the last batch: one compiled shape
                r = np.concatenate([r, np.repeat(r[-1:], b - k, 0)])
                s = np.concatenate([s, np.repeat(s[-1:], b - k, 0)])
            out.append(np.asarray(self._apply(self.variables, jnp.asarray(r), jnp.asarray(s)))[:k])
        flows = np.concatenate(out)
        return flows[: n // 2], flows[n // 2:]
