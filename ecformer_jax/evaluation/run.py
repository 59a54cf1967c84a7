"""Evaluation of completed videos against their ground truth, the way the video-inpainting papers do: the
library side of `python -m ecformer_jax.evaluate` (whose docstring describes the folder layouts).

    summary = run("results/davis", "DAVIS/JPEGImages/480p", "eval/davis", size=(240, 432), i3d="i3d_rgb_imagenet.pt")

Finding and pairing videos, per-video metrics (ecformer_jax.evaluation.metrics: PSNR, SSIM, VFID features,
E_warp), the optional inpainting of the ground truth first (through `inference.inpaint`), the output files
and the printed table. Sizes are (H, W).
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from etils import epath

from ecformer_jax.data import video_io
from ecformer_jax.data.video_io import IMAGE_EXTS, VideoError
from ecformer_jax.errors import CheckpointError
from ecformer_jax.evaluation import metrics
from ecformer_jax.inference.common import check_checkpoint, format_size, load_checkpoint

SUMMARY = "summary.json"
PER_VIDEO = "per_video.csv"
PER_FRAME = "per_frame.csv"
FLOW_SOURCES = ("gt", "results")


# --- finding videos --------------------------------------------------------------------------------
def _has_images(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".") for p in folder.iterdir())


def find_videos(root: str | Path, what: str) -> tuple[dict[str, Path], bool]:
    """{video name: frame folder} under `root`, and whether root is itself one video's frame folder."""
    root = Path(root)
    if not root.exists():
        raise VideoError(f"{what} folder not found: {root}")
    if not root.is_dir():
        raise VideoError(f"{what} must be a folder (of video folders or of frames); got the file {root}")
    if _has_images(root):
        return {root.name: root}, True
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    videos = {p.name: p for p in subdirs if _has_images(p)}
    empty = [p.name for p in subdirs if p.name not in videos]
    if not videos:
        detail = f" (its sub-folders {empty[:5]} hold no images either)" if empty else ""
        raise VideoError(f"no videos in {what} folder {root}: expected <video>/<frame>.png|jpg folders or the frames "
                         f"of one video{detail}")
    if empty:
        raise VideoError(f"{what}: video folder(s) without frames in {root}: {', '.join(empty[:10])}")
    return videos, False


def pair_videos(results: str | Path, gt: str | Path, videos=None,
                only_results: bool = False) -> list[tuple[str, Path, Path]]:
    """[(name, result folder, gt folder)] sorted by name; errors name the missing videos."""
    res, res_single = find_videos(results, "--results")
    ref, ref_single = find_videos(gt, "--gt")
    if res_single or ref_single:
        if res_single != ref_single:
            one, many = ("--results", "--gt") if res_single else ("--gt", "--results")
            raise VideoError(f"{one} is a folder of frames (one video) but {many} holds video folders; give both "
                             "as <video>/<frame> folders or both as one video's frame folder")
        (name, r), (_, g) = next(iter(res.items())), next(iter(ref.items()))
        return [(name, r, g)]
    if videos:
        wanted = list(dict.fromkeys(videos))
        for what, root, found in (("--results", results, res), ("--gt", gt, ref)):
            missing = [v for v in wanted if v not in found]
            if missing:
                raise VideoError(f"--videos: {len(missing)} video(s) not in {what} ({root}): "
                                 f"{', '.join(missing[:10])}")
        return [(v, res[v], ref[v]) for v in sorted(wanted)]
    no_gt = sorted(set(res) - set(ref))
    if no_gt:
        raise VideoError(f"{len(no_gt)} result video(s) have no ground truth in {gt}: {', '.join(no_gt[:10])}")
    no_res = sorted(set(ref) - set(res))
    if no_res and not only_results:
        raise VideoError(f"{len(no_res)} ground-truth video(s) have no results in {results}: {', '.join(no_res[:10])}"
                         f"{' ...' if len(no_res) > 10 else ''}; pass --only-results to evaluate the {len(res)} "
                         "video(s) that have results, or --videos to choose")
    return [(v, res[v], ref[v]) for v in sorted(res)]


def mask_path(masks_root: Path, name: str, single: bool) -> Path:
    if single:
        return masks_root
    folder = masks_root / name
    if folder.is_dir():
        return folder
    for ext in IMAGE_EXTS:
        for cand in (masks_root / f"{name}{ext}", masks_root / f"{name}{ext.upper()}"):
            if cand.is_file():
                return cand
    raise VideoError(f"no masks for video '{name}' in {masks_root}: expected the folder {folder} or an image "
                     f"{masks_root / name}.png")


# --- one video -------------------------------------------------------------------------------------
@dataclass
class VideoResult:
    name: str
    frame_names: list
    psnr: np.ndarray
    ssim: np.ndarray
    hole_sq_err: float = float("nan")  # sum of squared errors inside the holes
    hole_values: int = 0
    e_warp: float | None = None
    real_feature: np.ndarray | None = None
    fake_feature: np.ndarray | None = None

    @property
    def psnr_hole(self) -> float:
        if not self.hole_values:
            return float("nan")
        mse = self.hole_sq_err / self.hole_values
        return float("inf") if mse == 0 else float(20 * np.log10(255.0 / np.sqrt(mse)))


def load_pair(name: str, res_dir: Path, gt_dir: Path, size=None):
    res_files = video_io.list_images(res_dir)
    gt_files = video_io.list_images(gt_dir)
    if len(res_files) != len(gt_files):
        raise VideoError(f"video '{name}': {len(res_files)} result frames in {res_dir} but {len(gt_files)} "
                         f"ground-truth frames in {gt_dir}")
    result = video_io.read_frames(res_dir)
    gt = video_io.read_frames(gt_dir, size=_wh(size))
    if result.shape != gt.shape:
        hint = "" if size else "; pass --size WxH to resize the ground truth (e.g. --size 432x240)"
        raise VideoError(f"video '{name}': result frames are {result.shape[2]}x{result.shape[1]} but the ground truth "
                         f"is {gt.shape[2]}x{gt.shape[1]}{' after --size' if size else ''} (W x H){hint}")
    return [p.name for p in res_files], result, gt


def evaluate_video(name, res_dir, gt_dir, size=None, masks=None, i3d=None, flow=None, flow_on="gt") -> VideoResult:
    frame_names, result, gt = load_pair(name, res_dir, gt_dir, size)
    m = None
    if masks is not None:  # read (and checked) before any metric is computed
        m = video_io.read_masks(masks, num_frames=len(result), size=_wh(size))
        if m.shape != result.shape[:3]:
            raise VideoError(f"video '{name}': masks in {masks} are {m.shape[2]}x{m.shape[1]} but the frames are "
                             f"{result.shape[2]}x{result.shape[1]} (W x H)")
    try:
        out = VideoResult(name, frame_names, metrics.frame_psnrs(gt, result), metrics.frame_ssims(gt, result))
    except ValueError as e:  # e.g. frames smaller than the SSIM window: name the video
        raise VideoError(f"video '{name}' ({res_dir}): {e}") from None
    if m is not None:
        d = result.astype(np.float64)[m] - gt.astype(np.float64)[m]
        out.hole_sq_err, out.hole_values = float(np.sum(d * d)), int(d.size)
    if i3d is not None:
        out.real_feature, out.fake_feature = i3d(gt), i3d(result)
    if flow is not None and len(result) >= 2:
        fw, bw = flow(gt if flow_on == "gt" else result)
        out.e_warp = float(np.mean(metrics.warping_errors(result, fw, bw)))
    return out


# --- optional: inpaint first ---------------------------------------------------------------------
def inpaint_videos(checkpoint, gt, masks, results, model_name=None, size=None, videos=None, dtype=None,
                   subvideo_length: int = 0, overwrite: bool = False, progress: bool = True) -> dict:
    """Complete every ground-truth video (or `videos`) with an inpainting checkpoint, as the anchors'
    evaluate.py does: frames (and masks) at `size` (H, W), the model's official window protocol through
    `inference.inpaint` (masks dilated 4 times, neighbour stride 5, a reference every 10 frames;
    subvideo_length 0 = references from the whole video, like evaluate.py), written as
    RESULTS/<video>/00000.png ... (RESULTS itself for a single-video --gt). Returns run statistics."""
    from ecformer_jax.inference import inpaint

    if masks is None:
        raise ValueError("--checkpoint (inpaint first) needs --masks: the holes to fill in every video")
    check_checkpoint(checkpoint, model_name, "inpainting")
    ref, single = find_videos(gt, "--gt")
    names = sorted(ref)
    if videos:
        missing = [v for v in videos if v not in ref]
        if missing:
            raise VideoError(f"--videos: {len(missing)} video(s) not in --gt ({gt}): {', '.join(missing[:10])}")
        names = sorted(dict.fromkeys(videos))
    results = Path(results)
    targets = {name: results if single else results / name for name in names}
    mask_paths = {name: mask_path(Path(masks), name, single) for name in names}
    if not overwrite:
        taken = [str(t) for t in targets.values() if t.is_dir() and _has_images(t)]
        if taken:
            raise FileExistsError(f"--results already holds frames for {len(taken)} video(s) ({', '.join(taken[:5])}); "
                                  "pass --overwrite to replace them or evaluate them without --checkpoint")
    for target in targets.values():
        video_io.check_writable(target)
    loaded = load_checkpoint(checkpoint, model_name, "inpainting", dtype)
    stats = {"model": loaded.name, "checkpoint": str(checkpoint), "videos": len(names), "frames": 0, "seconds": 0.0}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(names), unit="video", desc=f"inpaint ({loaded.name})", file=sys.stderr)
    try:
        for video in names:
            target = targets[video]
            if target.is_dir():  # --overwrite: drop the frames of an earlier run
                for f in target.iterdir():
                    if f.is_file() and f.suffix.lower() in IMAGE_EXTS:
                        f.unlink()
            done = inpaint(loaded, ref[video], mask_paths[video], target, overwrite=True,
                           subvideo_length=subvideo_length, input_size=size, side_by_side=False, progress=False,
                           verbose=False)
            stats["seconds"] += done["seconds"]
            stats["frames"] += done["frames"]
            for key in ("subvideo_length", "neighbor_stride", "ref_stride", "mask_dilation"):
                stats[key] = done[key]
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
    stats["frames_per_second"] = stats["frames"] / stats["seconds"] if stats["seconds"] else None
    return stats


# --- the evaluation -------------------------------------------------------------------------------------
def _finite_or_str(v):
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    return _finite_or_str(obj)


def _check_output(output, overwrite: bool):
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is a file; give a folder")
    if not overwrite:
        existing = [n for n in (SUMMARY, PER_VIDEO, PER_FRAME) if (output / n).exists()]
        if existing:
            raise FileExistsError(f"{output} already holds {', '.join(existing)}; pass --overwrite to replace them")
    video_io.check_writable(output / SUMMARY)


def _check_inputs(masks, i3d, flow_checkpoint, checkpoint, model_name):
    """The paths and names that can be checked before any video is read or any weights loaded."""
    if checkpoint is not None:
        check_checkpoint(checkpoint, model_name, "inpainting")
    if masks is not None and not epath.Path(masks).exists():
        raise VideoError(f"--masks not found: {masks}")
    for flag, what, path in (("--i3d", "I3D", i3d), ("--flow-checkpoint", "SPyNet", flow_checkpoint)):
        if path is not None and not epath.Path(path).exists():
            raise CheckpointError(f"{flag}: {what} weights not found: {path}")


def run(results, gt, output, masks=None, i3d=None, flow_checkpoint=None, size=None, videos=None,
        only_results=False, flow_on="gt", overwrite=False, progress=True, i3d_extractor=None,
        flow_estimator=None, checkpoint=None, model_name=None, dtype=None, subvideo_length=0) -> dict:
    """Evaluate the result videos of `results` against `gt`; returns the summary dict, also written with the
    per-frame and per-video tables into `output` (summary.json, per_video.csv, per_frame.csv).

    size: (H, W) to which the ground truth (bicubic) and masks (nearest) are resized; None keeps them.
    i3d / flow_checkpoint: paths (None: VFID / E_warp unavailable). i3d_extractor / flow_estimator: ready
    callables (tests, or callers that evaluate several folders) that take precedence over the paths.
    checkpoint (+ model_name, dtype, subvideo_length): inpaint the ground-truth videos into `results`
    first (`inpaint_videos`); needs masks.
    Raises ValueError (VideoError, CheckpointError) / FileExistsError with a message naming the problem.
    """
    from ecformer_jax.evaluation.i3d import I3DFeatures

    output = video_io.output_path(output)
    if flow_on not in FLOW_SOURCES:
        raise ValueError(f"flow_on must be one of {FLOW_SOURCES}; got {flow_on!r}")
    _check_output(output, overwrite)
    _check_inputs(masks, i3d, flow_checkpoint, checkpoint, model_name)
    inpainting = None
    if checkpoint is not None:
        inpainting = inpaint_videos(checkpoint, gt, masks, results, model_name, size, videos, dtype, subvideo_length,
                                    overwrite, progress)
    pairs = pair_videos(results, gt, videos, only_results)
    single = len(pairs) == 1 and Path(pairs[0][1]) == Path(results)
    if masks is not None:
        masks = Path(masks)
        if not masks.exists():
            raise VideoError(f"--masks not found: {masks}")
        mask_paths = {name: mask_path(masks, name, single) for name, _, _ in pairs}  # all missing ones fail early

    unavailable = {}
    if i3d_extractor is None and i3d is not None:
        i3d_extractor = I3DFeatures.from_checkpoint(i3d)
    if i3d_extractor is None:
        unavailable["vfid"] = "no I3D weights: pass --i3d i3d_rgb_imagenet.pt (or a folder converted with " \
                              "python -m ecformer_jax.convert --model i3d)"
    elif len(pairs) < 2:
        unavailable["vfid"] = f"VFID needs at least 2 videos for its covariances; {len(pairs)} evaluated"
    if flow_estimator is None and flow_checkpoint is not None:
        flow_estimator = metrics.SPyNetFlow.from_checkpoint(flow_checkpoint)
    if flow_estimator is None:
        unavailable["e_warp"] = "no flow estimator weights: pass --flow-checkpoint with the mmediting SPyNet .pth " \
                                "(spynet_20210409-c6c1bd09.pth) or a folder converted with --model spynet"

    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(pairs), unit="video", desc="evaluate", file=sys.stderr)
    per_video: list[VideoResult] = []
    try:
        for name, r, g in pairs:
            per_video.append(evaluate_video(name, r, g, size, mask_paths[name] if masks is not None else None,
                                            i3d_extractor if "vfid" not in unavailable else None,
                                            flow_estimator if "e_warp" not in unavailable else None, flow_on))
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()

    all_psnr = np.concatenate([v.psnr for v in per_video])
    all_ssim = np.concatenate([v.ssim for v in per_video])
    summary = {
        "videos": len(per_video),
        "frames": int(all_psnr.size),
        "psnr": float(np.mean(all_psnr)),
        "ssim": float(np.mean(all_ssim)),
        "psnr_infinite_frames": int(np.isinf(all_psnr).sum()),
    }
    if masks is not None:
        sq, n = sum(v.hole_sq_err for v in per_video), sum(v.hole_values for v in per_video)
        summary["psnr_hole"] = (float("nan") if n == 0 else float("inf") if sq == 0
                                else float(20 * np.log10(255.0 / np.sqrt(sq / n))))
    if "vfid" in unavailable:
        summary["vfid"], summary["vfid_unavailable"] = None, unavailable["vfid"]
    else:
        summary["vfid"] = metrics.vfid(np.stack([v.real_feature for v in per_video]),
                                       np.stack([v.fake_feature for v in per_video]))
    ewarps = [v.e_warp for v in per_video if v.e_warp is not None]
    if "e_warp" not in unavailable and not ewarps:
        unavailable["e_warp"] = "every video has a single frame; E_warp needs frame pairs"
    if "e_warp" in unavailable:
        summary["e_warp"], summary["e_warp_unavailable"] = None, unavailable["e_warp"]
    else:
        summary["e_warp"] = float(np.mean(ewarps))
        summary["e_warp_x100"] = 100.0 * summary["e_warp"]
        if len(ewarps) < len(per_video):
            summary["e_warp_note"] = f"{len(per_video) - len(ewarps)} single-frame video(s) have no E_warp"
    summary["seconds"] = time.perf_counter() - t0
    if inpainting is not None:
        summary["inpainting"] = inpainting
    summary["protocol"] = {
        "psnr": "per frame, float64, data_range 255; mean over all frames of all videos",
        "ssim": f"uniform {metrics.SSIM_WINDOW}x{metrics.SSIM_WINDOW} window, data_range 255, per channel then "
                "averaged (skimage structural_similarity / the anchors' compare_ssim); mean over all frames",
        "vfid": "Frechet distance of I3D (i3d_rgb_imagenet) Mixed_5c means, whole video in [0, 1], ground truth vs "
                "results",
        "e_warp": (f"Lai et al. warping error of the results, flows on the "
                   f"{'ground truth' if flow_on == 'gt' else 'results'} by {metrics.SPyNetFlow.description}; "
                   "mean over videos (e_warp_x100 = E_warp* in units of 1e-2)"),
        "psnr_hole": "PSNR of the squared error pooled over all hole pixels (masks > 0)",
    }
    def opt(path):
        return None if path is None else str(path)

    summary["inputs"] = {"results": str(results), "gt": str(gt), "masks": opt(masks),
                         "size": None if size is None else format_size(size), "i3d": opt(i3d),
                         "flow_checkpoint": opt(flow_checkpoint), "ewarp_flow_on": flow_on}
    write_outputs(output, per_video, summary, masks is not None)
    return summary


def write_outputs(output, per_video: list[VideoResult], summary: dict, with_masks: bool):
    """per_frame.csv, per_video.csv and summary.json into the folder `output` (local or remote), each through
    `video_io.atomic_output`: all three are written to temporaries first and moved into place at the end,
    summary.json last, so a failure leaves none of them (and an interruption at worst the tables without
    the summary)."""
    with contextlib.ExitStack() as stack:
        tmp_summary = stack.enter_context(video_io.atomic_output(output / SUMMARY))  # entered first: moved last
        tmp_video = stack.enter_context(video_io.atomic_output(output / PER_VIDEO))
        tmp_frame = stack.enter_context(video_io.atomic_output(output / PER_FRAME))
        with open(tmp_frame, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["video", "frame", "psnr", "ssim"])
            for v in per_video:
                for name, p, s in zip(v.frame_names, v.psnr, v.ssim):
                    w.writerow([v.name, name, f"{p:.6f}", f"{s:.6f}"])
        with open(tmp_video, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["video", "frames", "psnr", "ssim"] + (["psnr_hole"] if with_masks else []) + ["e_warp"])
            for v in per_video:
                row = [v.name, len(v.psnr), f"{np.mean(v.psnr):.6f}", f"{np.mean(v.ssim):.6f}"]
                if with_masks:
                    row.append(f"{v.psnr_hole:.6f}")
                row.append("" if v.e_warp is None else f"{v.e_warp:.8f}")
                w.writerow(row)
        with open(tmp_summary, "w") as f:
            json.dump(_clean({**summary, "per_video": [
                {"video": v.name, "frames": len(v.psnr), "psnr": float(np.mean(v.psnr)),
                 "ssim": float(np.mean(v.ssim)), **({"psnr_hole": v.psnr_hole} if with_masks else {}),
                 "e_warp": v.e_warp} for v in per_video]}), f, indent=1, allow_nan=False)


def format_table(summary: dict, per_video: list[dict] | None = None) -> str:
    per_video = per_video if per_video is not None else summary.get("per_video", [])
    hole = "psnr_hole" in summary
    width = max([5] + [len(v["video"]) for v in per_video])
    head = (f"{'video':<{width}}  {'frames':>6}  {'PSNR':>8}  {'SSIM':>7}" + ("  PSNR(hole)" if hole else "")
            + "    E_warp")
    lines = [head, "-" * len(head)]

    def fmt(v, spec):
        return "-" if v is None or v == "" else (str(v) if isinstance(v, str) else format(v, spec))

    def row(name, v):
        return (f"{name:<{width}}  {v['frames']:>6}  {fmt(v['psnr'], '8.3f')}  {fmt(v['ssim'], '7.4f')}"
                + (f"  {fmt(v.get('psnr_hole'), '10.3f')}" if hole else "") + f"  {fmt(v.get('e_warp'), '8.6f'):>8}")

    lines += [row(v["video"], v) for v in per_video]
    lines.append("-" * len(head))
    lines.append(row("all", summary))
    lines.append(f"PSNR / SSIM: mean over all {summary['frames']} frames of {summary['videos']} video(s)")
    if summary.get("vfid") is None:
        lines.append(f"VFID: unavailable ({summary.get('vfid_unavailable')})")
    else:
        lines.append(f"VFID: {summary['vfid']:.4g}")
    if summary.get("e_warp") is None:
        lines.append(f"E_warp: unavailable ({summary.get('e_warp_unavailable')})")
    else:
        lines.append(f"E_warp: {summary['e_warp']:.6f} (x100 = {summary['e_warp_x100']:.4f}; SPyNet flows, not "
                     "comparable with FlowNet2-based tables)")
    return "\n".join(lines)


def _wh(size):
    """(H, W) -> video_io's (width, height); None stays None."""
    return None if size is None else (size[1], size[0])
