"""x4 video super-resolution with VSR-Transformer, following the official test protocol.

    python -m ecformer_jax.upscale --checkpoint net_g_latest.pth --video LR.mp4 --output SR.mp4
    python -m ecformer_jax.upscale --checkpoint vimeo.pth --model vsr_transformer_vimeo \
        --video lr_frames/ --output sr_frames/ --dtype bfloat16

--checkpoint: an official .pth (`{'params': state_dict}`, 'module.' prefixes allowed), a folder written
by `python -m ecformer_jax.convert`, or a training workdir of `python -m ecformer_jax.train` (its latest
checkpoint; the model and its options come from the workdir's config.json). --video: a video file or a
folder of frames; --output: a video file (by its suffix, e.g. .mp4) or a folder that receives 00000.png, ...

Every frame is the centre frame of a num_frames window (reflection-circle padding at the clip ends),
computed on 64x64 LR crops at stride 32 and pasted back as the official `forward_crop` does; the
result is clamped and rounded to uint8 (ecformer_jax.inference.vsr; the work is ecformer_jax.inference.upscale).
Frames of any size >= 64x64 work. The input frames stay on the host; batches of crops go to the device. At the
end a side-by-side video (bicubic x4 input | result) is written next to the output: SR_side_by_side.mp4.
Outputs are never replaced without --overwrite and appear only when complete (temporaries moved into place).
Errors (bad input, a checkpoint of another model, an unwritable output) are one line on stderr with exit
status 2 (docs/reliability.md).
"""
from __future__ import annotations

import argparse
import sys

from ecformer_jax.errors import USER_ERRORS, report
from ecformer_jax.huge_pages import restart_with_huge_pages
from ecformer_jax.inference.upscale import upscale


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ecformer_jax.upscale", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True,
                   help="official .pth, a converted checkpoint folder or a training workdir (its latest checkpoint)")
    p.add_argument("--video", required=True, help="LR video file or folder of frames")
    p.add_argument("--output", required=True, help="output video file (.mp4, ...) or folder of PNG frames")
    p.add_argument("--model", default=None,
                   help="vsr_transformer (REDS, 5 frames; default for .pth) or vsr_transformer_vimeo (7 frames); "
                        "a converted folder names its own model")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="compute dtype (default float32)")
    p.add_argument("--batch-size", type=int, default=16, help="64x64 crops per device call (default 16)")
    p.add_argument("--overlap", type=int, default=32, help="crop overlap in LR pixels (official test: 32)")
    p.add_argument("--fps", type=float, default=None, help="output frame rate (default: the input's, else 24)")
    p.add_argument("--no-side-by-side", action="store_true", help="skip the bicubic | result comparison video")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if argv is None:  # the command line, not a caller's list
        restart_with_huge_pages()

    try:
        summary = upscale(args.checkpoint, args.video, args.output, model_name=args.model, overwrite=args.overwrite,
                          dtype=args.dtype, batch_size=args.batch_size, overlap=args.overlap, fps=args.fps,
                          side_by_side=not args.no_side_by_side, progress=not args.quiet)
    except USER_ERRORS as e:  # bad input, checkpoint, option or output: one line, status 2, no traceback
        return report(e)
    (h, w), (oh, ow) = summary["input_size"], summary["output_size"]
    print(f"{summary['frames']} frames {w}x{h} -> {ow}x{oh} in {summary['seconds']:.1f}s: {summary['output']}"
          + (f" (side by side: {summary['side_by_side']})" if "side_by_side" in summary else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
