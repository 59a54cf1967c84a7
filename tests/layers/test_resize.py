import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ecformer_jax.layers.resize import resize_nearest, upsample_bilinear


@pytest.mark.parametrize("size,align", [((120, 216), True), ((31, 47), True), ((120, 216), False), ((23, 9), False)])
def test_bilinear_matches_torch(size, align):
    x = np.random.default_rng(1).standard_normal((2, 60, 108, 3)).astype(np.float32) * 50
    ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=align)
    ours = np.asarray(upsample_bilinear(x, size, align_corners=align))
    np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), atol=2e-5)


def test_bilinear_scale_factor_matches_torch():
    x = np.random.default_rng(2).standard_normal((1, 10, 14, 2)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), scale_factor=0.25, mode="bilinear",
                        align_corners=False, recompute_scale_factor=False)
    ours = np.asarray(upsample_bilinear(x, (2, 3), align_corners=False, scale_factor=0.25))
    np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), atol=1e-6)


def test_nearest_matches_torch():
    x = np.random.default_rng(3).standard_normal((1, 240, 432, 1)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), scale_factor=0.25)
    ours = np.asarray(resize_nearest(x, (60, 108), scale_factor=0.25))
    np.testing.assert_array_equal(ours, ref.permute(0, 2, 3, 1).numpy())
