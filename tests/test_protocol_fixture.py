"""The inpaint command with default options reproduces what the official E2FGVI test.py writes for
e2fgvi_hq on the first 25 tennis frames (../shared/parity/protocol_e2fgvi_hq_tennis25.npz): the
e2fgvi_hq.npz weights (weight rule) saved as a bare .pth, passed as --checkpoint, converted on the fly.

The whole video is five windows of the full model at 240x432 (8 to 13 frames each, four shapes to compile,
about two minutes on two CPU cores). Every frame up to 20 lies in two windows (blended 0.5 / 0.5); frames 21-24
only in the last one, centred on frame 20 at the video's end (10 local frames and the references the whole video
gives it). The test checks those 4 frames (--frames 21:25): one window, one compile. That a frame range equals
the whole run, blending included, is tested on a small model in test_inpaint.py."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from ecformer_jax.convert.weight_rule import state_dict_from_fixture
from ecformer_jax.data import video_io
from ecformer_jax.inpaint import main

pytestmark = pytest.mark.optimized  # real-size frames through whole models: run-bound

N = 25  # frames of the video
FIRST = 21  # frames 21..24 are inpainted and compared


@pytest.mark.slow
def test_e2fgvi_hq_matches_official_test_py(parity_dir, tennis_dir, tmp_path, capsys):
    fixture = np.load(parity_dir / "protocol_e2fgvi_hq_tennis25.npz")
    delta = fixture["delta"].astype(np.int16)
    assert delta.shape == (N, 240, 432, 3)
    pth = tmp_path / "e2fgvi_hq.pth"
    state_dict = state_dict_from_fixture(np.load(parity_dir / "e2fgvi_hq.npz"))
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}, pth)  # bare state_dict
    for sub in ("frames", "masks"):
        (tmp_path / sub).mkdir()
        for f in sorted((tennis_dir / sub).glob("*.png"))[:N]:
            shutil.copy(f, tmp_path / sub / f.name)

    out = tmp_path / "result"
    rc = main(["--model", "e2fgvi_hq", "--checkpoint", str(pth), "--video", str(tmp_path / "frames"),
               "--mask", str(tmp_path / "masks"), "--output", str(out), "--no-side-by-side", "--quiet",
               "--frames", f"{FIRST}:{N}"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "1 windows" in cap.out and f"{N - FIRST} frames 432x240" in cap.out

    original = video_io.read_frames(tmp_path / "frames")[FIRST:].astype(np.int16)
    ours = video_io.read_frames(out).astype(np.int16)
    delta = delta[FIRST:]
    expected = original + delta
    assert ours.shape == expected.shape
    diff = np.abs(ours - expected)
    holes = np.any(delta != 0, axis=-1)  # where the official script changed something
    assert holes.mean() > 0.02  # the fixture does inpaint something
    # outside the dilated holes both keep the input exactly
    masks = video_io.read_masks(tmp_path / "masks", N)[FIRST:]
    from ecformer_jax.data.masks import dilate

    outside = ~dilate(masks, 4)
    assert not holes[outside].any()
    np.testing.assert_array_equal(ours[outside], original[outside])
    # inside: within two levels, almost every value exact (float rounding decides the rest)
    inside = ~outside
    exact = (diff[inside] == 0).mean()
    print(f"max |ours - official| = {diff.max()}, exact hole values: {exact:.5f}, "
          f"off by 1: {(diff[inside] == 1).mean():.5f}")
    assert diff.max() <= 2, diff.max()
    assert exact > 0.99, exact
