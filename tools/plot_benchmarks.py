#!/usr/bin/env python
"""Plot side-by-side benchmark results (tools/benchmark.py --against-official JSON files) as one PNG.

    python tools/plot_benchmarks.py results/*.json --output docs/benchmarks.png

Four panels: seconds per clip and peak host memory against the clip length (runs at one resolution),
and the same against the frame height (runs at one clip length), one line per model and side (JAX solid,
official PyTorch dashed).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict


def load(paths):
    runs = []
    for path in paths:
        with open(path) as f:
            d = json.load(f)
        if "jax" not in d or "torch" not in d:
            raise SystemExit(f"{path}: not a --against-official result (no 'jax' and 'torch' sections)")
        runs.append(d)
    return runs


def series(runs, x_key, fixed_key, fixed_value):
    """{(model, side): [(x, seconds, peak GB)]} for the runs whose `fixed_key` equals `fixed_value`."""
    out = defaultdict(list)
    for d in runs:
        if d[fixed_key] != fixed_value:
            continue
        for side in ("jax", "torch"):
            out[(d["model"], side)].append((d[x_key], d[side]["step_s"], d[side]["peak_host_bytes"] / 2**30))
    return {k: sorted(v) for k, v in out.items() if len({p[0] for p in v}) > 1}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="JSON files written by benchmark.py --against-official --output")
    p.add_argument("--output", required=True, help="the PNG to write")
    p.add_argument("--height", type=int, default=240, help="frame height of the clip-length panels")
    p.add_argument("--frames", type=int, default=8, help="clip length of the resolution panels")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load(args.results)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = [(series(runs, "frames", "height", args.height), "frames per clip", f"{args.height}p"),
              (series(runs, "height", "frames", args.frames), "frame height (p)", f"{args.frames} frames")]
    colors = {}
    for col, (data, xlabel, fixed) in enumerate(panels):
        for (model, side), pts in sorted(data.items()):
            color = colors.setdefault(model, f"C{len(colors)}")
            style = "-" if side == "jax" else "--"
            label = f"{model} ({'JAX' if side == 'jax' else 'official PyTorch'})"
            xs = [q[0] for q in pts]
            axes[0, col].plot(xs, [q[1] for q in pts], style, marker="o", color=color, label=label)
            axes[1, col].plot(xs, [q[2] for q in pts], style, marker="o", color=color, label=label)
        axes[0, col].set_title(f"inference time, {fixed}")
        axes[1, col].set_title(f"peak host memory, {fixed}")
        axes[0, col].set_ylabel("seconds per clip")
        axes[1, col].set_ylabel("GiB")
        for row in (0, 1):
            axes[row, col].set_xlabel(xlabel)
            axes[row, col].grid(alpha=0.3)
            if data:
                axes[row, col].legend(fontsize=7)
    cpus = {d.get("cpus") for d in runs}
    fig.suptitle(f"JAX vs the official PyTorch code, float32, batch 1, CPU ({', '.join(map(str, cpus))} cores)")
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output} from {len(runs)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
