"""The grain pipeline: sampling rules, determinism, the process split and resuming."""
from __future__ import annotations

import numpy as np
import pytest

from ecformer_jax.data import pipeline
from ecformer_jax.data.config import data_config
from ecformer_jax.data.datasets import open_source

W, H = 96, 48


def cfg(**kw):
    base = dict(width=W, height=H, synthetic_videos=5, synthetic_length=12, num_threads=2)
    base.update(kw)
    return data_config(**base)


def take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys() == {"frames", "masks"}
        np.testing.assert_array_equal(x["frames"], y["frames"])
        np.testing.assert_array_equal(x["masks"], y["masks"])


def test_batch_shapes_and_values():
    (b,) = take(pipeline.make_dataset(cfg(), global_batch=3), 1)
    assert b["frames"].shape == (3, 5, H, W, 3) and b["frames"].dtype == np.uint8
    assert b["masks"].shape == (3, 5, H, W, 1) and b["masks"].dtype == np.uint8
    assert set(np.unique(b["masks"])) == {0, 1}
    (b,) = take(pipeline.make_dataset(cfg(sampling="local_ref", num_local=4, num_ref=2), global_batch=2), 1)
    assert b["frames"].shape == (2, 6, H, W, 3) and b["masks"].shape == (2, 6, H, W, 1)


def test_sampling_rules():
    c = cfg()
    kinds = {"subset": 0, "consecutive": 0}
    for g in range(200):
        idx = pipeline.sample_frame_indices(20, c, np.random.default_rng([0, g]))
        assert len(idx) == 5 and len(set(idx)) == 5 and idx == sorted(idx) and 0 <= idx[0] and idx[-1] < 20
        kinds["consecutive" if idx == list(range(idx[0], idx[0] + 5)) else "subset"] += 1
    assert 60 < kinds["subset"] < 140, kinds  # p = 0.5 (a random subset is rarely consecutive)
    lr = cfg(sampling="local_ref", num_local=5, num_ref=3)
    starts = set()
    for g in range(100):
        idx = pipeline.sample_frame_indices(12, lr, np.random.default_rng([0, g]))
        local, refs = idx[:5], idx[5:]
        assert local == list(range(local[0], local[0] + 5))
        assert refs == sorted(refs) and len(set(refs)) == 3 and not set(refs) & set(local)
        assert all(0 <= t < 12 for t in idx)
        starts.add(local[0])
    assert starts == set(range(8))


def test_flip_frames_only():
    src = open_source(cfg())
    plain = pipeline.ClipSampler(src, cfg(flip=False), seed=1)
    flipping = pipeline.ClipSampler(src, cfg(flip=True), seed=1)
    flipped = 0
    for g in range(12):
        a, b = plain(g), flipping(g)
        np.testing.assert_array_equal(a["masks"], b["masks"])  # masks are never flipped
        if np.array_equal(b["frames"], a["frames"][:, :, ::-1]):
            flipped += 1
        else:
            np.testing.assert_array_equal(b["frames"], a["frames"])
    assert 2 <= flipped <= 10


def test_epoch_permutation_and_purity():
    src = open_source(cfg())
    sampler = pipeline.ClipSampler(src, cfg(), seed=5)
    for epoch in range(3):
        videos = [sampler.video_for(g) for g in range(epoch * 5, epoch * 5 + 5)]
        assert sorted(videos) == list(range(5))  # every video once per epoch
        np.testing.assert_array_equal(videos, np.random.default_rng([5, epoch]).permutation(5))
    # global batch k, row r is sample g = k * global_batch + r: a pure function of (seed, g)
    batches = take(pipeline.make_dataset(cfg(), global_batch=2, seed=5), 2)
    other = pipeline.ClipSampler(open_source(cfg()), cfg(), seed=5)
    for g in (1, 2):
        s = other(g)
        np.testing.assert_array_equal(batches[g // 2]["frames"][g % 2], s["frames"])
        np.testing.assert_array_equal(batches[g // 2]["masks"][g % 2], s["masks"])


def test_seed_determinism():
    a = take(pipeline.make_dataset(cfg(), 2, seed=3), 2)
    assert_batches_equal(a, take(pipeline.make_dataset(cfg(num_threads=0), 2, seed=3), 2))
    b = take(pipeline.make_dataset(cfg(), 2, seed=4), 2)
    assert not np.array_equal(a[0]["masks"], b[0]["masks"])


def test_process_split_equals_global_batch():
    c = cfg(sampling="local_ref", num_local=3, num_ref=2)
    whole = take(pipeline.make_dataset(c, global_batch=4, seed=2), 3)
    parts = [take(pipeline.make_dataset(c, 4, process_index=p, process_count=2, seed=2), 3) for p in range(2)]
    for k in range(3):
        assert parts[0][k]["frames"].shape[0] == 2
        for key in ("frames", "masks"):
            np.testing.assert_array_equal(np.concatenate([parts[0][k][key], parts[1][k][key]]), whole[k][key])
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        pipeline.make_dataset(c, 4, process_count=3)
    with pytest.raises(ValueError, match="process_index 2 out of range"):
        pipeline.make_dataset(c, 4, process_index=2, process_count=2)


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_from_iterator_state(workers):
    c = cfg(num_workers=workers, synthetic_videos=3, synthetic_length=8)
    it = iter(pipeline.make_dataset(c, 2, seed=9))
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    resumed = iter(pipeline.make_dataset(c, 2, seed=9))
    resumed.set_state(state)
    assert_batches_equal([next(resumed) for _ in range(3)], expected)
    # worker processes do not change the data; the stream runs on over epochs (3 videos, 2 per batch)
    fresh = take(pipeline.make_dataset(cfg(num_workers=0, synthetic_videos=3, synthetic_length=8), 2, seed=9), 8)
    assert_batches_equal(fresh[5:], expected)


def test_bad_config():
    with pytest.raises(ValueError, match="unknown data.sampling"):
        pipeline.make_dataset(cfg(sampling="uniform"), 2)
    with pytest.raises(ValueError, match="unknown data.masks"):
        pipeline.make_dataset(cfg(masks="boxes"), 2)
