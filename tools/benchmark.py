#!/usr/bin/env python
"""Speed and memory of one model, as one JSON object on stdout.

    python tools/benchmark.py --model sttn --batch 1 --frames 5 --height 240 --width 432 --dtype float32 --mode infer
    python tools/benchmark.py --model e2fgvi_hq --frames 8 --num-local 5 --mode train

Reports tracing+compile time apart from the steady state (median of --iters timed runs after one
warm-up), frames per second, peak host memory (RSS of this process) and peak device memory where the
backend reports it (GPU/TPU; not the CPU). infer: the generator's forward pass with random official-init
weights. train: one full training iteration of the trainer (discriminator update, then generator update)
with the model's paper config.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--width", type=int, default=432)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--mode", choices=("infer", "train"), default="infer")
    p.add_argument("--num-local", type=int, default=None,
                   help="local frames for E2FGVI-style models (default: all frames for infer, 5/8 for train)")
    p.add_argument("--iters", type=int, default=3, help="timed runs after one warm-up")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="model option (JSON value)")
    p.add_argument("--output", help="also write the JSON to this file")
    return p.parse_args(argv)


def peak_host_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device_peak_bytes():
    import jax

    stats = jax.local_devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def time_compiled(fn, args, iters):
    import jax

    t0 = time.perf_counter()
    lowered = fn.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    out = compiled(*args)
    jax.block_until_ready(out)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    return {"trace_s": t1 - t0, "compile_s": t2 - t1, "step_s": statistics.median(times), "step_s_all": times}


def bench_infer(args, overrides):
    import jax
    import jax.numpy as jnp

    from ecformer_jax import models

    entry = models.get(args.model)
    if entry.kind != "inpainting":
        raise SystemExit(f"--mode infer benchmarks inpainting generators; '{args.model}' is a {entry.kind} model")
    model = models.build(args.model, dtype=jnp.dtype(args.dtype), **overrides)
    variables = jax.jit(lambda: models.init(models.build(args.model, **overrides), args.model))()
    shape = (args.batch, args.frames, args.height, args.width)
    k1, k2 = jax.random.split(jax.random.key(0))
    frames = jax.random.uniform(k1, shape + (3,), minval=-1, maxval=1)
    masks = (jax.random.uniform(k2, shape + (1,)) > 0.8).astype(jnp.float32)
    nl = args.num_local if args.num_local else (args.frames if entry.generate is not None else None)
    fn = jax.jit(lambda v, x, m: models.generate(args.model, model, v, x * (1 - m), m, num_local_frames=nl)[0])
    res = time_compiled(fn, (variables, frames, masks), args.iters)
    res["num_local"] = nl
    res["params"] = sum(int(a.size) for a in jax.tree.leaves(variables["params"]))
    return res


def bench_train(args, overrides):
    import runpy

    import jax

    from ecformer_jax.training import sharding as shd
    from ecformer_jax.training.loop import setup

    path = os.path.join(ROOT, "configs", f"{args.model}.py")
    if not os.path.exists(path):
        raise SystemExit(f"--mode train needs configs/{args.model}.py")
    c = runpy.run_path(path)["get_config"](None)
    c.batch_size = args.batch
    c.data.height, c.data.width = args.height, args.width
    c.dtype = args.dtype
    if c.data.sampling == "local_ref":
        c.data.num_local = args.num_local or max(2, args.frames * 5 // 8)
        c.data.num_ref = args.frames - c.data.num_local
    else:
        c.data.num_frames = args.frames
    for k, v in overrides.items():
        c.model.overrides[k] = v
    mesh = shd.make_mesh(-1)
    _, state, _, step = setup(c, mesh)
    rng = jax.random.key(1)
    shape = (args.batch, args.frames, args.height, args.width)
    batch = {"frames": jax.random.randint(rng, shape + (3,), 0, 256).astype("uint8"),
             "masks": (jax.random.uniform(rng, shape + (1,)) > 0.8).astype("uint8")}
    batch = shd.global_batch(jax.device_get(batch), mesh)
    import numpy as np

    n_params = sum(int(np.size(a)) for a in jax.tree.leaves(state.g_params))
    t0 = time.perf_counter()
    lowered = step.lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    state, _ = jax.block_until_ready(compiled(state, batch))  # the step donates its state: chain the steps
    times = []
    for _ in range(args.iters):
        t = time.perf_counter()
        state, _ = jax.block_until_ready(compiled(state, batch))
        times.append(time.perf_counter() - t)
    return {"trace_s": t1 - t0, "compile_s": t2 - t1, "step_s": statistics.median(times), "step_s_all": times,
            "params": n_params}


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from convert_torch import parse_overrides

    import jax

    overrides = parse_overrides(args.option)
    res = (bench_infer if args.mode == "infer" else bench_train)(args, overrides)
    frames = args.batch * args.frames
    out = {
        "model": args.model, "mode": args.mode, "dtype": args.dtype, "batch": args.batch, "frames": args.frames,
        "height": args.height, "width": args.width, "options": overrides,
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items() if k != "step_s_all"},
        "step_s_all": [round(t, 4) for t in res["step_s_all"]],
        "frames_per_s": round(frames / res["step_s"], 3),
        "peak_host_bytes": peak_host_bytes(), "peak_device_bytes": device_peak_bytes(),
        "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind), "devices": jax.device_count(),
        "jax": jax.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    text = json.dumps(out)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
