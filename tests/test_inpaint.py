"""The inpainting command and the long-video protocol (ecformer_jax.inference.protocol) on synthetic clips
and the real tennis clip, with small random-init generators (the official-weights end-to-end check is
tests/test_protocol_fixture.py)."""
from __future__ import annotations

import gc

import jax
import numpy as np
import pytest
import torch

from ecformer_jax import convert, models
from ecformer_jax.convert.weight_rule import state_dict_from_fixture
from ecformer_jax.data import video_io
from ecformer_jax.data.masks import dilate
from ecformer_jax.inference import protocol
from ecformer_jax.inference.common import parse_size
from ecformer_jax.inference.protocol import Blender, Geometry, Inpainter, SizeRule, plan_geometry, schedule
from ecformer_jax.inpaint import main

TINY_FUSEFORMER = {"num_blocks": 1, "resize_embeddings": True}
# 7 frames with --ref-stride 3: windows [0, 6) + ref 6 and [0, 7), both 7 frames: one compile per model
N_CLIP, REF_STRIDE = 7, 3
TINY_STTN = {"channels": 32, "num_blocks": 1, "patch_sizes": ((2, 3), (1, 1))}


# --- the protocol's pieces --------------------------------------------------------------------------------
def test_schedule_is_the_official_loop():
    windows = schedule(25, subvideo_length=0)  # official: references from the whole video
    assert [w.center for w in windows] == [0, 5, 10, 15, 20]
    assert windows[0].neighbors == (0, 1, 2, 3, 4, 5) and windows[0].refs == (10, 20)
    assert windows[1].neighbors == tuple(range(0, 11)) and windows[1].refs == (20,)
    assert windows[2].neighbors == tuple(range(5, 16)) and windows[2].refs == (0, 20)
    assert windows[4].neighbors == tuple(range(15, 25)) and windows[4].refs == (0, 10)
    assert windows[2].frames == windows[2].neighbors + (0, 20) and windows[2].num_local == 11
    # the default subvideo (80 frames) changes nothing for a video that fits in it
    assert schedule(25) == windows == schedule(25, subvideo_length=None)
    # every frame is a neighbour of some window; multiples of 5 (but 0 and the tail) are visited 3 times
    visits = np.zeros(25, int)
    for w in windows:
        visits[list(w.neighbors)] += 1
    assert visits.min() >= 1 and visits[0] == 2 and visits[5] == visits[10] == 3 and visits[24] == 1
    assert protocol.last_window(windows, 25)[:6] == [1] * 5 + [2]
    with pytest.raises(ValueError, match="never visit"):
        protocol.last_window(windows[:2], 25)
    with pytest.raises(ValueError, match="neighbor_stride must be a positive integer"):
        schedule(10, neighbor_stride=0)
    with pytest.raises(ValueError, match="no frames"):
        schedule(0)


def test_subvideo_bounds_the_window_and_whole_video_refs_do_not():
    for n in (100, 400, 1000):
        windows = schedule(n)
        assert max(len(w.frames) for w in windows) == 18  # 11 neighbours + up to 8 refs, minus overlaps
        for w in windows:
            lo, hi = protocol.reference_range(w.center, n, 80)
            assert hi - lo == 80 and 0 <= lo and hi <= n and lo <= w.center < hi
            assert all(lo <= r < hi and r % 10 == 0 and r not in w.neighbors for r in w.refs)
    whole = [max(len(w.frames) for w in schedule(n, subvideo_length=0)) for n in (100, 400)]
    assert whole == [20, 50]  # the official scripts' window grows with the video


def test_blender_weights_like_the_scripts():
    b = Blender()
    b.add(0, np.full((1, 1, 3), 200, np.uint8))
    b.add(0, np.full((1, 1, 3), 100, np.uint8))
    b.add(0, np.full((1, 1, 3), 11, np.uint8))
    assert b.pop(0)[0, 0, 0] == 80  # 0.25 * 200 + 0.25 * 100 + 0.5 * 11 = 80.5, truncated
    assert len(b) == 0


def test_size_rules_of_the_official_models():
    official = {name: models.get(name).size_rule(models.build(name))
                for name in ("sttn", "fuseformer", "dstt", "e2fgvi", "e2fgvi_hq")}
    for name in ("sttn", "fuseformer", "dstt", "e2fgvi"):
        assert official[name].fixed == (240, 432), name
        g = plan_geometry(official[name], (720, 1280))
        assert g.size == g.padded == (240, 432) and g.resized and not g.pad
    assert official["e2fgvi_hq"] == SizeRule(None, (60, 108))
    g = plan_geometry(official["e2fgvi_hq"], (720, 1280))
    assert g == Geometry((720, 1280), (720, 1280), (720, 1296)) and g.pad and not g.resized
    assert plan_geometry(official["e2fgvi_hq"], (720, 1280), resize_ratio=0.5).padded == (360, 648)
    assert plan_geometry(official["sttn"], (720, 1280), resize=(480, 864)).size == (480, 864)
    with pytest.raises(ValueError, match="fixed size 432x240"):
        plan_geometry(official["fuseformer"], (720, 1280), resize_ratio=0.5)
    # the size-free variants, and generators that declare FuseFormer's protocol, keep the video's size
    assert models.get("ecformer").protocol is models.get("fuseformer").protocol
    free = models.fuseformer.fuseformer_size(models.build("fuseformer", resize_embeddings=True))
    assert plan_geometry(free, (30, 42)).padded == (32, 44)
    assert models.dstt.dstt_size(models.build("dstt", resize_embeddings=True)).multiple == (24, 24)
    for name in models.names("inpainting"):
        assert models.get(name).size_rule(models.build(name)).multiple[0] % 4 == 0
    assert parse_size("432x240") == (240, 432)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_size("432")


def test_e2fgvi_needs_two_frames():
    inpainter = Inpainter("e2fgvi_hq", models.build("e2fgvi_hq"), {})
    with pytest.raises(ValueError, match="at least 2 frames"):
        inpainter.plan(1, (240, 432))
    assert inpainter.plan(2, (240, 432))[0][0].neighbors == (0, 1)


# --- synthetic clips and small models -----------------------------------------------------------------------
def synthetic_clip(n, height, width, seed=0):
    """Smooth moving colours and a moving square hole (bool masks)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.stack([np.stack([(yy * 5 + t * 3) % 256, (xx * 4 + t * 7) % 256, (yy + xx + 11 * t) % 256], -1)
                       for t in range(n)]).astype(np.uint8)
    frames = np.clip(frames.astype(int) + rng.integers(-3, 4, frames.shape), 0, 255).astype(np.uint8)
    masks = np.zeros((n, height, width), bool)
    for t in range(n):
        y, x = 4 + t % max(1, height - 14), 3 + (2 * t) % max(1, width - 14)
        masks[t, y:y + 7, x:x + 9] = True
    return frames, masks


def random_variables(model, example, seed=0):
    """Random variables for `model` without running its init (fast): kernels N(0, 1/fan_in), scales near 1,
    everything else small."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *example))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        x = rng.standard_normal(leaf.shape)
        name = str(path[-1])
        if "kernel" in name:
            x = x / np.sqrt(max(1, int(np.prod(leaf.shape[:-1]))))
        elif "scale" in name:
            x = 1 + 0.1 * x
        else:
            x = 0.1 * x
        return x.astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def tiny_fuseformer():
    model = models.build("fuseformer", **TINY_FUSEFORMER)
    return model, random_variables(model, (np.zeros((1, 1, 32, 44, 3), np.float32),))


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_fuseformer, tmp_path_factory):
    return convert.save(tmp_path_factory.mktemp("ckpt") / "tiny_fuseformer", "fuseformer", tiny_fuseformer[1],
                        TINY_FUSEFORMER)


@pytest.fixture(scope="module")
def clip_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    frames, masks = synthetic_clip(N_CLIP, 30, 42)
    video_io.write_frames(root / "frames", frames)
    video_io.write_frames(root / "masks", np.repeat(masks[..., None].astype(np.uint8) * 255, 3, -1))
    return root / "frames", root / "masks", frames, masks


def official_loop(model, variables, frames, masks, stride=5, ref_stride=10, multiple=(4, 4)):
    """The scripts' loop written out plainly (numpy + a plain jitted apply) for a size-free model."""
    from ecformer_jax.layers.padding import crop, pad_to_multiple

    apply = jax.jit(model.apply)
    n = len(frames)
    m = dilate(masks, 4).astype(np.uint8)[..., None]
    imgs = frames.astype(np.float32) / 255.0 * 2 - 1
    comp = [None] * n
    for f in range(0, n, stride):
        nb = list(range(max(0, f - stride), min(n, f + stride + 1)))
        refs = [i for i in range(0, n, ref_stride) if i not in nb]
        masked, size = pad_to_multiple(imgs[nb + refs] * (1 - m[nb + refs]), multiple)
        pred = np.asarray(crop(apply(variables, masked[None])[0], size))
        pred = (pred + 1) / 2 * 255
        for j, idx in enumerate(nb):
            img = pred[j].astype(np.uint8) * m[idx] + frames[idx] * (1 - m[idx])
            comp[idx] = img if comp[idx] is None else comp[idx].astype(np.float32) * 0.5 + img.astype(np.float32) * 0.5
    return np.stack([c.astype(np.uint8) for c in comp])


def test_inpainter_follows_the_official_loop(tiny_fuseformer, clip_dirs):
    model, variables = tiny_fuseformer
    _, _, frames, masks = clip_dirs
    seen = []
    result = Inpainter("fuseformer", model, variables, ref_stride=REF_STRIDE)(
        frames, masks, on_window=lambda k, w: seen.append(w))
    assert result.frames.shape == frames.shape and result.frames.dtype == np.uint8
    assert seen == schedule(N_CLIP, ref_stride=REF_STRIDE) and seen[0].refs == (6,)
    assert sorted({i for w in seen for i in w.neighbors}) == list(range(N_CLIP))  # every frame visited
    assert result.geometry.padded == (32, 44) and result.stats["compiled_shapes"] == 1
    np.testing.assert_array_equal(result.masks, dilate(masks, 4))
    known = ~result.masks
    np.testing.assert_array_equal(result.frames[known], frames[known])  # known pixels unchanged
    assert (result.frames[result.masks] != frames[result.masks]).mean() > 0.5  # the holes were filled
    ref = official_loop(model, variables, frames, masks, ref_stride=REF_STRIDE)
    diff = np.abs(result.frames.astype(int) - ref)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999, (diff.max(), (diff == 0).mean())
    # a frame range runs only the windows it needs (frame 6: the second window, [0-6]), with the whole run's values
    inpainter = Inpainter("fuseformer", model, variables, ref_stride=REF_STRIDE)
    for lo, hi, centres in ((6, 7, [5]), (2, 4, [0, 5])):
        part = inpainter(frames, masks, frame_range=(lo, hi))
        assert [w.center for w in part.windows] == centres and part.frames.shape == (hi - lo, *frames.shape[1:])
        np.testing.assert_array_equal(part.frames, result.frames[lo:hi])
        np.testing.assert_array_equal(part.masks, result.masks[lo:hi])


def _run(capsys, *args):
    rc = main([*map(str, args), "--quiet"])
    return rc, capsys.readouterr()


def test_cli_converted_checkpoint_frame_folder(tiny_checkpoint, clip_dirs, tmp_path, capsys):
    frames_dir, masks_dir, frames, masks = clip_dirs
    out = tmp_path / "result"
    rc, cap = _run(capsys, "--checkpoint", tiny_checkpoint, "--video", frames_dir, "--mask", masks_dir,
                   "--output", out, "--ref-stride", REF_STRIDE)
    assert rc == 0, cap.err
    assert "7 frames 42x30 inpainted" in cap.out and "1 window shape(s)" in cap.out and "frames/s" in cap.out
    assert "processed at 42x30 padded to 44x32" in cap.err
    result = video_io.read_frames(out)
    assert result.shape == frames.shape
    known = ~dilate(masks, 4)
    np.testing.assert_array_equal(result[known], frames[known])
    sbs = video_io.read_frames(tmp_path / "result_side_by_side.mp4")
    assert sbs.shape == (N_CLIP, 30, 2 * 42 + 4, 3)
    hole = dilate(masks, 4)[5]
    assert sbs[5, :, :42][hole][:, 1].mean() > sbs[5, :, :42][hole][:, 0].mean()  # the green overlay
    # an existing output is never replaced without --overwrite
    rc, cap = _run(capsys, "--checkpoint", tiny_checkpoint, "--video", frames_dir, "--mask", masks_dir,
                   "--output", out)
    assert rc == 2 and "exists; pass --overwrite" in cap.err
    rc, cap = _run(capsys, "--checkpoint", tiny_checkpoint, "--video", frames_dir, "--mask", masks_dir,
                   "--output", out, "--overwrite", "--no-side-by-side", "--ref-stride", REF_STRIDE)
    assert rc == 0, cap.err
    np.testing.assert_array_equal(video_io.read_frames(out), result)  # same code, same result
    # --frames: only that range is written (numbered from 00000), with the same values
    rc, cap = _run(capsys, "--checkpoint", tiny_checkpoint, "--video", frames_dir, "--mask", masks_dir,
                   "--output", tmp_path / "part", "--no-side-by-side", "--ref-stride", REF_STRIDE, "--frames", "5:")
    assert rc == 0 and "2 frames 42x30" in cap.out and "(frames 5..6 of them)" in cap.err, cap.err
    np.testing.assert_array_equal(video_io.read_frames(tmp_path / "part"), result[5:])
    for bad, why in (("5:99", "not a non-empty range of the video's 7 frames"), ("a-b", "must be START:END")):
        rc, cap = _run(capsys, "--checkpoint", tiny_checkpoint, "--video", frames_dir, "--mask", masks_dir,
                       "--output", tmp_path / "bad", "--frames", bad)
        assert rc == 2 and why in cap.err and "Traceback" not in cap.err, cap.err


def test_cli_training_workdir(tiny_fuseformer, tiny_checkpoint, clip_dirs, tmp_path, capsys):
    """--checkpoint takes a training workdir too (its latest step; model and options from config.json), with
    the same result as the converted folder of the same parameters."""
    from tests.test_convert import fake_workdir

    frames_dir, masks_dir, _, _ = clip_dirs
    _, variables = tiny_fuseformer
    other = jax.tree.map(lambda a: a * 0.5, variables)
    run = fake_workdir(tmp_path / "run", "fuseformer", dict(TINY_FUSEFORMER), {2: other, 4: variables})
    outs = {}
    for what, ckpt in (("workdir", run), ("converted", tiny_checkpoint)):
        outs[what] = tmp_path / what
        rc, cap = _run(capsys, "--checkpoint", ckpt, "--video", frames_dir, "--mask", masks_dir, "--output",
                       outs[what], "--ref-stride", REF_STRIDE, "--no-side-by-side")
        assert rc == 0, cap.err
    np.testing.assert_array_equal(video_io.read_frames(outs["workdir"]), video_io.read_frames(outs["converted"]))
    rc, cap = _run(capsys, "--checkpoint", run, "--model", "sttn", "--video", frames_dir, "--mask", masks_dir,
                   "--output", tmp_path / "x")
    assert rc == 2 and "holds a trained 'fuseformer' checkpoint, not 'sttn'" in cap.err


@pytest.mark.slow
def test_cli_mp4_video_single_mask_bfloat16_options(tiny_checkpoint, clip_dirs, tmp_path, capsys):
    _, _, frames, _ = clip_dirs
    video = video_io.write_video(tmp_path / "clip.mp4", frames, fps=12)
    decoded = video_io.read_frames(video)
    mask = np.zeros((30, 42), np.uint8)
    mask[10:20, 15:30] = 255
    video_io.write_frames(tmp_path / "m", mask[None])
    out = tmp_path / "out.mp4"
    rc, cap = _run(capsys, "--checkpoint", tiny_checkpoint, "--video", video, "--mask", tmp_path / "m" / "00000.png",
                   "--output", out, "--dtype", "bfloat16", "--neighbor-length", "20", "--mask-dilation", "0",
                   "--no-side-by-side")
    assert rc == 0, cap.err
    assert "bfloat16" in cap.err and "1 window of up to 7 frames" in cap.err and "neighbour stride 10" in cap.err
    assert "mask dilation 0" in cap.err
    result = video_io.read_frames(out).astype(int)
    assert result.shape == frames.shape
    hole = mask > 0
    # lossy mp4 twice around the hole; inside the hole the (random) model's output differs strongly
    assert np.abs(result[:, ~hole] - decoded[:, ~hole]).mean() < 3
    assert np.abs(result[:, hole] - decoded[:, hole]).mean() > 10


def test_cli_fixed_size_model_resizes_and_back_on_tennis(tennis_dir, tmp_path, capsys):
    """A small STTN (fixed-size rule, masks as input) on the real clip: processed at --resize 24x16 and
    resized back; the masks also come as an mp4 (binarised at > 127)."""
    n = N_CLIP
    files = sorted((tennis_dir / "frames").glob("*.png"))[:n]
    frames = np.stack([video_io.read_image(f) for f in files])
    masks = video_io.read_masks(tennis_dir / "masks", None)[:n]
    video_io.write_frames(tmp_path / "frames", frames)
    mask_video = video_io.write_video(tmp_path / "masks.mp4", np.repeat(masks[..., None].astype(np.uint8) * 255, 3, -1))
    model = models.build("sttn", **TINY_STTN)
    ckpt = convert.save(tmp_path / "sttn", "sttn", random_variables(model, model_example("sttn", model)), TINY_STTN)
    out = tmp_path / "out"
    rc, cap = _run(capsys, "--checkpoint", ckpt, "--video", tmp_path / "frames", "--mask", mask_video,
                   "--output", out, "--resize", "24x16", "--no-side-by-side", "--ref-stride", REF_STRIDE)
    assert rc == 0, cap.err
    assert "processed at 24x16" in cap.err and "sttn protocol" in cap.err
    result = video_io.read_frames(out)
    assert result.shape == (n, 240, 432, 3)
    from ecformer_jax.inference.inpaint import read_masks

    used = read_masks(mask_video, n, (240, 432))
    assert abs(used.mean() - masks.mean()) < 0.01  # the mp4 round trip keeps the masks
    replaced = np.any(result != frames, axis=-1)
    # pixels outside the dilated (and back-resized) holes are the input's; the holes were replaced
    assert replaced.any()
    assert not replaced[~dilate(used, 4) & ~_upsampled_holes(used, (16, 24))].any()


def model_example(name, model):
    return models.get(name).example_inputs(model)


def _upsampled_holes(masks, size):
    small = dilate(protocol.resize_masks(masks, size), 4)
    return protocol.resize_masks(small, masks.shape[1:3])


@pytest.mark.slow
def test_window_memory_does_not_grow_with_length(tiny_fuseformer):
    """100 vs 200 frames: the same window shapes go to the device and the live device bytes peak at the
    same value; only the host arrays grow."""
    model, variables = tiny_fuseformer
    inpainter = Inpainter("fuseformer", model, variables, track_memory=True)
    stats = {}
    for n in (100, 200):
        frames, masks = synthetic_clip(n, 16, 24, seed=n)
        gc.collect()
        result = inpainter(frames, masks)
        stats[n] = result.stats
        known = ~result.masks
        np.testing.assert_array_equal(result.frames[known], frames[known])
        del result
    a, b = stats[100], stats[200]
    assert a["max_window_frames"] == b["max_window_frames"] == 18
    assert set(a["window_shapes"]) == set(b["window_shapes"])  # no new compiles for the longer video
    assert a["window_bytes"] == b["window_bytes"] < 100_000
    assert b["peak_live_bytes"] <= a["peak_live_bytes"] + 4096, (a["peak_live_bytes"], b["peak_live_bytes"])
    print(f"window bytes {a['window_bytes']}, peak live device bytes {a['peak_live_bytes']} (100 frames) vs "
          f"{b['peak_live_bytes']} (200 frames)")


# --- errors ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuseformer_pth(parity_dir, tmp_path_factory):
    sd = state_dict_from_fixture(np.load(parity_dir / "fuseformer.npz"))
    root = tmp_path_factory.mktemp("pth")
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, root / "fuseformer.pth")
    dropped = sorted(sd)[0]
    torch.save({"netG": {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items() if k != dropped}},
               root / "partial.pth")
    return root / "fuseformer.pth", root / "partial.pth", dropped


def test_errors(tiny_checkpoint, clip_dirs, fuseformer_pth, tmp_path, capsys):
    frames_dir, masks_dir, frames, masks = clip_dirs
    pth, partial, dropped = fuseformer_pth
    out = tmp_path / "out.mp4"

    def error(*args, ckpt=tiny_checkpoint, video=frames_dir, mask=masks_dir, output=out):
        rc, cap = _run(capsys, "--checkpoint", ckpt, "--video", video, "--mask", mask, "--output", output, *args)
        assert rc == 2, cap
        assert not out.exists()
        return cap.err

    # masks: count and size
    video_io.write_frames(tmp_path / "few", np.zeros((6, 30, 42, 3), np.uint8))
    assert "has 6 masks but the video has 7 frames" in error(mask=tmp_path / "few")
    video_io.write_frames(tmp_path / "big", np.zeros((N_CLIP, 32, 42, 3), np.uint8))
    assert "are 42x32 (WxH) but the video frames are 42x30" in error(mask=tmp_path / "big")
    assert "mask not found" in error(mask=tmp_path / "nope")
    # empty / unreadable / missing input
    (tmp_path / "empty").mkdir()
    assert "no image files" in error(video=tmp_path / "empty")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    assert "cannot read video file" in error(video=tmp_path / "broken.mp4")
    assert "video not found" in error(video=tmp_path / "missing")
    # models and checkpoints
    assert "unknown model 'nope'" in error("--model", "nope", ckpt=pth)
    assert "'vsr_transformer' is not an inpainting model" in error("--model", "vsr_transformer", ckpt=pth)
    assert "--model is required with a .pth checkpoint" in error(ckpt=pth)
    assert f"missing keys (1): {dropped}" in error("--model", "fuseformer", ckpt=partial)
    msg = error("--model", "dstt", ckpt=pth)
    assert "checkpoint does not match model 'dstt'" in msg and "missing keys" in msg and "patch2vec.weight" in msg
    assert "holds a converted 'fuseformer' checkpoint, not 'sttn'" in error("--model", "sttn")
    assert "not a converted checkpoint" in error(ckpt=tmp_path / "empty")
    assert "checkpoint not found" in error(ckpt=tmp_path / "none.pth")
    # options and outputs
    assert "--resize expects WIDTHxHEIGHT" in error("--resize", "big")
    assert "--neighbor-length must be >= 2" in error("--neighbor-length", "1")
    assert "is the input video itself" in error(output=frames_dir)
    assert "is the input mask itself" in error(output=masks_dir)
    out.write_bytes(b"")
    rc, cap = _run(capsys, "--checkpoint", tiny_checkpoint, "--video", frames_dir, "--mask", masks_dir,
                   "--output", out)
    assert rc == 2 and "exists; pass --overwrite" in cap.err
    assert out.read_bytes() == b""
