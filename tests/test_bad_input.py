"""The commands (inpaint, upscale, evaluate, convert) under bad input: one line naming the file and the
problem, exit status 2, no traceback, no output left that looks complete; and unusual input that must work
(grayscale, RGBA, 16-bit, anti-aliased masks, odd sizes, one frame, upper-case extensions), inpainted for
real with one tiny model (docs/reliability.md has the table).

The commands' main(argv) run in-process (stderr captured); one subprocess per command family proves the exit
status end to end. The error cases stop before any model work: `no_model` makes loading a checkpoint fail
the test.
"""
from __future__ import annotations

import importlib
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ecformer_jax import convert, models
from ecformer_jax.convert.__main__ import main as convert_main
from ecformer_jax.data import video_io
from ecformer_jax.data.masks import dilate
from ecformer_jax.evaluate import main as evaluate_main
from ecformer_jax.inpaint import main as inpaint_main
from ecformer_jax.upscale import main as upscale_main
from tests.test_inpaint import TINY_FUSEFORMER, random_variables, synthetic_clip

ROOT = Path(__file__).resolve().parents[1]
N, H, W = 3, 30, 42  # the shared clip: 3 frames of 42x30 -> one window, one compiled shape


# --- helpers ---------------------------------------------------------------------------------------------
def call(main, *args):
    """(exit status, stdout, stderr) of a command's main(argv), SystemExit included (argparse)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def fails(result, *needles):
    """Status 2, one line 'error: ...' containing every needle, no traceback; returns the line."""
    rc, _, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def leftovers(folder: Path, *names) -> list[str]:
    """What of `names`, or any temporary (.NAME.tmp-*), exists in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name in names or ".tmp-" in p.name)


def png16(path: Path, a: np.ndarray) -> Path:
    """A 16-bit PNG (grey (H, W) or RGB (H, W, 3) uint16), written by hand: Pillow cannot write 16-bit RGB."""
    h, w = a.shape[:2]
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2 if a.ndim == 3 else 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def save_images(folder: Path, images, ext=".png", mode=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(images):
        im = Image.fromarray(np.asarray(a))
        (im.convert(mode) if mode else im).save(folder / f"{i:05d}{ext}")
    return folder


# --- fixtures: one tiny model, one clip ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A converted tiny FuseFormer (size-free, pads to multiples of 4): every run below shares its compiles."""
    model = models.build("fuseformer", **TINY_FUSEFORMER)
    variables = random_variables(model, (np.zeros((1, 1, 32, 44, 3), np.float32),))
    return Path(convert.save(tmp_path_factory.mktemp("ckpt") / "tiny", "fuseformer", variables, TINY_FUSEFORMER))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    frames, masks = synthetic_clip(N, H, W)
    save_images(root / "frames", frames)
    save_images(root / "masks", masks.astype(np.uint8) * 255)
    return root / "frames", root / "masks", frames, masks


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a checkpoint is loaded (and so anything compiled)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was loaded before the bad input was noticed")

    monkeypatch.setattr(convert, "read_checkpoint", refuse)
    monkeypatch.setattr(convert, "resolve", refuse)


def copy_folder(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def bad_folders(root: Path, frames_dir: Path) -> dict[str, tuple[Path, str, str]]:
    """{case: (frame folder, file the message names, problem words)} for the frame-folder failures."""
    out = {}
    mixed = copy_folder(frames_dir, root / "mixed")
    Image.new("RGB", (40, 30)).save(mixed / "00001.png")
    out["mixed sizes"] = (mixed, mixed / "00001.png", "40x30 (WxH) but the first frame 00000.png")
    empty = root / "empty"
    empty.mkdir()
    out["empty folder"] = (empty, empty, "no image files")
    corrupt = copy_folder(frames_dir, root / "corrupt")
    data = (corrupt / "00001.png").read_bytes()
    (corrupt / "00001.png").write_bytes(data[: len(data) // 2])
    out["truncated image"] = (corrupt, corrupt / "00001.png", "cannot read image")
    garbage = copy_folder(frames_dir, root / "garbage")
    (garbage / "00001.png").write_bytes(b"this is not a png")
    out["not an image"] = (garbage, garbage / "00001.png", "not an image")
    stray = copy_folder(frames_dir, root / "stray")
    (stray / "notes.txt").write_text("shot on a phone")
    out["non-image file"] = (stray, stray / "notes.txt", "not an image file")
    return out


# --- inpaint ---------------------------------------------------------------------------------------------
def test_inpaint_bad_input(tiny, clip, tmp_path, no_model):
    frames_dir, masks_dir, frames, masks = clip
    out = tmp_path / "out"

    def inpaint(video=frames_dir, mask=masks_dir, output=out, *args, ckpt=tiny):
        return call(inpaint_main, "--checkpoint", ckpt, "--video", video, "--mask", mask, "--output", output,
                    "--quiet", *args)

    # frames and masks of different counts or sizes
    few = save_images(tmp_path / "few", masks[:2].astype(np.uint8) * 255)
    fails(inpaint(mask=few), few, "has 2 masks but the video has 3 frames")
    big = save_images(tmp_path / "big", np.zeros((N, H, W + 2), np.uint8))
    fails(inpaint(mask=big), big, "are 44x30 (WxH) but the video frames are 42x30")
    # bad frame folders, a missing path, a truncated video
    for case, (folder, named, problem) in bad_folders(tmp_path, frames_dir).items():
        line = fails(inpaint(video=folder), named, problem)
        assert "\n" not in line, case
    fails(inpaint(video=tmp_path / "missing"), "video not found", tmp_path / "missing")
    fails(inpaint(mask=tmp_path / "missing"), "mask not found", tmp_path / "missing")
    video = video_io.write_video(tmp_path / "clip.mp4", frames)
    data = video.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    fails(inpaint(video=tmp_path / "cut.mp4"), tmp_path / "cut.mp4", "cannot read video file", "moov atom not found")
    (tmp_path / "zero.MP4").write_bytes(b"")
    fails(inpaint(video=tmp_path / "zero.MP4"), tmp_path / "zero.MP4", "empty file (0 bytes)")
    # a zero-byte mask among the masks
    zero = copy_folder(masks_dir, tmp_path / "zero_mask")
    (zero / "00001.png").write_bytes(b"")
    fails(inpaint(mask=zero), zero / "00001.png", "empty file (0 bytes)")
    # cheap things first: the model name and --resize before the (missing) video
    fails(inpaint(tmp_path / "missing", masks_dir, out, "--model", "nope"), "unknown model 'nope'")
    fails(inpaint(tmp_path / "missing", masks_dir, out, "--model", "vsr_transformer"),
          "'vsr_transformer' is not an inpainting model")
    fails(inpaint(tmp_path / "missing", masks_dir, out, "--resize", "432by240"), "--resize expects WIDTHxHEIGHT",
          "'432by240'")
    fails(inpaint(tmp_path / "missing", ckpt=tmp_path / "none.pth"), "checkpoint not found", tmp_path / "none.pth")
    pth = tmp_path / "model.pth"
    pth.write_bytes(b"\x80\x02}q\x00.")
    fails(inpaint(tmp_path / "missing", ckpt=pth), "--model is required with a .pth checkpoint", pth)
    # outputs: an existing one is kept without --overwrite; an unwritable folder fails before any work
    out.mkdir()
    (out / "00000.png").write_bytes(b"mine")
    fails(inpaint(tmp_path / "missing"), out, "exists; pass --overwrite")
    assert (out / "00000.png").read_bytes() == b"mine"
    (tmp_path / "file").write_text("")
    fails(inpaint(tmp_path / "missing", output=tmp_path / "file" / "out.mp4"), tmp_path / "file" / "out.mp4",
          "is a file, not a folder")
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: pretend the folder is read-only
        real_access = os.access
        os.access = lambda path, mode, **kw: False if Path(path) == locked else real_access(path, mode, **kw)
    else:
        locked.chmod(0o500)
    try:
        fails(inpaint(tmp_path / "missing", output=locked / "out.mp4"), locked / "out.mp4", "not writable")
    finally:
        if os.geteuid() == 0:
            os.access = real_access
        else:
            locked.chmod(0o700)
    assert leftovers(tmp_path, "out.mp4", "out_side_by_side.mp4", "out_side_by_side") == []
    assert list(locked.iterdir()) == []


def test_inpaint_checkpoint_of_another_model(tiny, clip, tmp_path):
    """Loaded (cheap: no compile) and refused, naming the checkpoint and what does not fit."""
    frames_dir, masks_dir, _, _ = clip
    out = tmp_path / "out.mp4"
    args = ("--video", frames_dir, "--mask", masks_dir, "--output", out, "--quiet")
    fails(call(inpaint_main, "--checkpoint", tiny, "--model", "sttn", *args), tiny,
          "holds a converted 'fuseformer' checkpoint, not 'sttn'")
    pth = tmp_path / "sttn.pth"
    torch.save({"netG": {"encoder.0.weight": torch.zeros(64, 3, 3, 3)}}, pth)
    fails(call(inpaint_main, "--checkpoint", pth, "--model", "fuseformer", *args), pth,
          "checkpoint does not match model 'fuseformer'", "unexpected keys (1): encoder.0.weight")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(bytes(range(1, 65)))
    fails(call(inpaint_main, "--checkpoint", garbage, "--model", "fuseformer", *args), garbage,
          "not a PyTorch checkpoint")
    assert leftovers(tmp_path, "out.mp4", "out_side_by_side.mp4") == []


def test_inpaint_exit_status_end_to_end(tmp_path):
    """The real command in a fresh Python: status 2, one line, no traceback."""
    res = subprocess.run([sys.executable, "-m", "ecformer_jax.inpaint", "--model", "nope", "--checkpoint",
                          str(tmp_path), "--video", str(tmp_path / "v"), "--mask", str(tmp_path / "m"), "--output",
                          str(tmp_path / "o.mp4")], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and "unknown model 'nope'" in res.stderr


# --- unusual input that works ----------------------------------------------------------------------------------
def inpainted(tiny, video, mask, output, *args):
    rc, out, err = call(inpaint_main, "--checkpoint", tiny, "--video", video, "--mask", mask, "--output", output,
                        "--quiet", "--no-side-by-side", *args)
    assert rc == 0, err
    return video_io.read_frames(output)


@pytest.mark.slow
def test_unusual_frames_and_masks_work(tiny, clip, tmp_path):
    """Grayscale, RGBA and 16-bit frames and masks, anti-aliased masks, upper-case extensions: real inpainting
    with the tiny model, the right number of frames and size, the known pixels kept."""
    _, _, frames, masks = clip
    hole = masks.astype(np.uint8) * 255
    gray = frames.mean(-1).astype(np.uint8)
    # grayscale frames and masks (mode 'L')
    result = inpainted(tiny, save_images(tmp_path / "gray", gray), save_images(tmp_path / "gray_m", hole),
                       tmp_path / "gray_out")
    assert result.shape == (N, H, W, 3)
    known = ~dilate(masks, 4)
    np.testing.assert_array_equal(result[known], np.repeat(gray[..., None], 3, -1)[known])
    # RGBA frames and masks (alpha ignored, as the official PIL convert)
    rgba = np.concatenate([frames, np.full((N, H, W, 1), 128, np.uint8)], -1)
    rgba_m = np.stack([hole] * 3 + [hole], -1)  # white opaque hole on transparent black
    result = inpainted(tiny, save_images(tmp_path / "rgba", rgba), save_images(tmp_path / "rgba_m", rgba_m),
                       tmp_path / "rgba_out")
    assert result.shape == (N, H, W, 3)
    np.testing.assert_array_equal(result[known], frames[known])
    # 16-bit frames (grey and RGB PNGs in one folder) and 16-bit masks; any non-zero 16-bit value is a hole
    wide = frames.astype(np.uint16) * 256 + 100
    for i in range(N):
        png16(tmp_path / "f16" / f"{i:05d}.png", wide[i] if i != 1 else wide[i, ..., 0])
        png16(tmp_path / "m16" / f"{i:05d}.png", masks[i].astype(np.uint16) * (1 if i == 0 else 65535))
    assert Image.open(tmp_path / "f16" / "00001.png").mode == "I;16"
    result = inpainted(tiny, tmp_path / "f16", tmp_path / "m16", tmp_path / "f16_out")
    expected = (wide >> 8).astype(np.uint8)
    expected[1] = np.repeat(expected[1, ..., :1], 3, -1)
    assert result.shape == (N, H, W, 3)
    np.testing.assert_array_equal(result[known], expected[known])
    assert (result[0][masks[0]] != expected[0][masks[0]]).mean() > 0.5  # the value-1 mask made a hole
    # anti-aliased masks: every value > 0 is a hole (the official rule), 0 is not; no dilation to see it
    soft = np.zeros((N, H, W), np.uint8)
    soft[:, 8:20, 10:30] = 255
    soft[:, 7, 10:30] = soft[:, 20, 10:30] = 1  # the faintest edge
    soft[:, 8:20, 9] = soft[:, 8:20, 30] = 128
    result = inpainted(tiny, save_images(tmp_path / "soft_f", frames), save_images(tmp_path / "soft_m", soft),
                       tmp_path / "soft_out", "--mask-dilation", "0")
    changed = np.any(result != frames, -1)
    assert not changed[soft == 0].any()
    assert changed[:, 7, 10:30].mean() > 0.5 and changed[:, 8:20, 9].mean() > 0.5
    # upper-case extensions: .JPG frames with .PNG masks; an .MP4 video with one .PNG mask into an .MP4
    result = inpainted(tiny, save_images(tmp_path / "upper", frames, ".JPG"), save_images(tmp_path / "upper_m", hole,
                       ".PNG"), tmp_path / "upper_out")
    assert result.shape == (N, H, W, 3)
    video = video_io.write_video(tmp_path / "clip.MP4", frames)
    Image.fromarray(hole[0]).save(tmp_path / "mask.PNG")
    result = inpainted(tiny, video, tmp_path / "mask.PNG", tmp_path / "out.MP4")
    assert result.shape == (N, H, W, 3)


def test_odd_size_works(tiny, tmp_path):
    """101x77: padded to 104x80 and cropped back; an exact-size .mp4 (yuv444p) and side-by-side video."""
    frames, masks = synthetic_clip(N, 77, 101)
    out = tmp_path / "odd.mp4"
    rc, _, err = call(inpaint_main, "--checkpoint", tiny, "--video", save_images(tmp_path / "odd", frames), "--mask",
                      save_images(tmp_path / "odd_m", masks.astype(np.uint8) * 255), "--output", out, "--quiet")
    assert rc == 0, err
    assert "processed at 101x77 padded to 104x80" in err
    assert video_io.read_frames(out).shape == (N, 77, 101, 3)
    assert video_io.read_frames(tmp_path / "odd_side_by_side.mp4").shape == (N, 77, 2 * 101 + 4, 3)
    assert leftovers(tmp_path) == []


def test_one_frame_works(tiny, tmp_path):
    frames, masks = synthetic_clip(1, H, W)
    one_mask = save_images(tmp_path / "one_m", masks.astype(np.uint8) * 255)
    result = inpainted(tiny, save_images(tmp_path / "one", frames), one_mask, tmp_path / "one_out")
    assert result.shape == (1, H, W, 3)
    assert leftovers(tmp_path) == []


def test_a_failed_write_leaves_nothing(tiny, clip, tmp_path, monkeypatch):
    """The disk fills up while the side-by-side video is written: neither output appears, no temporary stays,
    the message is one line; the same run then succeeds and replaces nothing else in the output folder."""
    frames_dir, masks_dir, _, _ = clip
    out = tmp_path / "result"
    real_write = video_io.write_video

    def full_disk(path, frames, fps=24.0, **kwargs):
        Path(path).write_bytes(b"half a video")
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(video_io, "write_video", full_disk)
    args = ("--checkpoint", tiny, "--video", frames_dir, "--mask", masks_dir, "--output", out, "--quiet")
    rc, _, err = call(inpaint_main, *args)
    assert rc == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("error: ") and "No space left on device" in err.splitlines()[-1]
    assert leftovers(tmp_path, "result", "result_side_by_side.mp4") == []
    monkeypatch.setattr(video_io, "write_video", real_write)
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "00007.png").write_bytes(b"an earlier, longer run")
    rc, _, err = call(inpaint_main, *args, "--overwrite")
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "00002.png", "notes.txt"]
    assert leftovers(tmp_path) == []


# --- upscale ---------------------------------------------------------------------------------------------
def test_upscale_bad_input(clip, tmp_path, no_model):
    frames_dir, _, _, _ = clip
    out = tmp_path / "sr.mp4"
    pth = tmp_path / "net_g.pth"  # never read: every case fails before
    pth.write_bytes(b"")

    def upscale(video=frames_dir, *args, ckpt=pth, output=out):
        return call(upscale_main, "--checkpoint", ckpt, "--video", video, "--output", output, "--quiet", *args)

    for folder, named, problem in bad_folders(tmp_path, frames_dir).values():
        fails(upscale(folder), named, problem)
    fails(upscale(tmp_path / "missing"), "video not found", tmp_path / "missing")
    fails(upscale(tmp_path / "missing", "--model", "nope"), "unknown model 'nope'")
    fails(upscale(tmp_path / "missing", "--model", "sttn"), "'sttn' is not a super-resolution model")
    out.write_bytes(b"mine")
    fails(upscale(tmp_path / "missing"), out, "exists; pass --overwrite")
    assert out.read_bytes() == b"mine"
    (tmp_path / "file").write_text("")
    fails(upscale(tmp_path / "missing", output=tmp_path / "file" / "sr"), "is a file, not a folder")
    small = save_images(tmp_path / "small", np.zeros((2, 48, 80, 3), np.uint8))
    fails(upscale(small, output=tmp_path / "small_sr"), "frames of 80x48 (WxH) are too small")
    assert leftovers(tmp_path, "small_sr", "small_sr_side_by_side.mp4") == []


def test_upscale_checkpoint_of_another_model(tiny, tmp_path):
    frames_dir = save_images(tmp_path / "lr", np.zeros((2, 64, 64, 3), np.uint8))
    args = ("--video", frames_dir, "--output", tmp_path / "sr", "--quiet")
    fails(call(upscale_main, "--checkpoint", tiny, *args), tiny, "holds a converted 'fuseformer' checkpoint",
          "not a super-resolution model")
    text = tmp_path / "net_g.pth"
    text.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\n")
    fails(call(upscale_main, "--checkpoint", text, *args), text, "not a PyTorch checkpoint", "it is text")
    assert leftovers(tmp_path, "sr", "sr_side_by_side.mp4") == []


# --- evaluate --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eval_clip(tmp_path_factory):
    """Frames of 72x66: the evaluation's SSIM window is 65x65."""
    root = tmp_path_factory.mktemp("eval_clip")
    frames, masks = synthetic_clip(N, 66, 72)
    save_images(root / "frames", frames)
    save_images(root / "masks", masks.astype(np.uint8) * 255)
    return root / "frames", root / "masks", frames, masks


def test_evaluate_bad_input(eval_clip, tmp_path, no_model):
    frames_dir, masks_dir, frames, masks = eval_clip
    gt = copy_folder(frames_dir, tmp_path / "gt" / "bear").parent
    results = copy_folder(frames_dir, tmp_path / "results" / "bear").parent
    out = tmp_path / "eval"

    def evaluate(*args, res=results, truth=gt, output=out):
        return call(evaluate_main, "--results", res, "--gt", truth, "--output", output, "--quiet", *args)

    # counts and sizes: results vs ground truth, masks vs frames
    (results / "bear" / "00002.png").unlink()
    fails(evaluate(), "video 'bear': 2 result frames", results / "bear", "but 3 ground-truth frames")
    save_images(results / "bear", np.zeros((N, 66, 74, 3), np.uint8))
    fails(evaluate(), "video 'bear': result frames are 74x66 but the ground truth is 72x66")
    copy_folder(frames_dir, tmp_path / "ok" / "bear")
    few = save_images(tmp_path / "masks" / "bear", masks[:2].astype(np.uint8) * 255)
    fails(evaluate("--masks", tmp_path / "masks", res=tmp_path / "ok"), few, "has 2 masks but the video has 3 frames")
    zero = copy_folder(masks_dir, tmp_path / "zero_masks" / "bear")
    (zero / "00001.png").write_bytes(b"")
    fails(evaluate("--masks", zero.parent, res=tmp_path / "ok"), zero / "00001.png", "empty file (0 bytes)")
    # bad frame folders as results, a missing path, an empty --gt
    for case, (folder, named, problem) in bad_folders(tmp_path / "bad", frames_dir).items():
        if case != "empty folder":
            fails(evaluate(res=folder, truth=frames_dir), named, problem)
    fails(evaluate(res=tmp_path / "missing"), "--results folder not found", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    fails(evaluate(truth=tmp_path / "empty"), "no videos in --gt folder", tmp_path / "empty")
    # options, names and outputs before any video is read
    fails(evaluate("--size", "432x"), "--size expects WIDTHxHEIGHT")
    fails(evaluate("--checkpoint", tmp_path, "--model", "nope", "--masks", masks_dir, res=tmp_path / "missing"),
          "unknown model 'nope'")
    fails(evaluate("--i3d", tmp_path / "i3d.pt", res=tmp_path / "missing"), "--i3d: I3D weights not found",
          tmp_path / "i3d.pt")
    out.mkdir()
    (out / "summary.json").write_text("{}")
    fails(evaluate(res=tmp_path / "missing"), out, "already holds summary.json; pass --overwrite")
    assert (out / "summary.json").read_text() == "{}"
    (tmp_path / "file").write_text("")
    fails(evaluate(res=tmp_path / "missing", output=tmp_path / "file" / "eval"), "is a file, not a folder")
    assert not (tmp_path / "ok" / "summary.json").exists()


def test_evaluate_writes_all_or_nothing(eval_clip, tmp_path, monkeypatch):
    frames_dir, _, _, _ = eval_clip
    out = tmp_path / "eval"
    args = ("--results", frames_dir, "--gt", frames_dir, "--output", out, "--quiet")
    run = importlib.import_module("ecformer_jax.evaluation.run")  # the module (the package exports a function)
    real_clean = run._clean
    monkeypatch.setattr(run, "_clean", lambda obj: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    fails(call(evaluate_main, *args), "No space left on device")
    assert not out.exists() and leftovers(tmp_path) == []
    monkeypatch.setattr(run, "_clean", real_clean)
    rc, stdout, err = call(evaluate_main, *args)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["per_frame.csv", "per_video.csv", "summary.json"]


# --- convert ---------------------------------------------------------------------------------------------
def not_checkpoints(root: Path) -> dict[str, tuple[Path, str]]:
    """{case: (file, words of the reason)} for files that are not PyTorch checkpoints."""
    root.mkdir(parents=True, exist_ok=True)
    files = {}

    def put(name, data, why):
        (root / name).write_bytes(data)
        files[name] = (root / name, why)

    put("garbage.pth", bytes(range(256)), "neither a zip archive nor a pickle")
    put("text.pth", b"Not Found\n", "it is text, starting 'Not Found'")
    put("empty.pth", b"", "empty file, 0 bytes")
    with zipfile.ZipFile(root / "frames.zip", "w") as z:
        z.writestr("00000.png", b"x")
    files["frames.zip"] = (root / "frames.zip", "a zip archive without data.pkl")
    torch.save({"conv.weight": torch.zeros(8, 8)}, root / "full.pth")
    data = (root / "full.pth").read_bytes()
    put("truncated.pth", data[: len(data) // 2], "truncated")
    torch.save({"conv.weight": torch.zeros(8, 8)}, root / "legacy.pth", _use_new_zipfile_serialization=False)
    data = (root / "legacy.pth").read_bytes()
    put("legacy_truncated.pth", data[: len(data) - 40], "truncated")
    torch.save({"step": np.int64(3)}, root / "numpy.pth")
    files["numpy.pth"] = (root / "numpy.pth", "it stores the Python object numpy")
    return files


def test_convert_not_a_checkpoint(tmp_path):
    out = tmp_path / "converted"
    for path, why in not_checkpoints(tmp_path / "files").values():
        line = fails(call(convert_main, "--model", "fuseformer", "--checkpoint", path, "--output", out), path,
                     "not a PyTorch checkpoint (", why)
        assert "weights_only" not in line and "trust" not in line, line
    assert leftovers(tmp_path, "converted") == []


def test_convert_bad_input(tiny, tmp_path):
    out = tmp_path / "converted"
    pth = tmp_path / "sttn.pth"
    torch.save({"netG": {"encoder.0.weight": torch.zeros(64, 3, 3, 3)}}, pth)
    fails(call(convert_main, "--model", "nope", "--checkpoint", tmp_path / "missing.pth", "--output", out),
          "unknown model 'nope'")
    fails(call(convert_main, "--model", "fuseformer", "--checkpoint", pth, "--output", out), pth,
          "checkpoint does not match model 'fuseformer'", "encoder.0.weight")
    fails(call(convert_main, "--model", "fuseformer", "--checkpoint", tmp_path / "missing.pth", "--output", out),
          "checkpoint not found", tmp_path / "missing.pth")
    fails(call(convert_main, "--checkpoint", pth, "--output", out, "--option", "depth"), "--option expects KEY=VALUE")
    out.mkdir()
    fails(call(convert_main, "--model", "fuseformer", "--checkpoint", pth, "--output", out), out,
          "exists; pass --overwrite")
    (tmp_path / "file").write_text("")
    fails(call(convert_main, "--model", "fuseformer", "--checkpoint", pth, "--output", tmp_path / "file" / "c"),
          "is a file, not a folder")
    assert list(out.iterdir()) == [] and leftovers(tmp_path) == []


def test_convert_exit_status_end_to_end(tmp_path):
    (tmp_path / "model.pth").write_text("<html>404</html>")
    res = subprocess.run([sys.executable, "-m", "ecformer_jax.convert", "--model", "fuseformer", "--checkpoint",
                          str(tmp_path / "model.pth"), "--output", str(tmp_path / "out")],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "not a PyTorch checkpoint (it is text" in res.stderr
    assert not (tmp_path / "out").exists()


# --- the output helper -------------------------------------------------------------------------------------
def test_atomic_output(tmp_path):
    target = tmp_path / "a" / "b" / "out.mp4"
    with pytest.raises(RuntimeError):
        with video_io.atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert not (tmp_path / "a").exists()  # the folders made for it are gone too
    with video_io.atomic_output(target) as tmp:
        assert tmp.name == "out.mp4" and tmp.parent.parent == target.parent
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and leftovers(target.parent) == []
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with video_io.atomic_output(folder) as tmp:
        video_io.write_frames(tmp, np.zeros((2, 4, 4, 3), np.uint8))
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png", "00001.png", "keep.txt"]
    with video_io.atomic_output(folder, replace=True) as tmp:
        video_io.write_frames(tmp, np.zeros((1, 4, 4, 3), np.uint8))
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png"] and leftovers(tmp_path) == []


def test_remote_paths_on_gcs(tiny, clip, tmp_path):
    """gs:// everywhere a user may give it (a local GCS emulator): a converted checkpoint saved to and loaded
    from the bucket, and the inpaint command reading that checkpoint and writing its frames and side-by-side
    video there, through a local temporary (nothing of it left locally or half-written remotely)."""
    from etils import epath

    from tests import gcs_emulator

    frames_dir, masks_dir, frames, _ = clip
    with gcs_emulator.running():
        bucket = epath.Path(f"gs://{gcs_emulator.BUCKET}/{tmp_path.name}")
        name, overrides, variables = convert.load(tiny)
        ckpt = convert.save(bucket / "ckpt", name, variables, overrides)
        assert ckpt == str(bucket / "ckpt") and (bucket / "ckpt" / convert.META).exists()
        loaded = convert.resolve(ckpt)
        assert loaded.name == "fuseformer" and loaded.source.startswith("gs://")
        out = bucket / "out"
        rc, _, err = call(inpaint_main, "--checkpoint", ckpt, "--video", frames_dir, "--mask", masks_dir,
                          "--output", out, "--quiet")
        assert rc == 0, err
        assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}.png" for i in range(N)]
        assert len((bucket / "out_side_by_side.mp4").read_bytes()) > 1000
        with (out / "00000.png").open("rb") as f:
            assert np.asarray(Image.open(f)).shape == frames[0].shape
        rc, _, err = call(inpaint_main, "--checkpoint", ckpt, "--video", frames_dir, "--mask", masks_dir,
                          "--output", out, "--quiet")
        fails((rc, "", err), str(out), "--overwrite")
    assert leftovers(tmp_path) == []
