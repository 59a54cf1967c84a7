"""End-to-end proof that a short VSR-Transformer training beats bicubic on a real clip (issue #7).

    python tools/vsr_tennis_proof.py --frames ../shared/data/tennis/frames --out /tmp/vsr_proof

What it does, with the real entry points only (each one a subprocess, as a user would type it):

1. ground truth: every frame of the clip resized to --width x --height (PIL bicubic, the resize the
   training data source applies itself; the model needs 64x64 LR crops, so frames must be >= 256 high:
   the 432x240 tennis clip becomes 460x256). Frames [0, --train-frames) are for training, the rest are
   held out and never seen by the trainer;
2. `python -m ecformer_jax.train --config vsr_transformer:<variant> --workdir OUT/run
   --config.data.path=FRAMES --config.data.split_json=OUT/train_split.json` (the split file
   {"<folder>": train_frames} limits the folder to its first train_frames frames);
3. LR clip: the held-out ground-truth frames downscaled x4 (PIL bicubic, as the trainer degrades its crops);
   `python -m ecformer_jax.upscale --checkpoint OUT/run --video OUT/test_lr --output OUT/sr` (the training
   workdir's latest checkpoint; converting it with `python -m ecformer_jax.convert` gives the same
   parameters);
4. PSNR (float64 over uint8 frames, whole frame, no border crop, averaged over frames) of the upscaled
   frames, of PIL bicubic x4 and of bilinear x4 (the model's own base, torch-style align_corners=False)
   against the ground truth. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two uint8 frames, float64, over the whole frame."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10.0 * np.log10(255.0**2 / max(mse, 1e-12)))


def bilinear_x4(frames: np.ndarray) -> np.ndarray:
    """The model's base image: bilinear x4 (align_corners=False), rounded to uint8."""
    import jax.numpy as jnp

    from ecformer_jax.layers.resize import upsample_bilinear

    n, h, w, _ = frames.shape
    x = jnp.asarray(frames, jnp.float32) / 255.0
    up = upsample_bilinear(x, (4 * h, 4 * w), align_corners=False, scale_factor=4.0)
    return np.asarray(jnp.round(jnp.clip(up, 0, 1) * 255.0), np.uint8)


def run(cmd: list[str], log: Path) -> float:
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"command failed ({proc.returncode}), see {log}:\n" + log.read_text()[-3000:])
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", default=str(ROOT.parent / "shared" / "data" / "tennis" / "frames"),
                   help="folder of the clip's frames")
    p.add_argument("--out", required=True,
                   help="work folder (created; an existing OUT/run is resumed by the trainer, so use a fresh one)")
    p.add_argument("--config", default="vsr_transformer:tiny_clip",
                   help="preset NAME[:VARIANT] or FILE.py[:VARIANT]")
    p.add_argument("--width", type=int, default=460)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--train-frames", type=int, default=55, help="frames [0, N) train; the rest are held out")
    p.add_argument("--steps", type=int, default=None, help="override config num_steps")
    p.add_argument("--skip-train", action="store_true", help="reuse OUT/run (evaluate only)")
    p.add_argument("overrides", nargs="*", help="extra --config.x=y flags for the trainer (after --)")
    args = p.parse_args(argv)

    from PIL import Image

    from ecformer_jax.data import video_io
    from ecformer_jax.data.pipeline import bicubic_downscale
    from ecformer_jax.upscale import bicubic_x4

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    frames_dir = Path(args.frames).resolve()
    files = video_io.list_images(frames_dir)
    n = len(files)
    if not 0 < args.train_frames < n:
        sys.exit(f"--train-frames must be in (0, {n})")
    gt = np.stack([video_io.resize(video_io.read_image(f), (args.width, args.height), Image.BICUBIC)
                   for f in files[args.train_frames:]])
    lr = bicubic_downscale(gt, 4)
    lr_dir = out / "test_lr"
    lr_dir.mkdir(exist_ok=True)
    for i, f in enumerate(lr):
        Image.fromarray(f).save(lr_dir / f"{i:05d}.png")
    split = out / "train_split.json"
    split.write_text(json.dumps({frames_dir.name: args.train_frames}))

    run_dir, sr_dir = out / "run", out / "sr"
    train_s = None
    if not args.skip_train:
        cmd = [sys.executable, "-m", "ecformer_jax.train", f"--config={args.config}", f"--workdir={run_dir}",
               f"--config.data.path={frames_dir}", f"--config.data.split_json={split}",
               f"--config.data.width={args.width}", f"--config.data.height={args.height}"]
        if args.steps is not None:  # one cosine period over the run, as tiny_clip has
            cmd += [f"--config.num_steps={args.steps}", f"--config.optim.periods=({args.steps},)"]
        train_s = run(cmd + list(args.overrides), out / "train.log")
    up_s = run([sys.executable, "-m", "ecformer_jax.upscale", f"--checkpoint={run_dir}", f"--video={lr_dir}",
                f"--output={sr_dir}", "--overwrite", "--quiet", "--no-side-by-side"], out / "upscale.log")
    sr = video_io.read_frames(sr_dir)
    if sr.shape != gt.shape:
        sys.exit(f"upscaled frames {sr.shape} do not match the ground truth {gt.shape}")
    bic, bil = bicubic_x4(lr), bilinear_x4(lr)
    per = [(psnr(s, g), psnr(c, g), psnr(b, g)) for s, c, b, g in zip(sr, bic, bil, gt)]
    m = np.mean(per, axis=0)
    with open(run_dir / "config.json") as f:
        cfg = json.load(f)
    steps = sorted(int(d) for d in os.listdir(run_dir / "checkpoints") if d.isdigit())[-1]
    result = {
        "psnr_model": round(float(m[0]), 3), "psnr_bicubic": round(float(m[1]), 3),
        "psnr_bilinear": round(float(m[2]), 3), "beats_bicubic": bool(m[0] > m[1]),
        "frames_won": int(sum(s > c for s, c, _ in per)), "steps": steps,
        "train_seconds": None if train_s is None else round(train_s, 1), "upscale_seconds": round(up_s, 1),
        "config": args.config, "overrides": list(args.overrides), "batch_size": cfg["batch_size"],
        "frames": str(frames_dir), "size": [args.width, args.height],
        "train_frames": [0, args.train_frames - 1], "test_frames": [args.train_frames, n - 1],
        "psnr": "float64 on uint8 frames, whole frame, mean over the held-out frames",
    }
    print(json.dumps(result, indent=1))
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
