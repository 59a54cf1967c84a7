"""Mirror padding to multiples (layers/padding.py) against the official E2FGVI test.py's recipe."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ecformer_jax.layers.padding import crop, pad_to_multiple


def _official_pad(frames_bthwc, h_pad, w_pad):
    """test.py's padding, in torch on (B, T, C, H, W)."""
    x = torch.from_numpy(np.moveaxis(frames_bthwc, -1, 2).copy())
    h, w = x.shape[-2:]
    x = torch.cat([x, torch.flip(x, [3])], 3)[:, :, :, : h + h_pad, :]
    x = torch.cat([x, torch.flip(x, [4])], 4)[:, :, :, :, : w + w_pad]
    return np.moveaxis(x.numpy(), 2, -1)


@pytest.mark.parametrize("size", [(50, 100), (60, 108), (61, 109), (240, 432), (100, 30)])
def test_pad_to_multiple_matches_test_py(size):
    h, w = size
    frames = np.random.default_rng(0).standard_normal((1, 2, h, w, 3)).astype(np.float32)
    h_pad, w_pad = (60 - h % 60) % 60, (108 - w % 108) % 108
    padded, orig = pad_to_multiple(frames, (60, 108))
    assert orig == (h, w)
    assert padded.shape[2] % 60 == 0 and padded.shape[3] % 108 == 0
    # symmetric padding at the bottom / right (beyond the frame size it keeps reflecting)
    want = np.pad(frames, ((0, 0), (0, 0), (0, h_pad), (0, w_pad), (0, 0)), mode="symmetric")
    np.testing.assert_array_equal(padded, want)
    if h_pad <= h and w_pad <= w:  # the range where the official recipe works
        np.testing.assert_array_equal(padded, _official_pad(frames, h_pad, w_pad))
    np.testing.assert_array_equal(crop(padded, orig), frames)
    # jax arrays and unbatched clips too
    padded_j, _ = pad_to_multiple(jnp.asarray(frames[0]), (60, 108))
    np.testing.assert_array_equal(np.asarray(padded_j), padded[0])


def test_pad_and_crop_reject_bad_input():
    with pytest.raises(ValueError, match="H, W, C"):
        pad_to_multiple(np.zeros((5, 5)), (60, 108))
    with pytest.raises(ValueError, match="smaller than"):
        crop(np.zeros((1, 60, 108, 3)), (61, 108))
