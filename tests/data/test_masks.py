"""The official random-shape mask generator, dilation and fixed mask folders."""
from __future__ import annotations

import random

import cv2
import numpy as np
import pytest

from ecformer_jax.data import masks as masks_lib
from ecformer_jax.data.video_io import VideoError, write_frames


def _reference(n, h, w):
    """The official generator as specified in specs/sttn.md §8, with the global `random` / `np.random`
    state and pyplot, exactly as the official trainers run it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as mpatches
    import matplotlib.pyplot as plt
    from matplotlib.path import Path

    box_h, box_w = random.randint(h // 3, h - 1), random.randint(w // 3, w - 1)
    edges, ratio = random.randint(6, 8), random.randint(6, 8) / 10
    p = 3 * edges + 1
    ang = np.linspace(0, 2 * np.pi, p)
    verts = np.stack((np.cos(ang), np.sin(ang))).T * (2 * ratio * np.random.random(p) + 1 - ratio)[:, None]
    verts[-1, :] = verts[0, :]
    codes = np.full(p, Path.CURVE4)
    codes[0] = Path.MOVETO
    fig = plt.figure()
    ax = fig.add_subplot(111)
    ax.add_patch(mpatches.PathPatch(Path(verts, codes), facecolor="black", lw=2))
    ax.set_xlim(np.min(verts) * 1.1, np.max(verts) * 1.1)
    ax.set_ylim(np.min(verts) * 1.1, np.max(verts) * 1.1)
    ax.axis("off")
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    hole = cv2.resize(rgb, (box_w, box_h))[:, :, 0] == 0
    rr, cc = np.nonzero(hole)
    region = hole[rr.min():rr.max(), cc.min():cc.max()]
    rh, rw = region.shape
    x, y = random.randint(0, h - rh), random.randint(0, w - rw)
    speed, angle = np.random.uniform(3), np.random.uniform(0, 2 * np.pi)

    def paste(x, y):
        m = np.zeros((h, w), bool)
        m[x:x + rh, y:y + rw] = region
        return m

    out = [paste(x, y)]
    if random.uniform(0, 1) > 0.5:
        return np.stack(out * n)
    for _ in range(n - 1):
        x += int(speed * np.cos(angle))
        y += int(speed * np.sin(angle))
        speed += np.random.normal(0, 1.5)
        angle += np.random.normal(0, 0.25)
        if x > h - rh or x < 0 or y > w - rw or y < 0:
            speed, angle = np.abs(np.random.normal(0, 1.5)), np.random.uniform(0, 2 * np.pi)
        x, y = np.clip(x, 0, h - rh), np.clip(y, 0, w - rw)
        out.append(paste(x, y))
    return np.stack(out)


@pytest.mark.parametrize("h,w,seeds", [(48, 96, range(6)), (240, 432, range(2))])
def test_matches_official_generator_call_order(h, w, seeds):
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        for seed in seeds:
            rng = np.random.default_rng(seed)
            random.seed(int(rng.integers(0, 2**63 - 1)))
            np.random.seed(int(rng.integers(0, 2**32 - 1)))
            ref = _reference(12, h, w)
            got = masks_lib.random_shape_masks(12, h, w, np.random.default_rng(seed))
            np.testing.assert_array_equal(got, ref, err_msg=f"seed {seed}")
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def test_statistics_over_seeds():
    h, w, t = 48, 96, 8
    stationary, fractions = 0, []
    for seed in range(100):
        m = masks_lib.random_shape_masks(t, h, w, np.random.default_rng(seed))
        assert m.shape == (t, h, w) and m.dtype == bool
        area = m.sum(axis=(1, 2))
        assert (area == area[0]).all(), "the blob is pasted whole on every frame (positions are clipped)"
        fractions.append(area[0] / (h * w))
        if all((m[0] == f).all() for f in m[1:]):
            stationary += 1
        else:  # a moving blob moves a few pixels per frame, never jumps
            rows = [np.nonzero(f)[0].mean() for f in m]
            assert np.abs(np.diff(rows)).max() < h / 2
    fractions = np.array(fractions)
    assert 0.3 <= stationary / 100 <= 0.7, stationary
    assert fractions.min() > 0.005 and fractions.max() < 0.45, (fractions.min(), fractions.max())
    assert 0.03 < fractions.mean() < 0.2


def test_moving_masks_move_and_box_bounds():
    moved = 0
    for seed in range(30):
        m = masks_lib.random_shape_masks(20, 48, 96, np.random.default_rng(seed))
        rows, cols = np.nonzero(m[0])
        # the blob box is at most (H-1) x (W-1)
        assert rows.max() - rows.min() < 47 and cols.max() - cols.min() < 95
        moved += len({f.tobytes() for f in m}) > 1
    assert 8 <= moved <= 22


def test_deterministic_and_frame_subset():
    a = masks_lib.random_shape_masks(15, 48, 96, np.random.default_rng(7))
    b = masks_lib.random_shape_masks(15, 48, 96, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    sub = masks_lib.random_shape_masks(15, 48, 96, np.random.default_rng(7), frame_indices=[9, 2, 14])
    np.testing.assert_array_equal(sub, a[[9, 2, 14]])
    c = masks_lib.random_shape_masks(15, 48, 96, np.random.default_rng(8))
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="outside"):
        masks_lib.random_shape_masks(5, 48, 96, np.random.default_rng(0), frame_indices=[5])


@pytest.mark.parametrize("iterations", [1, 4])
def test_dilate_matches_cv2(iterations):
    rng = np.random.default_rng(0)
    m = rng.random((3, 20, 33)) > 0.97
    m[0, 0, 0] = m[1, -1, -1] = True  # corners: the border must not leak
    kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    ref = np.stack([cv2.dilate(f.astype(np.uint8), kernel, iterations=iterations) for f in m]) > 0
    got = masks_lib.dilate(m, iterations)
    np.testing.assert_array_equal(got, ref)
    assert got.sum() > m.sum()


def test_masks_from_folder(tmp_path):
    masks = np.zeros((4, 10, 16, 3), np.uint8)
    for t in range(4):
        masks[t, 2:5, t:t + 4] = 255
    write_frames(tmp_path / "m", masks)
    got = masks_lib.masks_from_folder(tmp_path / "m", frame_indices=[3, 1], num_frames=4)
    np.testing.assert_array_equal(got, masks[[3, 1], ..., 0] > 0)
    big = masks_lib.masks_from_folder(tmp_path / "m", size=(32, 20))
    assert big.shape == (4, 20, 32) and big.sum() == 4 * masks[0, ..., 0].astype(bool).sum() * 4
    with pytest.raises(VideoError, match=r"has 4 masks but the video has 5 frames"):
        masks_lib.masks_from_folder(tmp_path / "m", num_frames=5)
    single = masks_lib.masks_from_folder(tmp_path / "m" / "00002.png", frame_indices=[0, 4, 6], num_frames=9)
    assert single.shape == (3, 10, 16) and (single == (masks[2, ..., 0] > 0)).all()
    with pytest.raises(VideoError, match="mask not found"):
        masks_lib.masks_from_folder(tmp_path / "nope")


RACE = """
import threading
import numpy as np
from ecformer_jax.data import masks
errors = []
def blob(i):
    try:
        masks._random_blob(4, 0.7, 240, 432, np.random.RandomState(i))
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=blob, args=(i,)) for i in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
print("ERRORS", len(errors), errors[:1])
"""


def test_data_loader_threads_importing_matplotlib_at_once():
    """8 threads draw their first blob at once in a fresh process (grain's worker threads do): matplotlib's first
    import must not hand one of them a partially initialised module (it did in 2 of 5 runs before the lock)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    res = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0 and "ERRORS 0 []" in res.stdout, res.stdout + res.stderr[-2000:]
