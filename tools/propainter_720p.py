#!/usr/bin/env python
"""ProPainter on a long high-resolution clip: our inpaint pipeline and (optionally) the official
inference_propainter.py, each in its own process with a time limit, with wall time and peak RSS.

    python tools/propainter_720p.py --workdir DIR [--official /path/to/ProPainter] [--size 1280x720]
        [--frames 80] [--limit-min 25] [--dtype bfloat16] [--skip-ours]

The clip: the tennis frames and masks (../shared/data/tennis, --data) resized to --size (bicubic frames,
nearest masks), played back and forth until --frames frames (tennis has 70). The weights: the parity
fixtures' as the three release files (`propainter_vs_official.write_weights`). Ours: `ecformer_jax.inference.
propainter.inpaint` (what `python -m ecformer_jax.inpaint --model propainter` runs) with the official options,
writing PNG frames to DIR/ours. The official side: the unmodified script through tools/official_shims.py, as in
propainter_vs_official.py, writing DIR/official/frames/frames. Each side's peak RSS comes from os.wait4 on
its process. When both finish, the frames are compared as in propainter_vs_official.py (max |diff|, fraction
exact inside the dilated holes). Everything is written to DIR/report.json and printed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = Path(__file__).resolve().parent

_OURS = """
import json, sys, time
sys.path.insert(0, {root!r})
import jax
from ecformer_jax.inference.propainter import inpaint
s = inpaint({weights!r}, {frames!r}, {masks!r}, {output!r}, overwrite=True, dtype={dtype!r}, side_by_side=False)
try:
    s["jax_memory_stats"] = jax.devices()[0].memory_stats()
except Exception as e:  # the CPU backend may not report
    s["jax_memory_stats"] = repr(e)
print("SUMMARY " + json.dumps(s, default=str))
"""


def make_clip(data: Path, workdir: Path, size: tuple[int, int], frames: int) -> None:
    """frames/ and masks/ of `frames` PNGs at size (w, h), going back and forth over the source clip."""
    from PIL import Image

    exts = (".png", ".jpg", ".jpeg")
    src_f = sorted(p for p in (data / "frames").iterdir() if p.suffix.lower() in exts)
    src_m = sorted(p for p in (data / "masks").iterdir() if p.suffix.lower() in exts)
    idx, i, step = [], 0, 1
    while len(idx) < frames:
        idx.append(i)
        if not 0 <= i + step < len(src_f):
            step = -step
        i = max(0, min(len(src_f) - 1, i + step))
    (workdir / "frames").mkdir(parents=True, exist_ok=True)
    (workdir / "masks").mkdir(parents=True, exist_ok=True)
    for k, j in enumerate(idx):
        Image.open(src_f[j]).convert("RGB").resize(size, Image.BICUBIC).save(workdir / "frames" / f"{k:05d}.png")
        Image.open(src_m[min(j, len(src_m) - 1)]).convert("L").resize(size, Image.NEAREST).save(
            workdir / "masks" / f"{k:05d}.png")


def timed(cmd: list[str], cwd: Path, limit_s: float, log: Path) -> dict:
    """Run cmd with stdout+stderr to log; wall seconds, peak RSS (MiB) and how it ended."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > limit_s:
                os.killpg(proc.pid, 9)
                pid, status, usage = os.wait4(proc.pid, 0)
                timed_out = True
                break
            time.sleep(1.0)
    code = os.waitstatus_to_exitcode(status)
    return {"seconds": time.perf_counter() - t0, "max_rss_mib": usage.ru_maxrss / 1024, "exit_code": code,
            "timed_out": timed_out, "killed_by_signal": -code if code < 0 else None, "log": str(log)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--official", default=None, help="checkout of sczhou/ProPainter (omit: ours only)")
    p.add_argument("--size", default="1280x720", help="WxH")
    p.add_argument("--frames", type=int, default=80)
    p.add_argument("--limit-min", type=float, default=25.0, help="time limit per side")
    p.add_argument("--dtype", default=None, choices=[None, "float32", "bfloat16"])
    p.add_argument("--skip-ours", action="store_true", help="reuse WORKDIR/ours")
    p.add_argument("--parity-dir", default=str(ROOT.parent / "shared" / "parity"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "tennis"))
    args = p.parse_args(argv)

    from propainter_vs_official import _RUNNER, compare, write_weights

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    w, h = (int(v) for v in args.size.lower().split("x"))
    if not (workdir / "frames").is_dir():
        make_clip(Path(args.data), workdir, (w, h), args.frames)
    if not (workdir / "weights" / "ProPainter.pth").is_file():
        write_weights(Path(args.parity_dir), workdir / "weights")
    limit = args.limit_min * 60
    report: dict = {"size": [w, h], "frames": args.frames, "limit_s": limit}
    env_note = {"JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS")}

    if not args.skip_ours:
        code = _OURS.format(root=str(ROOT), weights=str(workdir / "weights"), frames=str(workdir / "frames"),
                            masks=str(workdir / "masks"), output=str(workdir / "ours"), dtype=args.dtype)
        r = timed([sys.executable, "-c", code], workdir, limit, workdir / "ours.log")
        for line in (workdir / "ours.log").read_text().splitlines():
            if line.startswith("SUMMARY "):
                s = json.loads(line[8:])
                r.update({k: s.get(k) for k in ("stages", "seconds", "peak_host_memory_mb", "jax_memory_stats")})
        report["ours"] = r
        print(f"ours: {json.dumps(r)}", file=sys.stderr)

    if args.official:
        official = Path(args.official).resolve()
        argv_off = ["--video", str(workdir / "frames"), "--mask", str(workdir / "masks"), "--output",
                    str(workdir / "official"), "--save_frames"]
        code = _RUNNER.format(tools=str(TOOLS), official=str(official), argv=argv_off,
                              script=str(official / "inference_propainter.py"))
        r = timed([sys.executable, "-c", code], workdir, limit, workdir / "official.log")
        report["official"] = r
        print(f"official: {json.dumps(r)}", file=sys.stderr)
        ours_ok = report.get("ours", {"exit_code": 0})["exit_code"] == 0
        if r["exit_code"] == 0 and ours_ok and (workdir / "ours").is_dir():
            report["comparison"] = compare(workdir, args.frames)
            report["comparison"].pop("max_abs_diff_per_frame", None)
    report["env"] = env_note
    (workdir / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(TOOLS))
    sys.exit(main())
