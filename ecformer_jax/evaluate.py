"""Evaluate completed videos against their ground truth the way the video-inpainting papers do.

    python -m ecformer_jax.evaluate --results results/davis --gt DAVIS/JPEGImages/480p --size 432x240 \
        --i3d i3d_rgb_imagenet.pt --flow-checkpoint spynet_20210409-c6c1bd09.pth --output eval/davis

Layout (frames of a video are paired by their sorted file order; .png / .jpg / any image type):
  --results DIR  DIR/<video>/<frame>.png - one folder of completed frames per video, e.g. what
                 `python -m ecformer_jax.inpaint` writes for a frame-folder output (00000.png, ...);
                 or DIR itself holding the frames of ONE video.
  --gt DIR       the same layout for the ground truth (DAVIS JPEGImages/480p, YouTube-VOS JPEGImages/...).
                 Every result video needs a ground-truth video of the same name; ground-truth videos without
                 results are an error unless --only-results (or --videos) says which ones to evaluate.
  --masks DIR    optional: DIR/<video>/<frame>.png (one per frame) or DIR/<video>.png (one for all frames),
                 > 0 = hole (single-video mode: a folder of masks or one image). Adds the PSNR inside the holes.
  --size WxH     resize the ground truth (PIL bicubic, as the anchors' test loaders) and masks (nearest) to
                 WxH first; the standard protocol evaluates at 432x240. Results must already have that size.

Metrics (ecformer_jax.evaluation.metrics; the work is ecformer_jax.evaluation.run):
  PSNR    per frame in float64 on [0, 255]; the summary averages ALL frames of ALL videos (as the anchors).
  SSIM    the anchors' compare_ssim(win_size=65, data_range=255, multichannel): uniform 65x65 window.
  VFID    Frechet distance between I3D features (Mixed_5c mean, whole video in [0, 1]) of the ground-truth
          and result videos; needs --i3d (i3d_rgb_imagenet.pt or a converted folder) and >= 2 videos,
          else reported as unavailable with the reason - never as a number.
  E_warp  Lai et al.'s flow warping error of the results, with flows and occlusions estimated by SPyNet
          (--flow-checkpoint: mmediting spynet .pth or a converted folder) on the ground truth (default;
          --ewarp-flow-on results to use the results' own motion). The papers used FlowNet2, so the values
          are comparable between methods evaluated here, not with published tables. Without a flow
          checkpoint it is reported as unavailable.
  Results are evaluated as written: they should be composited (known pixels = the input's), like the anchors'
  comp frames and what `python -m ecformer_jax.inpaint` writes. The anchors compute PSNR / SSIM on their
  in-memory composited frames (frames blended by two windows still float); this command reads saved frames
  (uint8), exactly like the anchors' VFID input and their --save_results PNGs.

Inpaint first (optional): --checkpoint CKPT [--model NAME] (a .pth, a converted folder or a training workdir)
completes every ground-truth video with its masks (required) through the model's official window protocol
(ecformer_jax.inference.inpaint, references from the whole video as in evaluate.py) at --size, writes the
frames into --results/<video>/, then evaluates:
    python -m ecformer_jax.evaluate --model e2fgvi --checkpoint E2FGVI-CVPR22.pth --gt DAVIS/JPEGImages/480p \
        --masks random_mask_stationary_w432_h240 --size 432x240 --results results/e2fgvi --output eval/e2fgvi

Outputs in --output: per_frame.csv, per_video.csv, summary.json; the table is printed.
The three files are written to temporaries and moved into place at the end (summary.json last).
Exit status 2 with a one-line message for bad input (missing videos, frame count / size mismatches, empty
folders, unreadable frames), an existing output without --overwrite or an unwritable one (docs/reliability.md).
"""
from __future__ import annotations

import argparse
import json
import sys

from etils import epath

from ecformer_jax.errors import USER_ERRORS, report
from ecformer_jax.evaluation.run import FLOW_SOURCES, PER_FRAME, PER_VIDEO, SUMMARY, format_table, run
from ecformer_jax.huge_pages import restart_with_huge_pages
from ecformer_jax.inference.common import parse_size


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ecformer_jax.evaluate", description=__doc__.split("\n\n")[0],
                                epilog="See the module docstring (python -m pydoc ecformer_jax.evaluate) for layouts "
                                       "and metric definitions.")
    p.add_argument("--results", required=True,
                   help="folder of <video>/<frame>.png result folders (or one video's frames)")
    p.add_argument("--gt", required=True, help="folder of <video>/<frame>.jpg|png ground-truth folders (same layout)")
    p.add_argument("--output", required=True, help="folder for per_frame.csv, per_video.csv and summary.json")
    p.add_argument("--masks", default=None, help="optional <video>/<frame>.png or <video>.png masks (adds hole PSNR)")
    p.add_argument("--i3d", default=None, help="i3d_rgb_imagenet.pt or a converted folder (enables VFID)")
    p.add_argument("--flow-checkpoint", default=None,
                   help="SPyNet weights: mmediting spynet .pth or a converted folder (enables E_warp)")
    p.add_argument("--ewarp-flow-on", default="gt", choices=FLOW_SOURCES,
                   help="estimate E_warp's flows / occlusions on the ground truth (default) or on the results")
    p.add_argument("--size", default=None,
                   help="resize ground truth (bicubic) and masks (nearest) to WxH, e.g. 432x240")
    p.add_argument("--videos", default=None, help="comma-separated video names to evaluate (default: all)")
    p.add_argument("--only-results", action="store_true",
                   help="evaluate the videos present in --results, ignoring ground-truth videos without results")
    p.add_argument("--checkpoint", default=None,
                   help="inpaint the ground-truth videos into --results first with this checkpoint (.pth with --model, "
                        "a converted folder or a training workdir); needs --masks")
    p.add_argument("--model", default=None,
                   help="inpainting model of a .pth --checkpoint (sttn, fuseformer, e2fgvi, ...)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="compute dtype of --checkpoint")
    p.add_argument("--subvideo-length", type=int, default=0,
                   help="with --checkpoint: reference frames from this many frames around each window; 0 (default) "
                        "= the whole video, as the anchors' evaluate.py")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in --output (and --results "
                   "frames with --checkpoint)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if argv is None:  # the command line, not a caller's list
        restart_with_huge_pages()

    try:
        run(args.results, args.gt, args.output, masks=args.masks, i3d=args.i3d, flow_checkpoint=args.flow_checkpoint,
            size=parse_size(args.size, "--size"),
            videos=[v for v in args.videos.split(",") if v] if args.videos else None,
            only_results=args.only_results, flow_on=args.ewarp_flow_on, overwrite=args.overwrite,
            progress=not args.quiet, checkpoint=args.checkpoint, model_name=args.model, dtype=args.dtype,
            subvideo_length=args.subvideo_length)
    except USER_ERRORS as e:  # bad input, checkpoint, option or output: one line, status 2, no traceback
        return report(e)
    if args.model is not None and args.checkpoint is None:
        print("note: --model only matters with --checkpoint", file=sys.stderr)
    out = epath.Path(args.output)
    print(format_table(json.loads((out / SUMMARY).read_text())))
    print(f"written: {out / PER_VIDEO}, {out / PER_FRAME}, {out / SUMMARY}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
