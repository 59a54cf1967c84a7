#!/usr/bin/env python
"""Speed and memory of one model, as one JSON object on stdout.

    python tools/benchmark.py --model sttn --batch 1 --frames 5 --height 240 --width 432 --dtype float32 --mode infer
    python tools/benchmark.py --model e2fgvi_hq --frames 8 --num-local 5 --mode train

Reports tracing+compile time apart from the steady state (median of --iters timed runs after one
warm-up), frames per second, peak host memory (RSS of this process) and peak device memory where the
backend reports it (GPU/TPU; not the CPU). infer: the generator's forward pass with random official-init
weights. train: one full training iteration of the trainer (discriminator update, then generator update)
with the model's paper config.

Against the official PyTorch code (sttn, fuseformer, dstt, e2fgvi, e2fgvi_hq):

    python tools/benchmark.py --model fuseformer --frames 8 --iters 2 --against-official /tmp/official/FuseFormer

PATH is a local checkout of the model's official repository (researchmm/STTN, ruiliu-ai/FuseFormer,
ruiliu-ai/DSTT, MCG-NKU/E2FGVI), imported from PATH at run time, never copied into this project. Its
third-party imports that are not installed (torchvision, mmcv) are replaced by the stand-ins of
tools/official_shims.py (see its docstring for what each replaces and why). Two child processes run the
same clip (the real example clip ../shared/data/tennis when found, else random frames and masks;
--video DIR or --video random to choose): `--side torch` builds the official generator (seed 0) and
saves its state_dict, `--side jax` converts that state_dict with ecformer_jax.convert.from_torch and runs
our model. --weights fan-in (default) first redraws every official parameter at unit fan-in scale, so
that the outputs are O(1) and the agreement check means something; --weights official-init keeps the
official N(0, 0.02) init, whose outputs are ~1e-3. Each side times itself (median of --iters after one
warm-up; JAX: tracing and compilation apart) and reports its own peak RSS, so the peak memory of each
side is its own. Both use the same CPU threads: torch.set_num_threads(N) with N the CPUs of the process
affinity, which is what XLA's CPU client uses (--threads N restricts both processes to N CPUs). The
outputs must agree: max|jax - torch| / max(1, max|torch|) <= --tolerance (1e-3), else the command fails
after printing the JSON. speed_ratio = torch step time / JAX step time (> 1: JAX is faster).
--mode train times one generator + discriminator step on each side, the same computation on both:
D hinge loss on real and (detached) composited frames, then G = hole L1 + valid L1 (official
normalisation) + 0.01 x hinge adversarial loss with the updated D, Adam(1e-4, betas (0, 0.99)), the
official T-PatchGAN discriminator (spectral norm, one power iteration per D call), dropout off in torch
(the JAX models have none). The JAX side is the trainer's own step (tasks.inpainting, non-finite guard
included) with a config that makes it this computation (`train_config`); the torch side writes it out.
The losses of the first two steps (the second one after an update of both networks) must agree within
the same tolerance.

The JAX side runs as the commands do: with glibc's huge-page tunable where it helps (ecformer_jax/huge_pages.py;
`glibc_tunables` in the JSON); the official side as PyTorch runs by default, unless --official-huge-pages.
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
    p.add_argument("--against-official", metavar="PATH",
                   help="also run the official PyTorch model from this checkout and compare (see above)")
    p.add_argument("--video", default=None,
                   help="a clip folder with frames/ and masks/, or 'random' "
                        "(default: ../shared/data/tennis when present)")
    p.add_argument("--threads", type=int, default=None,
                   help="with --against-official: restrict both sides to this many CPUs")
    p.add_argument("--official-huge-pages", action="store_true",
                   help="with --against-official: give the official side the glibc huge-page tunable too (the JAX "
                        "side always runs with it where it helps, as the commands do: ecformer_jax/huge_pages.py)")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="with --against-official: fail above this max|jax-torch|/max(1,max|torch|)")
    p.add_argument("--weights", choices=("fan-in", "official-init"), default="fan-in",
                   help="with --against-official: the official init (tiny outputs: a weak check) or every "
                        "parameter redrawn at unit fan-in scale (default; O(1) activations)")
    p.add_argument("--compare-float32", action="store_true",
                   help="with --dtype bfloat16 (infer, without --against-official): also run float32 on the same "
                        "clip and weights (every parameter at unit fan-in scale, so outputs are O(1)) and report "
                        "the PSNR of the bfloat16 output against the float32 one")
    p.add_argument("--side", choices=("torch", "jax"), help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def peak_host_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device_peak_bytes():
    import jax

    stats = jax.local_devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def time_compiled(fn, args, iters):
    return _time_compiled(fn, args, iters)[0]


def _time_compiled(fn, args, iters):
    """(timings, output of the warm-up run)."""
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
    return {"trace_s": t1 - t0, "compile_s": t2 - t1, "step_s": statistics.median(times), "step_s_all": times}, out


def fan_in_variables(variables, seed: int = 0):
    """Every parameter redrawn at unit fan-in scale (kernels N(0, 1/fan_in), vectors 0.1 N(0, 1) or
    1 + 0.1 N(0, 1) for scales): O(1) activations, unlike an official init whose outputs are ~1e-3."""
    import jax
    import numpy as np

    rng = np.random.default_rng(seed)

    def redraw(path, a):
        name = jax.tree_util.keystr(path)
        x = rng.standard_normal(np.shape(a))
        if np.ndim(a) >= 2:
            return (x / np.sqrt(max(1, int(np.prod(np.shape(a)[:-1]))))).astype(np.float32)
        return (1 + 0.1 * x if "scale" in name else 0.1 * x).astype(np.float32)

    return {**variables, "params": jax.tree_util.tree_map_with_path(redraw, jax.device_get(variables["params"]))}


def bench_infer(args, overrides):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ecformer_jax import models

    entry = models.get(args.model)
    if entry.kind != "inpainting":
        raise SystemExit(f"--mode infer benchmarks inpainting generators; '{args.model}' is a {entry.kind} model")
    if args.compare_float32 and args.dtype != "bfloat16":
        raise SystemExit("--compare-float32 compares a --dtype bfloat16 run with float32; add --dtype bfloat16")
    variables = jax.jit(lambda: models.init(models.build(args.model, **overrides), args.model))()
    if args.compare_float32:
        variables = fan_in_variables(variables)
    frames, masks, described = make_inputs(args)
    nl = args.num_local if args.num_local else (args.frames if entry.local_frames else None)
    padded = padded_size(args.model, overrides, (args.height, args.width))

    def forward(dtype):
        from ecformer_jax.layers.padding import crop, pad_to_multiple

        model = models.build(args.model, dtype=jnp.dtype(dtype), **overrides)

        def run(v, x, m):  # mirror-padded to the model's multiple and cropped back, as the inpaint command
            (xp, size), (mp, _) = pad_to_multiple(x * (1 - m), padded), pad_to_multiple(m, padded)
            out = models.generate(args.model, model, v, xp, mp, num_local_frames=nl)[0]
            return crop(out, size).astype(jnp.float32)
        return jax.jit(run)

    res, out = _time_compiled(forward(args.dtype), (variables, frames, masks), args.iters)
    res.update(num_local=nl, input=described, params=sum(int(a.size) for a in jax.tree.leaves(variables["params"])))
    if padded != (args.height, args.width):
        res["padded_to"] = f"{padded[1]}x{padded[0]} (mirror padding, as the inpaint command; output cropped back)"
    if args.compare_float32:
        ref = np.asarray(forward("float32")(variables, frames, masks), np.float64)
        err = np.mean(((np.asarray(out, np.float64) - ref) / 2) ** 2)  # frames in [-1, 1] -> [0, 1]
        res["psnr_vs_float32_db"] = round(float(10 * np.log10(1.0 / max(err, 1e-20))), 2)
        res["max_abs_diff_vs_float32"] = round(float(np.abs(np.asarray(out) - ref).max()), 5)
        res["weights"] = "fan-in (every parameter redrawn at unit fan-in scale)"
    return res


def bench_train(args, overrides):
    import jax

    from ecformer_jax import configs, tasks
    from ecformer_jax.training import sharding as shd
    from ecformer_jax.training.loop import setup

    if args.model not in configs.names():
        raise SystemExit(f"--mode train needs a preset ecformer_jax/configs/{args.model}.py; presets: "
                         f"{', '.join(configs.names())}")
    c = configs.get_config(args.model)
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
    task = tasks.for_config(c)
    mesh = shd.make_mesh(-1)
    _, state, _, step = setup(c, task, mesh)
    rng = jax.random.key(1)
    batch = {k: ((jax.random.uniform(rng, s.shape) > 0.8) if k == "masks" else jax.random.randint(rng, s.shape, 0, 256))
             .astype("uint8") for k, s in task.batch_spec(c, args.batch).items()}
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
            "params": n_params, **xla_memory(compiled)}


def xla_memory(compiled) -> dict:
    """XLA's buffer assignment for the compiled step: temp_bytes = the live activations/workspace it plans
    (what rematerialisation reduces), apart from host RSS, which also counts the compiler's own peak."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # some backends do not report it
        return {}
    return {"xla_temp_bytes": int(m.temp_size_in_bytes), "xla_argument_bytes": int(m.argument_size_in_bytes),
            "xla_output_bytes": int(m.output_size_in_bytes)} if m is not None else {}


# --- against the official PyTorch code ------------------------------------------------------------------
def default_clip() -> str:
    data = os.environ.get("ECFORMER_DATA_DIR") or os.path.join(os.path.dirname(ROOT), "shared", "data")
    return os.path.join(data, "tennis")


def padded_size(name, overrides, size):
    """(H, W) the inpainting command would feed the model for frames of `size` (its protocol's multiple); a
    model that only runs at one size gets `size` back and says so itself."""
    from ecformer_jax import models

    mh, mw = models.get(name).size_rule(models.build(name, **overrides)).multiple
    return (size[0] + (-size[0]) % mh, size[1] + (-size[1]) % mw)


def make_inputs(args):
    """frames (B, T, H, W, 3) float32 in [-1, 1], masks (B, T, H, W, 1) in {0, 1}, and what they are."""
    import numpy as np

    shape = (args.batch, args.frames, args.height, args.width)
    video = args.video
    if video is None:
        video = default_clip() if os.path.isdir(os.path.join(default_clip(), "frames")) else "random"
    if video == "random":
        rng = np.random.default_rng(0)
        if args.mode == "train":  # the train step reads uint8 frames: random levels of the uint8 grid
            frames = rng.integers(0, 256, shape + (3,)).astype(np.float32) / 127.5 - 1.0
        else:
            frames = rng.uniform(-1, 1, shape + (3,)).astype(np.float32)
        masks = (rng.uniform(size=shape + (1,)) > 0.8).astype(np.float32)
        return frames, masks, "random frames in [-1, 1], random pixel masks (20% holes)"
    from PIL import Image

    dirs = [os.path.join(video, "frames"), os.path.join(video, "masks")]
    if not all(os.path.isdir(d) for d in dirs):
        raise SystemExit(f"--video {video}: expected the folders frames/ and masks/ (or --video random)")
    n = args.batch * args.frames
    names = [sorted(os.listdir(d))[:n] for d in dirs]
    if min(len(x) for x in names) < n:
        raise SystemExit(f"--video {video}: needs {n} frames and masks, has {min(len(x) for x in names)}")
    size = (args.width, args.height)
    frames = [np.asarray(Image.open(os.path.join(dirs[0], f)).convert("RGB").resize(size, Image.BILINEAR))
              for f in names[0]]
    masks = [np.asarray(Image.open(os.path.join(dirs[1], f)).convert("L").resize(size, Image.NEAREST))
             for f in names[1]]
    frames = (np.stack(frames).astype(np.float32) / 127.5 - 1.0).reshape(shape + (3,))
    masks = (np.stack(masks) > 127).astype(np.float32).reshape(shape + (1,))
    return frames, masks, f"{os.path.abspath(video)}: first {n} frames and masks, {args.width}x{args.height}"


def main(argv=None):
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    if ROOT not in sys.path:  # run from a checkout without `pip install -e .`
        sys.path.insert(0, ROOT)
    if args.side or args.against_official:
        sys.path.insert(0, os.path.join(ROOT, "tools"))
        import official_compare

        return official_compare.run_side(args) if args.side else official_compare.against_official(args, raw)
    if argv is None:  # measure what the commands run: with huge pages where they help (ecformer_jax/huge_pages.py)
        from ecformer_jax.huge_pages import restart_with_huge_pages

        restart_with_huge_pages()
    import jax

    from ecformer_jax.convert import parse_overrides

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
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
    }
    emit_json(out, args.output)
    return 0


def emit_json(out: dict, path: str | None = None, indent: int | None = None):
    """Print the result as JSON and, with a path, also write it there."""
    text = json.dumps(out, indent=indent)
    print(text)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
