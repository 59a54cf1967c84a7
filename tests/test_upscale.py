"""The super-resolution command and the official crop protocol (ecformer_jax.inference.vsr), end to end on
the real tennis clip (downscaled LR frames) with weight-rule weights of a small VSR-Transformer saved as
an official-style .pth, and as a converted checkpoint folder."""
from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ecformer_jax import convert, models
from ecformer_jax.convert.weight_rule import state_dict_from_manifest
from ecformer_jax.data import video_io
from ecformer_jax.inference.common import side_by_side_path
from ecformer_jax.inference.vsr import CropPlan, crop_plan, crop_spans, window_indices
from ecformer_jax.upscale import main

LR_SIZE = (112, 64)  # (W, H): 3 crop columns ([0, 64), [32, 96), [48, 112)) and one crop row (used twice)
N_FRAMES = 6


# --- protocol pieces ---------------------------------------------------------------------------------
def test_window_indices_reflection_circle():
    assert window_indices(0, 5, 10) == [4, 3, 0, 1, 2]  # the spec's example
    assert window_indices(1, 5, 10) == [4, 0, 1, 2, 3]
    assert window_indices(8, 5, 10) == [6, 7, 8, 9, 5]
    assert window_indices(5, 5, 10) == [3, 4, 5, 6, 7]
    assert window_indices(9, 5, 10) == [7, 8, 9, 6, 5]
    assert window_indices(0, 7, 7) == [6, 5, 4, 0, 1, 2, 3]
    assert window_indices(5, 5, 6) == [3, 4, 5, 2, 1]
    # clips shorter than the window stay inside the clip
    for n in (1, 2, 3):
        for i in range(n):
            idx = window_indices(i, 7, n)
            assert len(idx) == 7 and idx[3] == i and all(0 <= k < n for k in idx)
    with pytest.raises(ValueError, match="outside"):
        window_indices(3, 5, 3)


def test_crop_spans_official_margins():
    def table(size, overlap=32):
        return [(s.lr_start, s.dst_start, s.dst_end, s.src_start, s.src_end) for s in crop_spans(size, 64, overlap)]

    # H = 64: I = 2 crops, both the whole frame; the first gives rows [0, 192), the last [64, 256)
    assert table(64) == [(0, 0, 192, 0, 192), (0, 64, 256, 64, 256)]
    assert table(112) == [(0, 0, 192, 0, 192), (32, 192, 320, 64, 192), (48, 256, 448, 64, 256)]
    assert table(100) == [(0, 0, 192, 0, 192), (32, 192, 320, 64, 192), (36, 208, 400, 64, 256)]
    # overlap 16 takes the other branch of hr_crop_index for a remainder > 16 (base 48, H = 100: 4 mod 48)
    assert table(120, 16) == [(0, 0, 224, 0, 224), (48, 224, 416, 32, 224), (56, 384, 480, 160, 256)]
    for overlap in (32, 16):
        for size in range(64, 300):
            spans = crop_spans(size, 64, overlap)
            covered = np.zeros(4 * size, bool)
            for s in spans:
                assert 0 <= s.lr_start <= size - 64
                assert s.dst_start - s.src_start == 4 * s.lr_start  # pasted where the crop really is
                assert s.dst_end - s.dst_start == s.src_end - s.src_start and 0 <= s.src_start < s.src_end <= 256
                covered[s.dst_start:s.dst_end] = True
            assert covered.all(), (size, overlap)
    with pytest.raises(ValueError, match="too small"):
        crop_plan(63, 100)


def test_crop_plan_pastes_a_crop_wise_upscale_back_exactly():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (100, 150, 3), np.uint8)
    plan = crop_plan(100, 150)
    assert isinstance(plan, CropPlan) and len(plan.origins) == 3 * 4
    x4 = lambda a: np.repeat(np.repeat(a, 4, 0), 4, 1)  # noqa: E731
    crops = {(y, x): x4(frame[y:y + 64, x:x + 64]) for y, x in plan.origins}
    np.testing.assert_array_equal(plan.paste(crops, 100, 150), x4(frame))


# --- end to end ----------------------------------------------------------------------------------------
def _tiny(name: str) -> bool:
    """Keys of the official REDS model that a model with depth 1 and one residual block per stack keeps."""
    m = re.match(r"^(feature_extraction|reconstruction)\.(\d+)\.", name)
    if m:
        return m.group(2) == "0"
    m = re.match(r"^transformer\.layers\.(\d+)\.", name)
    if m:
        block = re.search(r"resblocks\.main\.2\.(\d+)\.", name)
        return m.group(1) == "0" and (block is None or block.group(1) == "0")
    return True


TINY_OPTIONS = dict(depth=1, num_extract_blocks=1, num_reconstruct_blocks=1, num_ffn_blocks=1)


@pytest.fixture(scope="module")
def tiny_state_dict(parity_dir):
    """The official state_dict layout of a small REDS-style model, values from the weight rule."""
    npz = np.load(parity_dir / "vsr_transformer.npz")
    meta = json.loads(bytes(npz["meta_json"]).decode())
    manifest = [e for e in json.loads(bytes(npz["manifest_json"]).decode()) if _tiny(e[0])]
    stored = {k[len("state/"):]: npz[k] for k in npz.files if k.startswith("state/")}
    return state_dict_from_manifest(manifest, meta["weight_salt"], stored)


def _save_pth(path, state_dict):
    """As the official training script saves: {'params': ...}; here also with DataParallel prefixes."""
    torch.save({"params": {f"module.{k}": torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}}, path)
    return path


@pytest.fixture(scope="module")
def lr_clip(tennis_dir, tmp_path_factory):
    """The first frames of the tennis clip, bicubic-downscaled to 112x64, as a PNG folder."""
    folder = tmp_path_factory.mktemp("lr")
    files = sorted((tennis_dir / "frames").glob("*.png"))[:N_FRAMES]
    frames = [np.asarray(Image.open(f).convert("RGB").resize(LR_SIZE, Image.BICUBIC)) for f in files]
    video_io.write_frames(folder, np.stack(frames))
    return folder, np.stack(frames)


def _run(capsys, *args):
    rc = main([*map(str, args), "--quiet"])
    return rc, capsys.readouterr()


@pytest.mark.slow
def test_upscale_pth_follows_the_crop_protocol(tiny_state_dict, lr_clip, tmp_path, capsys):
    folder, lr = lr_clip
    pth = _save_pth(tmp_path / "net_g_tiny.pth", tiny_state_dict)
    out = tmp_path / "sr"
    rc, cap = _run(capsys, "--checkpoint", pth, "--video", folder, "--output", out, "--batch-size", 7)
    assert rc == 0, cap.err
    assert "6 frames 112x64 -> 448x256" in cap.out
    sr = video_io.read_frames(out)
    assert sr.shape == (N_FRAMES, 256, 448, 3)
    assert 20 < sr.std() and 0.5 < np.mean((sr > 0) & (sr < 255))  # not saturated, not constant
    sbs = video_io.read_frames(side_by_side_path(out))
    assert side_by_side_path(out).name == "sr_side_by_side.mp4"
    assert sbs.shape == (N_FRAMES, 256, 2 * 448 + 4, 3)
    bicubic = np.asarray(Image.fromarray(lr[2]).resize((448, 256), Image.BICUBIC), np.float32)
    left, right = sbs[2, :, :448].astype(np.float32), sbs[2, :, 452:].astype(np.float32)
    assert np.abs(left - bicubic).mean() < 8  # lossy mp4
    # the noisy result of random weights suffers more from the compression; it is still the result
    assert np.abs(right - sr[2]).mean() < 0.5 * np.abs(right - bicubic).mean()

    # the same network applied directly to single crops of the reflection-circle windows
    variables = convert.from_torch("vsr_transformer", tiny_state_dict, **TINY_OPTIONS)
    model = models.build("vsr_transformer", **TINY_OPTIONS)
    run = jax.jit(lambda v, x: model.apply(v, x, output_frames=(2,))[0, 0])

    def centre(frame, x0):
        crop = lr[window_indices(frame, 5, N_FRAMES)][:, :, x0:x0 + 64]
        sr_crop = run(variables, jnp.asarray(crop[None], jnp.float32) / 255.0)
        return np.asarray(jnp.round(jnp.clip(sr_crop, 0, 1) * 255)).astype(np.int16)

    for frame, x0, dst, src in ((0, 0, slice(0, 192), slice(0, 192)), (3, 32, slice(192, 256), slice(64, 128)),
                                (5, 48, slice(256, 448), slice(64, 256))):
        diff = np.abs(sr[frame][:, dst].astype(np.int16) - centre(frame, x0)[:, src])
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99, (frame, diff.max(), (diff == 0).mean())


@pytest.mark.slow
def test_upscale_converted_checkpoint_mp4_bfloat16(tiny_state_dict, lr_clip, tmp_path, capsys):
    """With conv_last zeroed the network returns its bilinear x4 base, so the pasted crops must rebuild
    the bilinear upsampling of the whole frame (checks the crop geometry on every pixel). The mp4 input
    has 3 frames only, fewer than the window (indices reflected into the clip)."""
    _, lr = lr_clip
    video = video_io.write_video(tmp_path / "lr.mp4", lr[:3], fps=12)  # shorter than the 5-frame window
    decoded = video_io.read_frames(video)
    sd = dict(tiny_state_dict)
    sd["conv_last.weight"] = np.zeros_like(sd["conv_last.weight"])
    sd["conv_last.bias"] = np.zeros_like(sd["conv_last.bias"])
    ckpt = convert.save(tmp_path / "converted", "vsr_transformer",
                        convert.from_torch("vsr_transformer", sd, **TINY_OPTIONS), TINY_OPTIONS)
    out = tmp_path / "sr"
    rc, cap = _run(capsys, "--checkpoint", ckpt, "--video", video, "--output", out, "--dtype", "bfloat16",
                   "--no-side-by-side")
    assert rc == 0, cap.err
    assert not side_by_side_path(out).exists()
    sr = video_io.read_frames(out).astype(np.int16)
    ref = F.interpolate(torch.from_numpy(decoded).permute(0, 3, 1, 2).float() / 255.0, scale_factor=4,
                        mode="bilinear", align_corners=False)
    ref = np.round(ref.clamp(0, 1).numpy() * 255).astype(np.int16).transpose(0, 2, 3, 1)
    assert np.abs(sr - ref).max() <= 1
    # --overwrite replaces the frames; a second run without it is refused before any work
    rc, cap = _run(capsys, "--checkpoint", ckpt, "--video", video, "--output", out)
    assert rc == 2 and "exists; pass --overwrite" in cap.err


@pytest.mark.slow
def test_upscale_training_workdir(tiny_state_dict, lr_clip, tmp_path, capsys):
    """A training workdir: its latest step, the model and its options from config.json."""
    from tests.test_convert import fake_workdir

    _, lr = lr_clip
    variables = convert.from_torch("vsr_transformer", tiny_state_dict, **TINY_OPTIONS)
    older = jax.tree.map(lambda a: a * 0.5, variables)
    run = fake_workdir(tmp_path / "run", "vsr_transformer", TINY_OPTIONS, {1: older, 5: variables})
    loaded = convert.resolve(run, expect="super_resolution")
    assert loaded.model == models.build("vsr_transformer", **TINY_OPTIONS)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, loaded.variables, variables)))
    video = video_io.write_frames(tmp_path / "lr", lr[:2])
    # --batch-size 7 as in the .pth test: the same program, so the run's compilation cache already holds it
    rc, cap = _run(capsys, "--checkpoint", run, "--video", video, "--output", tmp_path / "sr", "--no-side-by-side",
                   "--batch-size", 7)
    assert rc == 0, cap.err
    assert "2 frames 112x64 -> 448x256" in cap.out and video_io.read_frames(tmp_path / "sr").shape == (2, 256, 448, 3)


def test_upscale_errors(tiny_state_dict, lr_clip, tmp_path, capsys):
    folder, lr = lr_clip
    pth = _save_pth(tmp_path / "tiny.pth", tiny_state_dict)
    out = tmp_path / "out.mp4"

    def error(*args, ckpt=pth, video=folder, output=out):
        rc, cap = _run(capsys, "--checkpoint", ckpt, "--video", video, "--output", output, *args)
        assert rc == 2, cap
        assert not out.exists()
        return cap.err

    assert "video not found" in error(video=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert "no image files" in error(video=tmp_path / "empty")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    assert "cannot read video file" in error(video=tmp_path / "broken.mp4")
    small = video_io.write_frames(tmp_path / "small", lr[:, :48])
    assert "too small" in error(video=small)
    assert "is the input video itself" in error(output=folder)
    # checkpoint / model mismatches name the keys
    partial = _save_pth(tmp_path / "partial.pth", {k: v for k, v in tiny_state_dict.items() if k != "conv_hr.weight"})
    assert "missing keys (1): conv_hr.weight" in error(ckpt=partial)
    msg = error("--model", "vsr_transformer_vimeo")
    assert "pos_embedding.penc.inv_freq" in msg and "num_frames=7" in msg
    assert "'sttn' is not a super-resolution model (its kind is 'inpainting')" in error("--model", "sttn")
    assert "unknown model" in error("--model", "nope")
    assert "not a converted checkpoint" in error(ckpt=tmp_path / "empty")
    assert "checkpoint not found" in error(ckpt=tmp_path / "none.pth")
    out.write_bytes(b"")
    rc, cap = _run(capsys, "--checkpoint", pth, "--video", folder, "--output", out)
    assert rc == 2 and "exists; pass --overwrite" in cap.err
