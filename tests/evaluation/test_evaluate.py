"""`python -m ecformer_jax.evaluate` on DAVIS-style folders built from the real tennis clip: ground truth =
frames, result = frames with noise inside the masks; summary / CSVs against direct computations, VFID and
E_warp end to end with (random-weight) I3D and SPyNet checkpoints, and an error for every bad input."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from ecformer_jax import evaluate as command
from ecformer_jax.data import video_io
from ecformer_jax.evaluation import metrics
from ecformer_jax.evaluation.run import VideoError, format_table, run
from ecformer_jax.inference.common import parse_size
from tests.evaluation.test_i3d import random_state_dict
from tests.evaluation.test_metrics import _spynet_state_dict, anchor_psnr

SIZE = (96, 72)  # small enough for a fast I3D / SPyNet, big enough for the 65x65 SSIM window
VIDEOS = {"bear": range(0, 6), "camel": range(30, 35)}


def _noisy(frames, masks, seed):
    noise = np.random.default_rng(seed).integers(-30, 31, frames.shape)
    return np.where(masks[..., None], np.clip(frames.astype(int) + noise, 0, 255), frames).astype(np.uint8)


@pytest.fixture(scope="module")
def dataset(tennis_dir, tmp_path_factory):
    """gt/<video>/ at 432x240 (.jpg-free PNGs), results/<video>/ at SIZE, masks: a folder for 'bear' and a
    single image for 'camel'. Returns paths and the arrays the metrics should see."""
    root = tmp_path_factory.mktemp("davis")
    all_masks = video_io.read_masks(tennis_dir / "masks")
    arrays = {}
    for i, (name, idx) in enumerate(VIDEOS.items()):
        frames = video_io.read_frames(tennis_dir / "frames", indices=idx)
        video_io.write_frames(root / "gt" / name, frames)
        gt_small = np.stack([video_io.resize(f, SIZE) for f in frames])  # PIL bicubic, as --size does
        masks = all_masks[list(idx)] if name == "bear" else np.repeat(all_masks[idx[0]][None], len(idx), 0)
        if name == "bear":
            video_io.write_frames(root / "masks" / name, masks.astype(np.uint8) * 255)
        else:
            (root / "masks").mkdir(exist_ok=True)
            Image.fromarray(masks[0].astype(np.uint8) * 255).save(root / "masks" / f"{name}.png")
        masks_small = np.stack([video_io.resize(m.astype(np.uint8) * 255, SIZE, Image.NEAREST) for m in masks]) > 0
        result = _noisy(gt_small, masks_small, i)
        video_io.write_frames(root / "results" / name, result)
        arrays[name] = (gt_small, result, masks_small)
    return root, arrays


class StubI3D:
    """A deterministic stand-in feature extractor (per-channel statistics)."""

    def __init__(self):
        self.calls = []

    def __call__(self, frames):
        self.calls.append(frames.shape)
        x = frames.astype(np.float64) / 255
        return np.concatenate([x.mean((0, 1, 2)), x.std((0, 1, 2)), (x ** 2).mean((0, 1, 2))])


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_summary_and_csvs_match_direct_computation(dataset, tmp_path):
    root, arrays = dataset
    stub = StubI3D()
    summary = run(root / "results", root / "gt", tmp_path / "out", masks=root / "masks", size=(72, 96),
                          i3d_extractor=stub, progress=False)
    psnrs = [anchor_psnr(a, b) for gt, res, _ in arrays.values() for a, b in zip(gt, res)]
    assert summary["frames"] == len(psnrs) == 11 and summary["videos"] == 2
    assert summary["psnr"] == pytest.approx(np.mean(psnrs), abs=1e-10)  # the mean over ALL frames
    assert summary["psnr"] != pytest.approx(np.mean([np.mean(psnrs[:6]), np.mean(psnrs[6:])]), abs=1e-6)
    ssims = np.concatenate([metrics.frame_ssims(gt, res) for gt, res, _ in arrays.values()])
    assert summary["ssim"] == pytest.approx(float(np.mean(ssims)), abs=1e-12)
    # VFID from the (stub) features of ground truth and results, whole videos at SIZE
    assert stub.calls == [(6, 72, 96, 3)] * 2 + [(5, 72, 96, 3)] * 2
    feats = {k: (stub(g), stub(r)) for k, (g, r, _) in arrays.items()}
    real, fake = [f[0] for f in feats.values()], [f[1] for f in feats.values()]
    assert summary["vfid"] == pytest.approx(metrics.vfid(real, fake))
    assert summary["e_warp"] is None and "--flow-checkpoint" in summary["e_warp_unavailable"]
    # hole PSNR pooled over all hole pixels of both videos
    d = np.concatenate([(g.astype(float) - r)[m].ravel() for g, r, m in arrays.values()])
    assert summary["psnr_hole"] == pytest.approx(20 * np.log10(255 / np.sqrt(np.mean(d ** 2))))

    out = tmp_path / "out"
    rows = _read_csv(out / "per_video.csv")
    assert [r["video"] for r in rows] == ["bear", "camel"]
    assert list(rows[0]) == ["video", "frames", "psnr", "ssim", "psnr_hole", "e_warp"]
    assert int(rows[1]["frames"]) == 5 and rows[1]["e_warp"] == ""
    assert float(rows[0]["psnr"]) == pytest.approx(np.mean(psnrs[:6]), abs=1e-6)
    frames = _read_csv(out / "per_frame.csv")
    assert len(frames) == 11 and frames[6]["video"] == "camel" and frames[6]["frame"] == "00000.png"
    assert float(frames[3]["psnr"]) == pytest.approx(psnrs[3], abs=1e-6)
    saved = json.loads((out / "summary.json").read_text())  # strict JSON (no NaN / Infinity tokens)
    assert saved["psnr"] == pytest.approx(summary["psnr"]) and saved["e_warp"] is None
    assert saved["per_video"][0]["video"] == "bear" and "65x65" in saved["protocol"]["ssim"]
    table = format_table(saved)
    assert "camel" in table and "E_warp: unavailable" in table and f"VFID: {saved['vfid']:.4g}" in table


@pytest.mark.slow
def test_cli_with_real_i3d_and_spynet_checkpoints(dataset, tmp_path, capsys):
    root, arrays = dataset
    torch.save(random_state_dict(counters=False), tmp_path / "i3d_rgb_imagenet.pt")
    torch.save({"state_dict": _spynet_state_dict()}, tmp_path / "spynet.pth")
    out = tmp_path / "out"
    argv = ["--results", str(root / "results"), "--gt", str(root / "gt"), "--output", str(out), "--size", "96x72",
            "--i3d", str(tmp_path / "i3d_rgb_imagenet.pt"), "--flow-checkpoint", str(tmp_path / "spynet.pth"),
            "--quiet"]
    assert command.main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert isinstance(summary["vfid"], float) and summary["vfid"] > 0 and "vfid_unavailable" not in summary
    assert f"VFID: {summary['vfid']:.4g}" in printed and "bear" in printed
    # E_warp: SPyNet flows of the ground truth, warping error of the results, mean over videos
    flow = metrics.SPyNetFlow.from_checkpoint(tmp_path / "spynet.pth")
    per_video = []
    for gt, res, _ in arrays.values():
        fw, bw = flow(gt)
        per_video.append(float(np.mean(metrics.warping_errors(res, fw, bw))))
    assert summary["e_warp"] == pytest.approx(np.mean(per_video), rel=1e-5)
    assert summary["e_warp_x100"] == pytest.approx(100 * summary["e_warp"])
    assert [v["e_warp"] for v in summary["per_video"]] == pytest.approx(per_video, rel=1e-5)
    # an existing output is not replaced without --overwrite
    assert command.main(argv) == 2
    assert "already holds summary.json" in capsys.readouterr().err
    # flows on the results instead: a different number (no --i3d this time: VFID unavailable)
    argv = argv[:8] + argv[10:]
    assert "--i3d" not in argv and "--flow-checkpoint" in argv
    assert command.main(argv + ["--overwrite", "--ewarp-flow-on", "results"]) == 0
    other = json.loads((out / "summary.json").read_text())
    assert other["e_warp"] != pytest.approx(summary["e_warp"], rel=1e-6)
    assert other["psnr"] == summary["psnr"] and other["inputs"]["ewarp_flow_on"] == "results"


def test_vfid_unavailable_without_weights_or_with_one_video(dataset, tmp_path, capsys):
    root, _ = dataset
    argv = ["--results", str(root / "results"), "--gt", str(root / "gt"), "--size", "96x72", "--quiet"]
    assert command.main(argv + ["--output", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["vfid"] is None and "no I3D weights: pass --i3d" in summary["vfid_unavailable"]
    assert "VFID: unavailable (no I3D weights" in printed and "psnr_hole" not in summary
    assert list(_read_csv(tmp_path / "a" / "per_video.csv")[0]) == ["video", "frames", "psnr", "ssim", "e_warp"]
    one = run(root / "results", root / "gt", tmp_path / "b", size=(72, 96), videos=["camel"],
                      i3d_extractor=StubI3D(), progress=False)
    assert one["vfid"] is None and "at least 2 videos" in one["vfid_unavailable"] and one["frames"] == 5


def test_single_video_folders_and_identical_frames(dataset, tmp_path):
    root, arrays = dataset
    gt, _, _ = arrays["bear"]
    video_io.write_frames(tmp_path / "gt_frames", gt)
    video_io.write_frames(tmp_path / "same", gt)
    summary = run(tmp_path / "same", tmp_path / "gt_frames", tmp_path / "out", progress=False)
    assert summary["videos"] == 1
    assert summary["psnr"] == float("inf") and summary["psnr_infinite_frames"] == 6
    assert summary["ssim"] == pytest.approx(1.0, abs=1e-12)
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["psnr"] == "inf" and saved["per_video"][0]["video"] == "same"
    assert "inf" in format_table(saved)


@pytest.fixture
def broken(dataset, tmp_path):
    """A writable copy of the data set to break."""
    root, _ = dataset
    for sub in ("gt", "results", "masks"):
        shutil.copytree(root / sub, tmp_path / sub)
    return tmp_path


def _run(b, *extra, results="results", gt="gt"):
    return run(b / results, b / gt, b / "out", size=(72, 96), progress=False, overwrite=True, **dict(extra))


def test_frame_count_and_size_mismatches(broken, tmp_path):
    (broken / "results" / "bear" / "00005.png").unlink()
    with pytest.raises(VideoError, match=r"video 'bear': 5 result frames in .* but 6 ground-truth frames"):
        _run(broken)
    with pytest.raises(VideoError, match=r"result frames are 96x72 but the ground truth is 432x240 \(W x H\); "
                                            r"pass --size"):
        run(broken / "results", broken / "gt", broken / "out", videos=["camel"], progress=False)
    with pytest.raises(VideoError, match=r"is 80x60 after --size"):
        run(broken / "results", broken / "gt", broken / "out", size=(60, 80), videos=["camel"],
                    progress=False)
    Image.new("RGB", (50, 50)).save(broken / "results" / "camel" / "00002.png")
    with pytest.raises(VideoError, match=r"camel/00002\.png: 50x50 \(WxH\) but the first frame 00000\.png"):
        run(broken / "results", broken / "gt", broken / "out", size=(72, 96), videos=["camel"],
                    progress=False)


def test_missing_and_extra_videos(broken):
    shutil.copytree(broken / "results" / "camel", broken / "results" / "zebra")
    with pytest.raises(VideoError, match=r"1 result video\(s\) have no ground truth in .*: zebra"):
        _run(broken)
    shutil.rmtree(broken / "results" / "zebra")
    shutil.rmtree(broken / "results" / "camel")
    with pytest.raises(VideoError, match=r"1 ground-truth video\(s\) have no results in .*: camel; pass "
                                            r"--only-results"):
        _run(broken)
    summary = _run(broken, ("only_results", True))
    assert summary["videos"] == 1 and summary["frames"] == 6
    with pytest.raises(VideoError, match=r"--videos: 1 video\(s\) not in --results .*: camel"):
        _run(broken, ("videos", ["bear", "camel"]))


def test_empty_folders_and_layout_errors(broken, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoError, match="no videos in --results folder"):
        _run(broken, results="empty")
    (broken / "results" / "dog").mkdir()
    with pytest.raises(VideoError, match=r"--results: video folder\(s\) without frames in .*: dog"):
        _run(broken)
    (broken / "results" / "dog").rmdir()
    with pytest.raises(VideoError, match="--gt folder not found"):
        _run(broken, gt="nope")
    with pytest.raises(VideoError, match="is a folder of frames \\(one video\\) but --gt holds video folders"):
        _run(broken, results="results/bear")
    with pytest.raises(VideoError, match="no masks for video 'camel'"):
        (broken / "masks" / "camel.png").unlink()
        _run(broken, ("masks", broken / "masks"))
    (broken / "masks" / "camel").mkdir()
    for i in range(3):
        Image.new("L", (432, 240)).save(broken / "masks" / "camel" / f"{i:05d}.png")
    with pytest.raises(VideoError, match="has 3 masks but the video has 5 frames"):
        _run(broken, ("masks", broken / "masks"))
    with pytest.raises(ValueError, match="--size expects WIDTHxHEIGHT"):
        parse_size("96by72", "--size")
    with pytest.raises(ValueError, match="flow_on must be one of"):
        _run(broken, ("flow_on", "masks"))


def test_cli_reports_errors_with_status_2(broken, capsys):
    code = command.main(["--results", str(broken / "results"), "--gt", str(broken / "gt"), "--output",
                    str(broken / "out"), "--quiet"])
    assert code == 2
    assert "error: video 'bear': result frames are 96x72" in capsys.readouterr().err
    code = command.main(["--results", str(broken / "results"), "--gt", str(broken / "gt"), "--output",
                    str(broken / "out"), "--size", "96x72", "--i3d", str(broken / "missing.pt"), "--quiet"])
    assert code == 2
    assert "I3D weights not found" in capsys.readouterr().err
    assert not (broken / "out" / "summary.json").exists()


# --- inpaint first, then evaluate ------------------------------------------------------------------
TINY_FUSEFORMER = {"num_blocks": 1, "resize_embeddings": True}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import jax

    from ecformer_jax import convert, models

    model = models.build("fuseformer", **TINY_FUSEFORMER)
    shapes = jax.eval_shape(lambda: models.init(model, "fuseformer", jax.random.key(0)))
    rng = np.random.default_rng(0)  # random weights without compiling the initialisers
    variables = jax.tree.map(lambda a: (0.02 * rng.standard_normal(a.shape)).astype(a.dtype), shapes)
    return convert.save(tmp_path_factory.mktemp("ckpt") / "tiny", "fuseformer", variables, TINY_FUSEFORMER)


@pytest.mark.slow
def test_inpaint_then_evaluate(dataset, tiny_checkpoint, tmp_path, capsys):
    import jax

    from ecformer_jax import convert, models
    from ecformer_jax.inference.protocol import Inpainter

    root, arrays = dataset
    results = tmp_path / "results"
    argv = ["--checkpoint", str(tiny_checkpoint), "--gt", str(root / "gt"), "--masks", str(root / "masks"),
            "--size", "96x72", "--results", str(results), "--output", str(tmp_path / "out"), "--quiet",
            "--videos", "camel"]
    assert command.main(argv) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["inpainting"]["model"] == "fuseformer" and summary["inpainting"]["frames"] == 5
    assert summary["inpainting"]["subvideo_length"] is None and summary["inpainting"]["ref_stride"] == 10
    written = video_io.read_frames(results / "camel")
    # the same frames as the protocol's Inpainter on the resized ground truth and masks (whole-video refs)
    gt, _, masks = arrays["camel"]
    _, overrides, variables = convert.load(tiny_checkpoint)
    model = models.build("fuseformer", **overrides)
    expected = Inpainter("fuseformer", model, jax.tree.map(np.asarray, variables), subvideo_length=0)(gt, masks)
    np.testing.assert_array_equal(written, expected.frames)
    assert not np.array_equal(written, gt) and np.array_equal(written[~expected.masks], gt[~expected.masks])
    assert summary["psnr"] == pytest.approx(np.mean([anchor_psnr(a, b) for a, b in zip(gt, written)]), abs=1e-9)
    # results are not replaced silently; masks are required
    argv[argv.index("--output") + 1] = str(tmp_path / "out2")
    assert command.main(argv) == 2
    assert "--results already holds frames for 1 video(s)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs --masks"):
        run(results, root / "gt", tmp_path / "out3", checkpoint=tiny_checkpoint, size=(72, 96),
                    progress=False)
    with pytest.raises(ValueError, match="not an inpainting model"):
        spynet = convert.save(tmp_path / "spy", "spynet", convert.from_torch("spynet", {
            k: v for k, v in _spynet_state_dict().items()}))
        run(tmp_path / "r2", root / "gt", tmp_path / "out4", masks=root / "masks", checkpoint=spynet,
                    size=(72, 96), progress=False)
