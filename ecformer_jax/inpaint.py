"""Video inpainting with any registered generator, following each model's official test protocol.

    python -m ecformer_jax.inpaint --model e2fgvi_hq --checkpoint E2FGVI-HQ-CVPR22.pth \
        --video tennis.mp4 --mask tennis_mask/ --output result.mp4
    python -m ecformer_jax.inpaint --checkpoint converted_sttn/ --video frames/ --mask mask.png \
        --output result_frames/ --dtype bfloat16

--checkpoint: an official .pth (converted on the fly; --model names the model), a folder written by
`python -m ecformer_jax.convert` or a training workdir of `python -m ecformer_jax.train` (its latest
checkpoint); both name their own model. --video: a video file or a folder of frames. --mask: a
folder of mask images (one per frame, sorted by name), one image for every frame, or a video; pixels
whose grey value is > 0 are holes, as in the official scripts, so anti-aliased edges count (> 127 for a
video, whose compression blurs the values). Grayscale, RGBA, 16-bit and upper-case (.PNG, .MP4) inputs
work. --output: a video file (by its suffix, e.g. .mp4) or a folder that receives 00000.png, 00001.png, ...

Protocol (ecformer_jax.inference.protocol; the work is ecformer_jax.inference.inpaint): masks dilated (3x3
cross, --mask-dilation 4 times); windows every --neighbor-length/2 frames of the neighbours [f - L/2, f + L/2]
plus a reference frame every --ref-stride frames taken from the --subvideo-length frames around the window; predictions
truncated to uint8, composited with the known pixels, overlapping windows blended 0.5/0.5. Fixed-size
models (STTN, FuseFormer, DSTT, E2FGVI) run at 432x240 and are resized back (choose another size with
--resize WxH); E2FGVI-HQ and size-free models run at the video's size (scaled by --resize-ratio),
mirror-padded to the multiple they need and cropped back. The video stays in host memory; one window
at a time goes to the device, so device memory does not grow with the video's length.

ProPainter (--model propainter) runs the official inference_propainter.py pipeline instead
(ecformer_jax.inference.propainter): RAFT flows (--raft-iter 20), flow completion and image propagation
over windows of --subvideo-length 80 frames, then generator windows every --neighbor-length/2 frames with
references every --ref-stride frames; masks dilated --mask-dilation 4 times; processed at the video's size
(or --resize / --resize-ratio) rounded down to multiples of 8. Its --checkpoint is the folder holding
ProPainter.pth, recurrent_flow_completion.pth and raft-things.pth (official files or converted folders of
propainter / recurrent_flow_completion / raft), or the three paths separated by commas; --dtype bfloat16
stands for the script's --fp16 (RAFT stays float32).

At the end a side-by-side video (input with the mask in green | result) is written next to the output
(OUT_side_by_side.mp4) and the frames/s achieved are printed. Existing outputs are never replaced
without --overwrite; outputs are written to temporaries and moved into place when complete (a gs:// output
through etils.epath), so a failure leaves none. Errors (bad input, mismatched masks or checkpoint, an
unwritable output) are one line on stderr with exit status 2, found before the model is loaded where
possible (docs/reliability.md).
"""
from __future__ import annotations

import argparse
import sys

from ecformer_jax.errors import USER_ERRORS, report
from ecformer_jax.huge_pages import restart_with_huge_pages
from ecformer_jax.inference import protocol
from ecformer_jax.inference.common import parse_size
from ecformer_jax.inference.inpaint import inpaint


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ecformer_jax.inpaint", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None,
                   help="registered inpainting model (sttn, fuseformer, dstt, e2fgvi, e2fgvi_hq, ..., propainter); "
                        "required with a .pth, a converted folder names its own")
    p.add_argument("--checkpoint", required=True,
                   help="official .pth, a converted checkpoint folder or a training workdir (its latest checkpoint); "
                        "propainter: the folder holding ProPainter.pth, recurrent_flow_completion.pth and "
                        "raft-things.pth, or the three paths comma-separated")
    p.add_argument("--video", required=True, help="video file or folder of frames")
    p.add_argument("--mask", required=True, help="folder of mask images, one mask image for all frames, or a video")
    p.add_argument("--output", required=True, help="output video file (.mp4, ...) or folder of PNG frames")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="compute dtype (default float32)")
    p.add_argument("--neighbor-length", type=int, default=None,
                   help="local frames around each window centre: windows every L/2 frames cover [f - L/2, f + L/2] "
                        "(official: 10, i.e. neighbour stride 5)")
    p.add_argument("--ref-stride", type=int, default=None, help="a reference frame every N frames (official: 10)")
    p.add_argument("--subvideo-length", type=int, default=protocol.SUBVIDEO_LENGTH,
                   help="reference frames come from this many frames around each window, which bounds the device "
                        "memory; 0 = the whole video (the official scripts, memory grows with the length)")
    p.add_argument("--resize", default=None, metavar="WxH",
                   help="processing size (default: the model's: 432x240 for fixed-size models, else the video's)")
    p.add_argument("--resize-ratio", type=float, default=1.0,
                   help="scale the video's size for processing (models without a fixed size)")
    p.add_argument("--mask-dilation", type=int, default=None, help="3x3-cross dilations of the masks (official: 4)")
    p.add_argument("--raft-iter", type=int, default=None, help="propainter: RAFT iterations (official: 20)")
    p.add_argument("--frames", default=None, metavar="START:END",
                   help="inpaint and write only frames START..END-1 (from 0; '10:' to the end), running only the "
                        "windows they need; the rest of the video is their context, so the values equal a whole run")
    p.add_argument("--fps", type=float, default=None, help="output frame rate (default: the input's, else 24)")
    p.add_argument("--no-side-by-side", action="store_true", help="skip the input | result comparison video")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if argv is None:  # the command line, not a caller's list
        restart_with_huge_pages()

    try:
        frame_range = protocol.parse_frame_range(args.frames)
        summary = inpaint(args.checkpoint, args.video, args.mask, args.output, model_name=args.model,
                          overwrite=args.overwrite, dtype=args.dtype, neighbor_length=args.neighbor_length,
                          ref_stride=args.ref_stride, subvideo_length=args.subvideo_length,
                          resize=parse_size(args.resize, "--resize"), resize_ratio=args.resize_ratio,
                          mask_dilation=args.mask_dilation, fps=args.fps, side_by_side=not args.no_side_by_side,
                          progress=not args.quiet, raft_iter=args.raft_iter, frame_range=frame_range)
    except USER_ERRORS as e:  # bad input, checkpoint, option or output: one line, status 2, no traceback
        return report(e)
    h, w = summary["size"]
    print(f"{summary['frames']} frames {w}x{h} inpainted in {summary['seconds']:.1f}s "
          f"({summary['frames_per_second']:.2f} frames/s, {summary['windows']} windows, "
          f"{summary['compiled_shapes']} window shape(s); peak host memory "
          f"{summary['peak_host_memory_mb']:.0f} MiB): {summary['output']}"
          + (f" (side by side: {summary['side_by_side']})" if "side_by_side" in summary else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
