#!/usr/bin/env python
"""The --against-official side of tools/benchmark.py: the official PyTorch generator from a local checkout
against ours, each in its own child process (see benchmark.py's docstring for the protocol)."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

from benchmark import (  # tools/benchmark.py: the shared timing, inputs and JSON helpers
    ROOT,
    _time_compiled,
    device_peak_bytes,
    emit_json,
    make_inputs,
    peak_host_bytes,
)

from ecformer_jax import huge_pages

BENCHMARK = os.path.join(ROOT, "tools", "benchmark.py")


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


def _run_child(side, raw, workdir, huge_pages_both=False):
    import subprocess

    cmd = [sys.executable, BENCHMARK, *raw, "--side", side, "--workdir", workdir]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    if side == "jax" or huge_pages_both:  # the JAX side runs as our commands do (ecformer_jax/huge_pages.py)
        env = huge_pages.environment(env) or env
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
        t = _run_child("torch", raw, work, args.official_huge_pages)
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
    res.update(threads=threads, peak_host_bytes=peak_host_bytes(), glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""))
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


