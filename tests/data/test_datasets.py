"""Video sources: every layout, the real tennis clip, and the errors for bad input."""
from __future__ import annotations

import json
import logging
import zipfile

import numpy as np
import pytest

from ecformer_jax.data import datasets
from ecformer_jax.data.config import data_config
from ecformer_jax.data.pipeline import ClipSampler
from ecformer_jax.data.synthetic import synthetic_clip
from ecformer_jax.data.video_io import VideoError, read_frames, write_frames, write_video

W, H = 96, 48
LENGTHS = {"bear": 7, "car": 9, "dog": 6}


def cfg(path="", **kw):
    return data_config(path=str(path), width=W, height=H, **kw)


@pytest.fixture(scope="module")
def frames_root(tmp_path_factory):
    """A YouTube-VOS style root: JPEGImages/<video>/<frame>.jpg (stored at 64x40, read at 96x48)."""
    root = tmp_path_factory.mktemp("frames")
    for k, (name, n) in enumerate(LENGTHS.items()):
        write_frames(root / "JPEGImages" / name, synthetic_clip(n, 40, 64, seed=k), ext=".jpg")
    return root


@pytest.fixture(scope="module")
def zip_root(tmp_path_factory, frames_root):
    """The official layout: JPEGImages/<video>.zip with members 00000.jpg ... + train.json."""
    root = tmp_path_factory.mktemp("zips")
    (root / "JPEGImages").mkdir()
    for name in LENGTHS:
        with zipfile.ZipFile(root / "JPEGImages" / f"{name}.zip", "w") as z:
            for f in sorted((frames_root / "JPEGImages" / name).iterdir()):
                z.write(f, f.name)
    (root / "train.json").write_text(json.dumps(LENGTHS))
    return root


def test_frame_folders(frames_root):
    src = datasets.open_source(cfg(frames_root))
    assert isinstance(src, datasets.FrameFolderSource)
    assert len(src) == 3 and [src.name(i) for i in range(3)] == ["bear", "car", "dog"]
    assert [src.num_frames(i) for i in range(3)] == [7, 9, 6]
    got = src.read(1, [0, 8, 3])
    assert got.shape == (3, H, W, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, read_frames(frames_root / "JPEGImages" / "car", [0, 8, 3], size=(W, H)))
    from PIL import Image

    orig = np.asarray(Image.fromarray(synthetic_clip(9, 40, 64, seed=1)[8]).resize((W, H), Image.BICUBIC))
    assert np.abs(got[1].astype(int) - orig).mean() < 15  # the stored 64x40 frame, bicubic to 96x48 (JPEG q75)
    # a split file selects videos
    (frames_root / "sub.json").write_text(json.dumps({"dog": 6, "bear": 7}))
    sub = datasets.open_source(cfg(frames_root, split_json="sub.json"))
    assert [sub.name(i) for i in range(len(sub))] == ["bear", "dog"]


def test_zip_layout_with_train_json(zip_root, frames_root):
    src = datasets.open_source(cfg(zip_root, split_json="train.json"))
    assert isinstance(src, datasets.ZipSource)
    assert [src.name(i) for i in range(3)] == ["bear", "car", "dog"]
    assert [src.num_frames(i) for i in range(3)] == [7, 9, 6]
    ref = datasets.open_source(cfg(frames_root))
    np.testing.assert_array_equal(src.read(0, [6, 2]), ref.read(0, [6, 2]))
    # without a split file the frames are counted in the zips
    assert datasets.open_source(cfg(zip_root)).num_frames(1) == 9


def test_video_files(tmp_path):
    clips = {f"v{k}": synthetic_clip(5 + k, 48, 96, seed=k) for k in range(2)}
    for name, clip in clips.items():
        write_video(tmp_path / f"{name}.mp4", clip)
    src = datasets.open_source(cfg(tmp_path))
    assert isinstance(src, datasets.VideoFileSource) and len(src) == 2
    assert src.num_frames(1) == 6
    got = src.read(1, [5, 0])
    assert got.shape == (2, H, W, 3)
    assert np.abs(got.astype(int) - clips["v1"][[5, 0]]).mean() < 8  # lossy H.264
    single = datasets.open_source(cfg(tmp_path / "v0.mp4"))
    assert len(single) == 1 and single.name(0) == "v0" and single.num_frames(0) == 5


def test_synthetic_source():
    src = datasets.open_source(cfg("", synthetic_videos=4, synthetic_length=10))
    assert isinstance(src, datasets.SyntheticSource) and len(src) == 4 and src.num_frames(3) == 10
    np.testing.assert_array_equal(src.read(2, [1, 9]), synthetic_clip(10, H, W, seed=2)[[1, 9]])


def test_tennis_frame_folder(tennis_dir):
    src = datasets.open_source(cfg(tennis_dir / "frames"))
    assert len(src) == 1 and src.num_frames(0) == 70
    got = src.read(0, [0, 69])
    assert got.shape == (2, H, W, 3)
    np.testing.assert_array_equal(got, read_frames(tennis_dir / "frames", [0, 69], size=(W, H)))
    # with its own masks as the fixed mask folder
    sampler = ClipSampler(src, cfg(tennis_dir / "frames", masks="folder", mask_dir=str(tennis_dir / "masks"),
                                   flip=False), seed=0)
    s = sampler(0)
    assert s["frames"].shape == (5, H, W, 3) and s["masks"].shape == (5, H, W, 1)
    assert 0 < s["masks"].mean() < 0.5 and set(np.unique(s["masks"])) <= {0, 1}


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(VideoError, match="data path not found"):
        datasets.open_source(cfg(tmp_path / "nope"))
    (tmp_path / "root").mkdir()
    with pytest.raises(VideoError, match="no videos found"):
        datasets.open_source(cfg(tmp_path / "root"))
    (tmp_path / "root" / "JPEGImages" / "empty_video").mkdir(parents=True)
    src = datasets.open_source(cfg(tmp_path / "root"))
    with pytest.raises(VideoError, match=r"empty_video.*no image files"):
        src.num_frames(0)
    with pytest.raises(ValueError, match="unknown data layout"):
        datasets.open_source(cfg(tmp_path / "root", layout="hdf5"))


def test_split_file_errors(frames_root):
    with pytest.raises(VideoError, match="split file not found"):
        datasets.open_source(cfg(frames_root, split_json="missing.json"))
    (frames_root / "bad.json").write_text(json.dumps({"bear": 7, "zebra": 3}))
    with pytest.raises(VideoError, match=r"missing in .*zebra"):
        datasets.open_source(cfg(frames_root, split_json="bad.json"))


def test_unreadable_frame_names_the_file(tmp_path, frames_root, caplog):
    root = tmp_path / "data"
    for name in ("bad", "good"):
        write_frames(root / name, synthetic_clip(6, H, W, seed=1), ext=".jpg")
    (root / "bad" / "00002.jpg").write_bytes(b"not a jpeg")
    src = datasets.open_source(cfg(root))
    with pytest.raises(VideoError, match=r"'bad'.*cannot read image .*00002\.jpg"):
        src.read(0, [1, 2])
    # in the pipeline: an error naming the file, or with skip_bad a logged replacement
    c = cfg(root, sampling="random_or_consecutive", num_frames=6)
    sampler = ClipSampler(src, c, seed=0)
    g_bad = next(g for g in range(10) if sampler.video_for(g) == 0)
    with pytest.raises(VideoError, match=r"00002\.jpg"):
        sampler(g_bad)
    skipping = ClipSampler(src, cfg(root, num_frames=6, skip_bad=True), seed=0)
    with caplog.at_level(logging.WARNING):
        s = skipping(g_bad)
    assert s["frames"].shape == (6, H, W, 3)
    assert "skipping a bad video" in caplog.text and "00002.jpg" in caplog.text
    np.testing.assert_array_equal(skipping(g_bad)["frames"], s["frames"])  # the replacement is deterministic


def test_short_clip(frames_root, caplog):
    src = datasets.open_source(cfg(frames_root))
    c = cfg(frames_root, num_frames=8)  # 'dog' has 6 frames, 'bear' 7
    sampler = ClipSampler(src, c, seed=0)
    g = next(g for g in range(10) if src.name(sampler.video_for(g)) == "dog")
    with pytest.raises(VideoError, match=r"'dog'.*has 6 frames, fewer than the 8 frames"):
        sampler(g)
    lr = ClipSampler(src, cfg(frames_root, sampling="local_ref", num_local=5, num_ref=3), seed=0)
    with pytest.raises(VideoError, match=r"'dog'.*fewer than the 8 frames"):
        lr(g)
    skipping = ClipSampler(src, cfg(frames_root, num_frames=8, skip_bad=True), seed=0)
    with caplog.at_level(logging.WARNING):
        assert skipping(g)["frames"].shape == (8, H, W, 3)  # only 'car' (9 frames) is long enough
    assert "'dog'" in caplog.text


def test_mask_folder_errors(tmp_path, frames_root):
    src = datasets.open_source(cfg(frames_root))
    mdir = tmp_path / "masks"
    m = np.zeros((7, 40, 64, 3), np.uint8)
    m[:, 10:20, 10:30] = 255
    write_frames(mdir / "bear", m)
    write_frames(mdir / "car", m)  # car has 9 frames: count mismatch
    c = cfg(frames_root, masks="folder", mask_dir=str(mdir), num_frames=3)
    sampler = ClipSampler(src, c, seed=0)
    by_name = {src.name(sampler.video_for(g)): g for g in range(3)}
    s = sampler(by_name["bear"])
    assert s["masks"].shape == (3, H, W, 1) and s["masks"].dtype == np.uint8
    np.testing.assert_allclose(s["masks"].mean(), (12 * 30) / (W * H), rtol=0.05)  # nearest x1.2, x1.5
    with pytest.raises(VideoError, match=r"'car'.*masks/car has 7 masks but the video has 9 frames"):
        sampler(by_name["car"])
    with pytest.raises(VideoError, match=r"no masks for video 'dog'"):
        sampler(by_name["dog"])
    with pytest.raises(VideoError, match="mask_dir not found"):
        ClipSampler(src, cfg(frames_root, masks="folder", mask_dir=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="needs data.mask_dir"):
        ClipSampler(src, cfg(frames_root, masks="folder"))


def test_remote_data_path_refused_with_advice():
    with pytest.raises(VideoError, match=r"gs://bucket/youtube-vos.*mount the bucket"):
        datasets.open_source(data_config(path="gs://bucket/youtube-vos", width=64, height=32))
