"""Synthetic clips and masks: deterministic, smooth, learnable."""
from __future__ import annotations

import numpy as np
import pytest

from ecformer_jax.data.synthetic import synthetic_clip, synthetic_masks


def test_clip_shape_determinism_and_subsets():
    a = synthetic_clip(8, 48, 96, seed=3)
    assert a.shape == (8, 48, 96, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, synthetic_clip(8, 48, 96, seed=3))
    np.testing.assert_array_equal(synthetic_clip(8, 48, 96, seed=3, frame_indices=[6, 1]), a[[6, 1]])
    assert np.abs(a.astype(int) - synthetic_clip(8, 48, 96, seed=4)).mean() > 10
    assert a.std() > 20, "textured, not flat"
    with pytest.raises(ValueError, match="cannot render frame"):
        synthetic_clip(8, 48, 96, frame_indices=[8])


def test_clip_motion_is_smooth():
    a = synthetic_clip(20, 48, 96, seed=1).astype(np.float32)
    step = np.abs(np.diff(a, axis=0)).mean()
    far = np.abs(a[15] - a[0]).mean()
    assert 0.5 < step < far, (step, far)  # it moves, and neighbouring frames are closer than distant ones


def test_masks():
    m = synthetic_masks(10, 48, 96, seed=2)
    assert m.shape == (10, 48, 96) and m.dtype == bool
    frac = m.mean(axis=(1, 2))
    assert ((frac > 0.02) & (frac < 0.2)).all(), frac
    assert len({f.tobytes() for f in m}) > 5, "the mask moves"
    np.testing.assert_array_equal(m, synthetic_masks(10, 48, 96, seed=2))
    np.testing.assert_array_equal(synthetic_masks(10, 48, 96, seed=2, frame_indices=[4]), m[4:5])
