"""The metrics against reference computations: the anchors' PSNR formula, scikit-image SSIM (65 window),
scipy's sqrtm Frechet distance, and a numpy transcription of Lai et al.'s warping error (FlowNet2
Resample2d + forward-backward occlusion check)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy import linalg
from skimage.metrics import structural_similarity

from ecformer_jax import convert, models
from ecformer_jax.data import video_io
from ecformer_jax.evaluation import metrics


@pytest.fixture(scope="module")
def tennis(tennis_dir):
    """6 real frames and masks; 'result' = frames with noise inside the holes."""
    frames = video_io.read_frames(tennis_dir / "frames", indices=range(6))
    masks = video_io.read_masks(tennis_dir / "masks", size=None)[:6]
    noise = np.random.default_rng(0).integers(-40, 41, frames.shape)
    result = np.where(masks[..., None], np.clip(frames.astype(int) + noise, 0, 255), frames).astype(np.uint8)
    return frames, result, masks


def anchor_psnr(img1, img2):  # E2FGVI core/metrics.calculate_psnr on float64 images
    mse = np.mean((img1.astype(np.float64) - img2.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 20.0 * np.log10(255.0 / np.sqrt(mse))


# --- PSNR / SSIM -----------------------------------------------------------------------------------
def test_psnr_matches_the_anchor_formula(tennis):
    frames, result, masks = tennis
    assert masks.any(axis=(1, 2)).all()
    got = metrics.frame_psnrs(frames, result)
    assert got.dtype == np.float64 and got.shape == (6,)
    np.testing.assert_allclose(got, [anchor_psnr(a, b) for a, b in zip(frames, result)], rtol=0, atol=1e-12)
    assert 20 < got.min() < got.max() < 60
    assert metrics.psnr(frames[0], frames[0]) == float("inf")
    # a known value: every pixel off by 5 levels -> 20 log10(255 / 5)
    assert metrics.psnr(np.full((4, 4, 3), 100, np.uint8), np.full((4, 4, 3), 105, np.uint8)) == pytest.approx(
        20 * np.log10(51), abs=1e-12)
    # uint8 inputs do not wrap around (computed in float64)
    assert metrics.psnr(np.zeros((2, 2), np.uint8), np.full((2, 2), 255, np.uint8)) == pytest.approx(0.0, abs=1e-12)


def test_ssim_is_skimage_with_the_65_window(tennis):
    frames, result, _ = tennis
    got = metrics.frame_ssims(frames, result)
    ref = [structural_similarity(a.astype(np.float64), b.astype(np.float64), win_size=65, data_range=255,
                                 channel_axis=-1) for a, b in zip(frames, result)]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    assert 0.5 < got.min() < got.max() < 1
    # not the default 7x7 SSIM
    default = structural_similarity(frames[0], result[0], data_range=255, channel_axis=-1)
    assert abs(got[0] - default) > 1e-3
    # grey images, other windows, float inputs in other ranges
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0, 1, (70, 80)), rng.uniform(0, 1, (70, 80))
    for win in (7, 65):
        assert metrics.ssim(a, b, win, data_range=1.0) == pytest.approx(
            structural_similarity(a, b, win_size=win, data_range=1.0), abs=1e-12)
    assert metrics.ssim(frames[0], frames[0]) == pytest.approx(1.0, abs=1e-12)


def test_psnr_ssim_bad_inputs():
    a = np.zeros((64, 80, 3), np.uint8)
    with pytest.raises(ValueError, match=r"same shape.*\(64, 80, 3\).*\(64, 80, 1\)"):
        metrics.psnr(a, a[..., :1])
    with pytest.raises(ValueError, match=r"smaller than the 65x65 SSIM window"):
        metrics.ssim(a, a)
    with pytest.raises(ValueError, match="positive odd"):
        metrics.ssim(a, a, win_size=8)
    with pytest.raises(ValueError, match=r"\(T, H, W, C\)"):
        metrics.frame_psnrs(a, a)
    with pytest.raises(ValueError, match="same shape"):
        metrics.frame_ssims(a[None], a[None, :, :70])
    with pytest.raises(ValueError, match="data_range must be positive"):
        metrics.psnr(a, a, data_range=0)
    with pytest.raises(ValueError, match="numeric"):
        metrics.psnr(np.array([["a"]]), np.array([["b"]]))


def test_masked_psnr(tennis):
    frames, result, masks = tennis
    d = frames.astype(np.float64)[masks] - result.astype(np.float64)[masks]
    assert metrics.masked_psnr(frames, result, masks) == pytest.approx(20 * np.log10(255 / np.sqrt(np.mean(d**2))))
    # the noise is only in the holes: hole PSNR < whole-frame PSNR
    assert metrics.masked_psnr(frames, result, masks) < metrics.frame_psnrs(frames, result).min()
    assert np.isnan(metrics.masked_psnr(frames, result, np.zeros_like(masks)))
    with pytest.raises(ValueError, match="masks .* do not match"):
        metrics.masked_psnr(frames, result, masks[:, :10])


# --- Frechet distance / VFID -----------------------------------------------------------------------
def anchor_frechet(mu1, s1, mu2, s2):  # the anchors' scipy sqrtm version (without its fallbacks)
    covmean = linalg.sqrtm(s1 @ s2).real
    d = mu1 - mu2
    return d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def test_frechet_matches_sqrtm_on_full_rank_covariances():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 24))
    y = rng.standard_normal((300, 24)) @ rng.standard_normal((24, 24)) * 0.5 + 0.3
    args = (x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    ref = anchor_frechet(*args)
    assert metrics.frechet_distance(*args) == pytest.approx(ref, rel=1e-9)
    assert metrics.vfid(x, y) == pytest.approx(ref, rel=1e-9)
    # known closed form: 1-D Gaussians, (m1 - m2)^2 + (s1 - s2)^2
    assert metrics.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1)
    assert metrics.frechet_distance(*args[:2], *args[:2]) == pytest.approx(0, abs=1e-9)


def test_frechet_is_real_for_rank_deficient_vfid_covariances():
    """50 videos in more dims than videos (DAVIS: 50 x 1024; 256 here to stay fast): rank-49 covariances;
    sqrtm may go complex, ours stays real, non-negative and equals the sum of square roots of eig(S1 S2)
    (real, >= 0 in exact arithmetic)."""
    rng = np.random.default_rng(3)
    real = np.abs(rng.standard_normal((50, 256))) * 0.1
    fake = real + 0.02 * rng.standard_normal((50, 256))
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    value = metrics.vfid(real, fake)
    assert isinstance(value, float) and np.isfinite(value) and value > 0
    ev = np.linalg.eigvals(s1 @ s2)
    tr = np.sum(np.sqrt(np.clip(ev.real, 0, None)))
    d = real.mean(0) - fake.mean(0)
    ref = d @ d + np.trace(s1) + np.trace(s2) - 2 * tr
    assert value == pytest.approx(ref, rel=1e-6)
    # the sample-space shortcut of vfid = the general eigendecomposition route
    assert value == pytest.approx(metrics.frechet_distance(real.mean(0), s1, fake.mean(0), s2), rel=1e-9)
    assert metrics.vfid(real, real) == pytest.approx(0.0, abs=1e-9)
    assert metrics.vfid(fake, real) == pytest.approx(metrics.frechet_distance(fake.mean(0), s2, real.mean(0), s1),
                                                     rel=1e-9)


def test_frechet_and_vfid_bad_inputs():
    s = np.eye(3)
    with pytest.raises(ValueError, match="same length"):
        metrics.frechet_distance(np.zeros(3), s, np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"sigma2 must be a \(3, 3\)"):
        metrics.frechet_distance(np.zeros(3), s, np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="sigma1 is not symmetric"):
        metrics.frechet_distance(np.zeros(3), np.triu(np.ones((3, 3))), np.zeros(3), s)
    with pytest.raises(ValueError, match="non-finite"):
        metrics.frechet_distance(np.zeros(3), s * np.nan, np.zeros(3), s)
    with pytest.raises(ValueError, match="at least 2 videos"):
        metrics.vfid(np.zeros((1, 8)), np.zeros((1, 8)))
    with pytest.raises(ValueError, match="feature sizes differ"):
        metrics.vfid(np.zeros((3, 8)), np.zeros((3, 9)))
    with pytest.raises(ValueError, match=r"\(num_videos, dims\)"):
        metrics.vfid(np.zeros(8), np.zeros(8))


# --- E_warp ----------------------------------------------------------------------------------------
def resample2d(img, flow):
    """FlowNet2's Resample2d (Lai et al.'s warping layer) in numpy: bilinear at p + flow with the
    weights of the unclamped position and the indices clamped to the image."""
    h, w = img.shape[:2]
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    xf, yf = xs + flow[..., 0], ys + flow[..., 1]
    x0, y0 = np.floor(xf), np.floor(yf)
    a, b = (xf - x0)[..., None], (yf - y0)[..., None]
    xl, xr = np.clip(x0, 0, w - 1).astype(int), np.clip(x0 + 1, 0, w - 1).astype(int)
    yt, yb = np.clip(y0, 0, h - 1).astype(int), np.clip(y0 + 1, 0, h - 1).astype(int)
    return ((1 - a) * (1 - b) * img[yt, xl] + a * (1 - b) * img[yt, xr] + (1 - a) * b * img[yb, xl]
            + a * b * img[yb, xr])


def lai_occlusion(fw, bw):  # compute_flow_occlusion.py: detect_occlusion(bw_flow, fw_flow), unrolled
    bw_w = resample2d(bw, fw)
    mag = lambda f: f[..., 0] ** 2 + f[..., 1] ** 2  # noqa: E731
    mask1 = mag(bw_w + fw) > 0.01 * (mag(bw_w) + mag(fw)) + 0.5
    du, dv = np.zeros_like(fw), np.zeros_like(fw)
    du[:, :-1] = fw[:, :-1] - fw[:, 1:]
    dv[:-1] = fw[:-1] - fw[1:]
    mask2 = mag(du) + mag(dv) > 0.01 * mag(fw) + 0.002
    return mask1 | mask2


def lai_warping_error(frames_u8, fws, bws):  # evaluate_WarpError.py for one video
    imgs = frames_u8.astype(np.float32) / 255.0
    err = 0.0
    for t in range(1, len(imgs)):
        noc = np.repeat((1 - lai_occlusion(fws[t - 1], bws[t - 1]).astype(np.float32))[..., None], 3, -1)
        diff = (resample2d(imgs[t], fws[t - 1]) - imgs[t - 1]) * noc
        n = noc.sum() or diff.size
        err += np.sum(np.square(diff)) / n
    return err / (len(imgs) - 1)


def _smooth_flows(rng, n, h, w, amp):
    corners = rng.uniform(-amp, amp, (n, 2, 2, 2))  # bilinear ramps between random corner flows
    ys, xs = np.linspace(0, 1, h)[:, None, None], np.linspace(0, 1, w)[None, :, None]
    out = np.empty((n, h, w, 2))
    for i, c in enumerate(corners):
        out[i] = (1 - ys) * ((1 - xs) * c[0, 0] + xs * c[0, 1]) + ys * ((1 - xs) * c[1, 0] + xs * c[1, 1])
    # a motion discontinuity in the middle of every flow (occlusion / boundary pixels)
    out[:, h // 2:, w // 2:] += 3.0
    return out.astype(np.float32)


def test_resample2d_is_flownet2_resample_and_border_warp():
    rng = np.random.default_rng(2)
    img = rng.uniform(0, 1, (2, 9, 13, 3)).astype(np.float32)
    flow = rng.uniform(-6, 6, (2, 9, 13, 2)).astype(np.float32)
    flow[0, 0, 0] = (-0.0, 0.0)
    flow[0, 1, 1] = (11.0, 7.0)  # exactly the last pixel
    ours = metrics.resample2d(img, flow)
    ref = np.stack([resample2d(i.astype(np.float64), f.astype(np.float64)) for i, f in zip(img, flow)])
    np.testing.assert_allclose(ours, ref, atol=2e-6)
    np.testing.assert_array_equal(metrics.resample2d(img, np.zeros_like(flow)), img)  # exact at zero flow
    # the same as mmediting's flow_warp with border padding (what grid_sample does with clamped coordinates)
    from ecformer_jax.layers.flow import flow_warp

    np.testing.assert_allclose(ours, np.asarray(flow_warp(jnp.asarray(img), jnp.asarray(flow), padding_mode="border")),
                               atol=2e-5)


def test_warping_error_matches_lai_transcription():
    rng = np.random.default_rng(0)
    t, h, w = 4, 24, 31
    frames = rng.integers(0, 256, (t, h, w, 3)).astype(np.uint8)
    fw = _smooth_flows(rng, t - 1, h, w, 4.0)  # moves past the borders
    bw = -fw + rng.normal(0, 0.3, fw.shape).astype(np.float32)
    occ = np.asarray(metrics.occlusion_masks(fw, bw))
    ref_occ = np.stack([lai_occlusion(f.astype(np.float64), b.astype(np.float64)) for f, b in zip(fw, bw)])
    assert 0.02 < occ.mean() < 0.9
    np.testing.assert_array_equal(occ, ref_occ)  # no threshold ties for this seed (float32 vs float64)
    terms = metrics.warping_errors(frames, fw, bw)
    assert terms.shape == (t - 1,) and terms.dtype == np.float64
    ref = lai_warping_error(frames, fw.astype(np.float64), bw.astype(np.float64))
    assert float(np.mean(terms)) == pytest.approx(ref, rel=1e-6)
    # every pixel occluded: the sum is divided by H * W * C instead
    everywhere = fw.copy()
    everywhere[..., 0] += np.arange(w, dtype=np.float32) ** 2  # a huge gradient everywhere
    assert np.asarray(metrics.occlusion_masks(everywhere, bw)).all()
    np.testing.assert_array_equal(metrics.warping_errors(frames, everywhere, bw), 0.0)


def test_warping_error_known_values():
    rng = np.random.default_rng(1)
    base = rng.integers(20, 200, (1, 16, 20, 3))
    zero = np.zeros((3, 16, 20, 2), np.float32)
    static = np.repeat(base, 4, 0).astype(np.uint8)
    np.testing.assert_array_equal(metrics.warping_errors(static, zero, zero), 0.0)
    # brightness flicker of 10 levels with no motion: every term is (10 / 255)^2
    flicker = (static.astype(int) + np.array([0, 10, 0, 10])[:, None, None, None]).astype(np.uint8)
    np.testing.assert_allclose(metrics.warping_errors(flicker, zero, zero), (10 / 255) ** 2, rtol=1e-5)
    # a pure 2-pixel horizontal shift is explained by the flow: zero error away from the border
    wide = rng.integers(0, 256, (1, 16, 30, 3)).astype(np.uint8)
    shifted = np.stack([wide[0, :, 4:24], wide[0, :, 6:26]])  # frame 1 = frame 0 moved left by 2
    fw = np.zeros((1, 16, 20, 2), np.float32)
    fw[..., 0] = -2.0  # frame1 sampled at x - 2 matches frame0 at x
    bw = -fw
    err_shift = metrics.warping_errors(shifted, fw, bw)[0]
    err_zero = metrics.warping_errors(shifted, zero[:1], zero[:1])[0]
    assert err_shift < 0.2 * err_zero  # only the 2 border columns (of 20) sample clamped pixels
    inner = metrics.warping_errors(shifted[:, :, 2:], fw[:, :, 2:] * 0, bw[:, :, 2:] * 0)[0]
    assert inner > 0.5 * err_zero
    occ = np.asarray(metrics.occlusion_masks(fw, bw))
    assert not occ.any()


def test_warping_error_bad_inputs():
    f = np.zeros((3, 8, 8, 3), np.uint8)
    flows = np.zeros((2, 8, 8, 2), np.float32)
    with pytest.raises(ValueError, match=r"forward flows must have shape \(T - 1, H, W, 2\) = \(2, 8, 8, 2\)"):
        metrics.warping_errors(f, flows[:1], flows)
    with pytest.raises(ValueError, match="backward flows"):
        metrics.warping_errors(f, flows, flows[..., :1])
    with pytest.raises(ValueError, match="at least 2 frames"):
        metrics.warping_errors(f[:1], flows[:0], flows[:0])
    with pytest.raises(ValueError, match=r"frames must be \(T, H, W, 3\)"):
        metrics.warping_errors(f[..., 0], flows, flows)


# --- the SPyNet flow estimator ---------------------------------------------------------------------
def _spynet_state_dict(seed=0):
    rng = np.random.default_rng(seed)
    chans = (8, 32, 64, 32, 16, 2)
    sd = {}
    for level in range(6):
        for j in range(5):
            k = f"basic_module.{level}.basic_module.{j}.conv"
            sd[f"{k}.weight"] = torch.from_numpy(
                (rng.standard_normal((chans[j + 1], chans[j], 7, 7)) / np.sqrt(chans[j] * 49)).astype(np.float32))
            sd[f"{k}.bias"] = torch.from_numpy((0.01 * rng.standard_normal(chans[j + 1])).astype(np.float32))
    return sd


@pytest.mark.slow
def test_spynet_flow_pairs_and_batching(tmp_path):
    path = tmp_path / "spynet.pth"
    torch.save({"state_dict": _spynet_state_dict()}, path)  # the mmediting layout
    flow = metrics.SPyNetFlow.from_checkpoint(path, batch_size=3)  # 4 pairs x 2 directions: padded batches
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 40, 56, 3)).astype(np.uint8)
    fw, bw = flow(frames)
    assert fw.shape == bw.shape == (4, 40, 56, 2)
    model = models.build("spynet")
    x = jnp.asarray(frames.astype(np.float32) / 255)
    variables = convert.from_torch("spynet", path)
    ref_fw = np.asarray(jax.jit(model.apply)(variables, x[2:3], x[3:4]))[0]  # flow 2 -> 3: ref 2, supp 3
    ref_bw = np.asarray(jax.jit(model.apply)(variables, x[3:4], x[2:3]))[0]
    np.testing.assert_allclose(fw[2], ref_fw, atol=1e-4)
    np.testing.assert_allclose(bw[2], ref_bw, atol=1e-4)
    assert np.abs(fw).max() > 1e-3 and not np.allclose(fw, bw)
    with pytest.raises(ValueError, match="at least 2 frames"):
        flow(frames[:1])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        metrics.SPyNetFlow(variables, batch_size=0)
    folder = convert.save(tmp_path / "conv", "i3d", {"params": {"x": np.zeros(1, np.float32)}})
    with pytest.raises(convert.CheckpointError, match="'i3d' checkpoint, not 'spynet'"):
        metrics.SPyNetFlow.from_checkpoint(folder)
    with pytest.raises(convert.CheckpointError, match="not found"):
        metrics.SPyNetFlow.from_checkpoint(tmp_path / "missing.pth")
