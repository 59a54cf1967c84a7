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

_E2FGVI_FILES = ("model/modules/flow_comp.py", "model/modules/feat_prop.py", "model/modules/spectral_norm.py")
OFFICIAL = {
    "sttn": {"repo": "researchmm/STTN", "module": "model.sttn", "files": ("model/sttn.py", "core/spectral_norm.py"),
             "call": "masks", "disc": "sttn_discriminator", "disc_clip": "joint", "mmcv": False},
    "fuseformer": {"repo": "ruiliu-ai/FuseFormer", "module": "model.fuseformer",
                   "files": ("model/fuseformer.py", "core/spectral_norm.py"),
                   "call": "frames", "disc": "fuseformer_discriminator", "disc_clip": "joint", "mmcv": False},
    "dstt": {"repo": "ruiliu-ai/DSTT", "module": "model.DSTT", "files": ("model/DSTT.py", "core/spectral_norm.py"),
             "call": "frames", "disc": "dstt_discriminator", "disc_clip": "joint", "mmcv": False},
    "e2fgvi": {"repo": "MCG-NKU/E2FGVI", "module": "model.e2fgvi",
               "files": ("model/e2fgvi.py", "model/modules/tfocal_transformer.py") + _E2FGVI_FILES,
               "call": "num_local", "disc": "fuseformer_discriminator", "disc_clip": "batch", "mmcv": True},
    "e2fgvi_hq": {"repo": "MCG-NKU/E2FGVI", "module": "model.e2fgvi_hq",
                  "files": ("model/e2fgvi_hq.py", "model/modules/tfocal_transformer_hq.py") + _E2FGVI_FILES,
                  "call": "num_local", "disc": "fuseformer_discriminator", "disc_clip": "batch", "mmcv": True},
}
ADV_WEIGHT, LR, BETAS = 0.01, 1e-4, (0.0, 0.99)


def official_spec(model: str, path: str) -> dict:
    """The official repository layout for --model, checked against the checkout at `path`."""
    if model not in OFFICIAL:
        raise SystemExit(f"--against-official supports --model {', '.join(OFFICIAL)}; not '{model}'")
    spec = OFFICIAL[model]
    if not os.path.isdir(path):
        raise SystemExit(f"--against-official {path}: no such directory (expected a checkout of {spec['repo']})")
    missing = [f for f in spec["files"] if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise SystemExit(f"--against-official {path} is not a checkout of {spec['repo']} for --model {model}: "
                         f"missing {', '.join(missing)}")
    return spec


def _num_local(args, spec):
    if spec["call"] != "num_local":
        return None
    if args.num_local:
        return args.num_local
    return args.frames if args.mode == "infer" else max(2, args.frames * 5 // 8)


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


def _git_commit(path):
    import subprocess

    try:
        r = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _rounded(d):
    return {k: (round(v, 4) if isinstance(v, float) else [round(x, 4) for x in v] if isinstance(v, list) else v)
            for k, v in d.items()}


def _run_child(side, raw, workdir):
    import subprocess

    cmd = [sys.executable, os.path.abspath(__file__), *raw, "--side", side, "--workdir", workdir]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    try:  # the child's chatter (the official code prints) goes to our stderr, our stdout stays one JSON
        sys.stderr.fileno()
        stdout = sys.stderr
    except (AttributeError, OSError, ValueError):
        stdout = None
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=stdout, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"the {side} side failed (exit {proc.returncode}): {' '.join(cmd)}")
    with open(os.path.join(workdir, f"{side}.json")) as f:
        res = json.load(f)
    res["process_s"] = round(time.perf_counter() - t0, 2)
    return res


def against_official(args, raw):
    import tempfile

    import numpy as np

    path = os.path.abspath(args.against_official)
    spec = official_spec(args.model, path)
    if args.dtype != "float32":
        raise SystemExit("--against-official compares float32 (the official code's precision); drop --dtype")
    from ecformer_jax.convert import parse_overrides

    overrides = parse_overrides(args.option)
    frames, masks, described = make_inputs(args)
    with tempfile.TemporaryDirectory(prefix="benchmark_official_") as work:
        np.savez(os.path.join(work, "inputs.npz"), frames=frames, masks=masks, masked=frames * (1.0 - masks))
        t = _run_child("torch", raw, work)
        j = _run_child("jax", raw, work)
        t_out, j_out = np.load(os.path.join(work, "torch_out.npz")), np.load(os.path.join(work, "jax_out.npz"))
        agreement = {"tolerance": args.tolerance}
        ratios = []
        for key in sorted(t_out.files):
            a, b = t_out[key], j_out[key] if key in j_out.files else None
            if b is None or a.shape != b.shape:
                raise SystemExit(f"torch '{key}' {a.shape} vs jax {None if b is None else b.shape}: cannot compare")
            diff = float(np.abs(b.astype(np.float64) - a).max())
            ratio = diff / max(1.0, float(np.abs(a).max()))
            ratios.append(ratio)
            agreement[key] = {"max_abs_diff": diff, "max_abs_torch": float(np.abs(a).max()), "ratio": ratio}
    agreement["worst_ratio"] = max(ratios)
    agreement["ok"] = agreement["worst_ratio"] <= args.tolerance
    ratio = t["step_s"] / j["step_s"]
    out = {
        "model": args.model, "mode": args.mode, "dtype": args.dtype, "batch": args.batch, "frames": args.frames,
        "height": args.height, "width": args.width, "num_local": _num_local(args, spec), "options": overrides,
        "iters": args.iters, "input": described, "weights": args.weights,
        "official": {"path": path, "repo": spec["repo"], "commit": _git_commit(path), "module": spec["module"],
                     "stand_ins": t.pop("stand_ins")},
        "threads": t["threads"],
        "threads_note": "torch.set_num_threads(threads) = the CPUs of the process affinity, which XLA's CPU "
                        "client uses too; each side runs in its own child process (own peak RSS)",
        "speed_ratio": round(ratio, 3), "speed_ratio_note": "torch step_s / jax step_s (> 1: JAX is faster)",
        "agreement": agreement, "jax": _rounded(j), "torch": _rounded(t),
        "python": platform.python_version(), "cpus": os.cpu_count(),
    }
    if args.mode == "train":
        out["train_step"] = (f"D hinge (real, detached comp) then G = hole L1 + valid L1 + {ADV_WEIGHT} x hinge adv "
                             f"with the updated D; Adam(lr {LR}, betas {BETAS}); official discriminator "
                             f"{OFFICIAL[args.model]['module']}.Discriminator / ours {spec['disc']}; torch dropout off")
    emit_json(out, args.output)
    if not agreement["ok"]:
        raise SystemExit(f"JAX and the official PyTorch {args.model} disagree: worst max|jax-torch|/max(1,max|torch|)"
                         f" = {agreement['worst_ratio']:.3g} > {args.tolerance}")
    return 0


def _side_threads(args) -> int:
    if args.threads:  # before torch / jax start their thread pools
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
    return len(os.sched_getaffinity(0))


def run_side(args):
    spec = official_spec(args.model, os.path.abspath(args.against_official or ""))
    threads = _side_threads(args)
    res = (_torch_side if args.side == "torch" else _jax_side)(args, spec, args.workdir, threads)
    res.update(threads=threads, peak_host_bytes=peak_host_bytes())
    with open(os.path.join(args.workdir, f"{args.side}.json"), "w") as f:
        json.dump(res, f)
    return 0


def _fan_in_weights(net, seed):
    """Redraw every parameter (not the buffers) at unit scale: (>= 2-D) N(0, 1) / sqrt(fan_in), 1-D
    weights 1 + 0.1 N(0, 1), other 1-D 0.1 N(0, 1), so activations stay O(1) through the depth and the
    agreement check is not satisfied by near-zero outputs (the official inits are N(0, 0.02))."""
    import math

    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            x = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if p.dim() >= 2:
                x = x / math.sqrt(max(1, p[0].numel()))
            elif name.endswith("weight"):
                x = 1 + 0.1 * x
            else:
                x = 0.1 * x
            p.copy_(x.to(p.dtype))


def _torch_side(args, spec, work, threads):
    import importlib

    import numpy as np
    import torch

    rss_import = peak_host_bytes()
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import official_shims

    stand_ins = official_shims.install(os.path.abspath(args.against_official), mmcv=spec["mmcv"])
    mod = importlib.import_module(spec["module"])
    torch.set_num_threads(threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":  # full float32 like XLA at precision 'highest'
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    save_sd = lambda net, name: np.savez(os.path.join(work, name),  # noqa: E731
                                         **{k: v.detach().cpu().numpy() for k, v in net.state_dict().items()})
    torch.manual_seed(0)
    t0 = time.perf_counter()
    net_g = mod.InpaintGenerator()
    build_s = time.perf_counter() - t0
    if args.weights == "fan-in":
        _fan_in_weights(net_g, seed=0)
    save_sd(net_g, "g.npz")
    net_g.to(dev)
    data = np.load(os.path.join(work, "inputs.npz"))
    frames, masks, masked = (torch.from_numpy(np.ascontiguousarray(np.moveaxis(data[k], -1, 2))).to(dev)
                             for k in ("frames", "masks", "masked"))  # (B, T, C, H, W)
    b, t = frames.shape[:2]
    nl = _num_local(args, spec)

    def generate(x, m):
        if spec["call"] == "num_local":
            out, flows = net_g(x, nl)
        else:
            out, flows = net_g(x, m) if spec["call"] == "masks" else net_g(x), ()
        return out.view(b, t, *out.shape[1:]), flows

    res = {"version": torch.__version__, "device": str(dev), "build_s": build_s, "rss_after_import_bytes": rss_import,
           "params": sum(p.numel() for p in net_g.parameters()), "stand_ins": stand_ins}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    if args.mode == "infer":
        net_g.eval()
        with torch.inference_mode():
            t0 = time.perf_counter()
            out, flows = generate(masked, masks)
            sync()
            res["first_s"] = time.perf_counter() - t0
            for _ in range(args.iters):
                t0 = time.perf_counter()
                generate(masked, masks)
                sync()
                times.append(time.perf_counter() - t0)
        arrays = {"frames": np.moveaxis(out.cpu().numpy(), 2, -1)}
        for name, f in zip(("flows_forward", "flows_backward"), flows):
            arrays[name] = np.moveaxis(f.cpu().numpy(), 2, -1)
    else:
        for m in net_g.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        net_d = mod.Discriminator(in_channels=3, use_sigmoid=False)
        if args.weights == "fan-in":
            _fan_in_weights(net_d, seed=1)
        save_sd(net_d, "d.npz")
        net_g.train()
        net_d.to(dev).train()
        opt_g = torch.optim.Adam(net_g.parameters(), lr=LR, betas=BETAS)
        opt_d = torch.optim.Adam(net_d.parameters(), lr=LR, betas=BETAS)
        relu = torch.nn.functional.relu

        def disc(x):  # the STTN/FuseFormer/DSTT discriminators take all frames as one clip (T, C, H, W)
            return net_d(x.reshape(-1, *x.shape[2:])) if spec["disc_clip"] == "joint" else net_d(x)

        def step():
            pred, _ = generate(masked, masks)
            comp = frames * (1 - masks) + pred * masks
            d_loss = 0.5 * (relu(1 - disc(frames)).mean() + relu(1 + disc(comp.detach())).mean())
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            diff = (pred - frames).abs()
            hole = (diff * masks).mean() / masks.mean().clamp_min(1e-8)
            valid = (diff * (1 - masks)).mean() / (1 - masks).mean().clamp_min(1e-8)
            g_loss = hole + valid + ADV_WEIGHT * -disc(comp).mean()
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
            return d_loss.detach(), g_loss.detach()

        t0 = time.perf_counter()
        first = step()
        sync()
        res["first_s"] = time.perf_counter() - t0
        later = []
        for _ in range(args.iters):
            t0 = time.perf_counter()
            later.append(step())
            sync()
            times.append(time.perf_counter() - t0)
        arrays = {"d_loss": first[0].item(), "g_loss": first[1].item()}
        if later:  # after one update of both networks: checks the gradients and the optimizer too
            arrays.update(d_loss_step2=later[0][0].item(), g_loss_step2=later[0][1].item())
        res["losses"] = arrays
    np.savez(os.path.join(work, "torch_out.npz"), **arrays)
    res.update(step_s=statistics.median(times), step_s_all=times,
               frames_per_s=args.batch * args.frames / statistics.median(times),
               peak_device_bytes=torch.cuda.max_memory_allocated() if dev.type == "cuda" else None)
    return res


def _jax_side(args, spec, work, threads):
    import jax
    import numpy as np

    rss_import = peak_host_bytes()
    from ecformer_jax import convert, models
    from ecformer_jax.convert import parse_overrides

    if jax.default_backend() != "cpu":  # full float32 like the official code
        jax.config.update("jax_default_matmul_precision", "highest")
    overrides = parse_overrides(args.option)
    t0 = time.perf_counter()
    variables = jax.device_put(convert.from_torch(args.model, dict(np.load(os.path.join(work, "g.npz"))),
                                                  **overrides))
    convert_s = time.perf_counter() - t0
    model = models.build(args.model, **overrides)
    data = np.load(os.path.join(work, "inputs.npz"))
    frames, masks, masked = (jax.device_put(data[k]) for k in ("frames", "masks", "masked"))
    nl = _num_local(args, spec)
    res = {"version": jax.__version__, "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
           "convert_s": convert_s, "rss_after_import_bytes": rss_import,
           "params": sum(int(a.size) for a in jax.tree.leaves(variables["params"])),
           "xla_flags": os.environ.get("XLA_FLAGS", "")}
    if args.mode == "infer":
        def fn(v, x, m):
            out, extras = models.generate(args.model, model, v, x, m, num_local_frames=nl)
            return out, tuple(extras.get("flows", ()))

        timing, (out, flows) = _time_compiled(jax.jit(fn), (variables, masked, masks), args.iters)
        arrays = {"frames": np.asarray(out)}
        for name, f in zip(("flows_forward", "flows_backward"), flows):
            arrays[name] = np.asarray(f)
    else:
        timing, first = _jax_train(args, spec, overrides, variables, frames, masks, nl,
                                   convert.from_torch(spec["disc"], dict(np.load(os.path.join(work, "d.npz")))))
        arrays = {k: float(v) for k, v in first.items()}
        res["losses"] = arrays
    np.savez(os.path.join(work, "jax_out.npz"), **arrays)
    res.update(timing)
    res.update(frames_per_s=args.batch * args.frames / res["step_s"], peak_device_bytes=device_peak_bytes())
    return res


def train_config(args, spec, overrides, num_local=None):
    """The inpainting task's config whose train step is the comparison's step (see the module docstring): hole
    L1 + valid L1 + ADV_WEIGHT x hinge, no flow loss, Adam(LR, BETAS) without decay, clipping or milestones,
    the official discriminator on the whole clip ('joint') or per sample ('batch'), float32."""
    from ecformer_jax import tasks

    task = tasks.get("inpainting")
    c = task.config(args.model, spec["disc"])
    c.model.overrides.update(overrides)
    c.model.disc_joint_clip = spec["disc_clip"] == "joint"
    c.loss.update(hole_weight=1.0, valid_weight=1.0, adversarial_weight=ADV_WEIGHT, gan_type="hinge", flow_weight=0.0)
    c.optim.update(lr=LR, b1=BETAS[0], b2=BETAS[1], weight_decay=0.0, grad_clip=0.0, milestones=(2 ** 30,))
    c.batch_size, c.mesh.data = args.batch, 1
    c.data.height, c.data.width = args.height, args.width
    if num_local is not None:
        c.data.sampling, c.data.num_local, c.data.num_ref = "local_ref", num_local, args.frames - num_local
    else:
        c.data.num_frames = args.frames
    return task, c


def _jax_train(args, spec, overrides, variables, frames, masks, nl, d_variables):
    """The trainer's own inpainting step (tasks.inpainting, jitted by training.loop.setup with the state
    donated) with the official weights of both networks, on the clip's frames as uint8 (as the data pipeline
    gives them)."""
    import jax
    import numpy as np

    from ecformer_jax.training import sharding as shd
    from ecformer_jax.training.loop import setup

    task, c = train_config(args, spec, overrides, nl)
    mesh = shd.make_mesh(c.mesh.data)
    _, state, shardings, step = setup(c, task, mesh, init_variables=jax.device_put(variables))
    state = jax.device_put(state.replace(d_params=d_variables["params"], d_spectral=d_variables["spectral"]),
                           shardings)
    batch = shd.global_batch({"frames": np.round((np.asarray(frames) + 1.0) * 127.5).astype(np.uint8),
                              "masks": np.asarray(masks).astype(np.uint8)}, mesh)
    t0 = time.perf_counter()
    lowered = step.lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    state, first = jax.block_until_ready(compiled(state, batch))
    t3 = time.perf_counter()
    times, later = [], []
    for _ in range(args.iters):
        t = time.perf_counter()
        state, metrics = jax.block_until_ready(compiled(state, batch))
        times.append(time.perf_counter() - t)
        later.append(metrics)
    keys = ("d_loss", "g_loss")
    losses = {k: jax.device_get(first[k]) for k in keys}
    if later:
        losses.update({f"{k}_step2": jax.device_get(later[0][k]) for k in keys})
    return ({"trace_s": t1 - t0, "compile_s": t2 - t1, "first_s": t3 - t2, "step_s": statistics.median(times),
             "step_s_all": times}, losses)


def main(argv=None):
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    if ROOT not in sys.path:  # run from a checkout without `pip install -e .`
        sys.path.insert(0, ROOT)
    if args.side:
        return run_side(args)
    if args.against_official:
        return against_official(args, raw)
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
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
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
