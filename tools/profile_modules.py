#!/usr/bin/env python
"""Where an inpainting generator's time goes: each submodule jitted alone, timed, and set against its FLOPs.

    python tools/profile_modules.py --model e2fgvi_hq --frames 8 --num-local 5
    python tools/profile_modules.py --model e2fgvi_hq --modules SecondOrderDeformableAlignment,TemporalFocalAttention
    python tools/profile_modules.py --model fuseformer --frames 2 --backward     # forward + backward, as in training

The model is traced once (jax.eval_shape, no compute) with a method interceptor that records every call of
the chosen submodules: by default the generator's direct children, plus the classes named in --modules. Each
recorded call is then compiled on its own with its real parameters and random inputs of the recorded shapes,
timed (median of --iters runs after a warm-up) and costed with XLA's cost analysis. The output is one JSON
object: per module class the number of calls, summed seconds, share of the sum of the direct children's
time (the whole forward pass is timed too), XLA FLOPs, FLOP share and achieved GFLOP/s. A module whose time
share is much larger than its FLOP share is a bottleneck beyond its arithmetic (gathers, transposes,
small matmuls). `--ablate CLASS,...` costs modules in context instead: the whole model is timed again with
every call of CLASS replaced by a broadcast scalar (XLA drops the work), and whole - ablated is its time and FLOPs
inside the real, fused model.

`--backward` times every piece as it runs in training instead: its forward and its VJP with respect to its
parameters and floating-point inputs, for a random cotangent of its output's shape (FLOPs likewise forward +
backward); training's share of each piece is then read off the same table.

Note: XLA counts a gather as no FLOPs, so for the modulated deformable convolution the JSON also gives the
arithmetic of its bilinear sampling (4 taps x 2 multiply-adds x modulation per sampled value) separately.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
from benchmark import emit_json  # noqa: E402  (tools/benchmark.py)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--num-local", type=int, default=None, help="local frames for E2FGVI-style models")
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--width", type=int, default=432)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--modules", default="", help="comma-separated module class names to profile as well")
    p.add_argument("--ablate", default="", help="comma-separated module classes to cost in context: the whole "
                   "model timed with their calls replaced by a broadcast scalar")
    p.add_argument("--backward", action="store_true", help="time forward + backward (the VJP with respect to the "
                   "parameters and the floating-point inputs, a random cotangent) instead of the forward alone")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--output", help="also write the JSON to this file")
    return p.parse_args(argv)


def forward_only(fn, args):
    """The `form` of a plain forward timing (vjp_form is the --backward one)."""
    return fn, args


def ablated_time(model, variables, args, kwargs, cls, iters, form=forward_only):
    """The whole forward pass with every call of module class `cls` replaced by a broadcast scalar of its
    output shape (XLA then drops its computation): (seconds, flops). whole - ablated = its cost in context, with the
    fusion and scheduling of the real model."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    shapes = {}

    def record(next_fun, a, kw, context):
        out = next_fun(*a, **kw)
        if context.method_name == "__call__" and type(context.module).__name__ == cls:
            shapes[tuple(context.module.path)] = jax.tree.map(lambda o: (o.shape, o.dtype), out)
        return out

    def stand_in(next_fun, a, kw, context):
        key = tuple(context.module.path)
        if context.method_name == "__call__" and type(context.module).__name__ == cls and key in shapes:
            # a broadcast input scalar, not a constant: XLA must not fold the work downstream of it away
            seed = jnp.ravel(a[0])[0]
            return jax.tree.map(lambda sd: jnp.broadcast_to(seed, sd[0]).astype(sd[1]), shapes[key],
                                is_leaf=lambda x: isinstance(x, tuple))
        return next_fun(*a, **kw)

    def run(interceptor):
        def fn(v, *a):
            with nn.intercept_methods(interceptor):
                return model.apply(v, *a, **kwargs)
        return fn

    jax.eval_shape(run(record), variables, *args)
    if not shapes:
        raise SystemExit(f"--ablate {cls}: the model has no module of that class")
    secs, _, flops = time_fn(*form(run(stand_in), (variables, *args)), iters)
    return secs, flops


def record_calls(model, variables, args, kwargs, classes):
    """Trace `model.apply` abstractly; return [(path, class name, unbound module, args, kwargs)] for every
    call of a direct child of the model or of a module whose class name is in `classes`."""
    import flax.linen as nn
    import jax

    calls = []

    def interceptor(next_fun, a, kw, context):
        m = context.module
        if context.method_name == "__call__" and m.path and (len(m.path) == 1 or type(m).__name__ in classes):
            calls.append((tuple(m.path), type(m).__name__, m.clone(parent=None), a, kw))
        return next_fun(*a, **kw)

    def run(v, *a):
        with nn.intercept_methods(interceptor):
            return model.apply(v, *a, **kwargs)

    jax.eval_shape(run, variables, *args)
    return calls


def subtree(variables, path):
    out = {}
    for col, tree in variables.items():
        node = tree
        for name in path:
            node = node.get(name) if isinstance(node, dict) else None
            if node is None:
                break
        if node is not None:
            out[col] = node
    return out


_COMPILED = {}  # identical submodules on identical shapes (the transformer blocks) compile once


def untiled_cost(fn, args):
    """XLA's cost analysis counts a while loop's body once, and the CPU attention runs its tiles in a
    `lax.map` (layers/tiling.py), so FLOPs are taken from a compile with the tiling off."""
    import jax

    from ecformer_jax.layers import tiling

    saved, tiling.CPU_TILE = tiling.CPU_TILE, 0
    try:
        # a fresh function object (jax would otherwise reuse the tiled trace of `fn`); the lowered module's
        # cost analysis gives the compiled FLOPs to 0.1 % without compiling it a second time
        cost = jax.jit(lambda *a: fn(*a)).lower(*args).cost_analysis()
    finally:
        tiling.CPU_TILE = saved
    return cost[0] if isinstance(cost, (list, tuple)) else cost


def time_fn(fn, args, iters, cache_key=None):
    import jax

    t0 = time.perf_counter()
    if cache_key is not None and cache_key in _COMPILED:
        compiled, cost = _COMPILED[cache_key]
    else:
        compiled = jax.jit(fn).lower(*args).compile()
        cost = untiled_cost(fn, args)
        if cache_key is not None:
            _COMPILED[cache_key] = compiled, cost
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times), compile_s, float((cost or {}).get("flops", 0.0))


def time_dcn(module, variables, x, key, iters, form=forward_only):
    """Time `modulated_deform_conv2d` with the alignment's kernel on x, offsets of a few pixels, random mask."""
    import jax
    import jax.numpy as jnp

    from ecformer_jax.layers.deform import modulated_deform_conv2d

    n, h, w, _ = x.shape
    g, k = module.deform_groups, module.kernel_size ** 2
    ko, km, kx = jax.random.split(key, 3)
    offset = 3.0 * jax.random.normal(ko, (n, h, w, 2 * g * k))
    mask = jax.random.uniform(km, (n, h, w, g * k))
    xs = jax.random.uniform(kx, x.shape, jnp.float32, -1, 1).astype(x.dtype)
    p = variables["params"]
    fn = lambda a, o, m, kern, b: modulated_deform_conv2d(a, o, m, kern, b, 1, module.padding, 1, 1, g)  # noqa
    return time_fn(*form(fn, (xs, offset, mask, p["kernel"], p["bias"])), iters)


def vjp_form(fn, args, key):
    """(g, g_args): g runs fn forward and its VJP with respect to every floating-point array in args (the
    parameters and the float inputs) for a random cotangent of fn's output, which is g's last argument."""
    import jax
    import jax.numpy as jnp

    leaves, treedef = jax.tree.flatten(args)
    is_float = [jnp.issubdtype(getattr(x, "dtype", None) or jnp.int32, jnp.floating) for x in leaves]

    def g(*a):
        *a, ct = a
        flat = jax.tree.leaves(a)

        def f(floats):
            it = iter(floats)
            return fn(*jax.tree.unflatten(treedef, [next(it) if d else x for x, d in zip(flat, is_float)]))

        _, pull = jax.vjp(f, [x for x, d in zip(flat, is_float) if d])
        return pull(ct)

    return g, (*args, concrete(jax.eval_shape(fn, *args), key))


def concrete(tree, key):
    """Random arrays for the abstract leaves of `tree` (floats in [-1, 1]); other leaves unchanged."""
    import jax
    import jax.numpy as jnp

    leaves, treedef = jax.tree.flatten(tree)
    out = []
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, jax.ShapeDtypeStruct) or hasattr(leaf, "aval"):
            k = jax.random.fold_in(key, i)
            out.append(jax.random.uniform(k, leaf.shape, jnp.float32, -1, 1).astype(leaf.dtype))
        else:
            out.append(leaf)
    return jax.tree.unflatten(treedef, out)


def main(argv=None):
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp

    from ecformer_jax import models

    entry = models.get(args.model)
    model = models.build(args.model, dtype=jnp.dtype(args.dtype))
    variables = jax.jit(lambda: models.init(models.build(args.model), args.model))()
    shape = (args.batch, args.frames, args.height, args.width)
    k1, k2 = jax.random.split(jax.random.key(0))
    masks = (jax.random.uniform(k2, shape + (1,)) > 0.8).astype(jnp.float32)
    masked = jax.random.uniform(k1, shape + (3,), minval=-1, maxval=1) * (1 - masks)
    nl = args.num_local or (args.frames if entry.local_frames else None)
    call_args, call_kwargs = entry.call_args(masked, masks, nl)

    def form(fn, fn_args, i=-1):  # forward, or forward + backward with --backward
        return vjp_form(fn, fn_args, jax.random.key(5001 + i)) if args.backward else forward_only(fn, fn_args)

    whole_s, whole_compile, whole_flops = time_fn(*form(lambda v, *a: model.apply(v, *a, **call_kwargs),
                                                        (variables, *call_args)), args.iters)
    classes = {c for c in args.modules.split(",") if c}
    calls = record_calls(model, variables, call_args, call_kwargs, classes)

    rows = defaultdict(lambda: {"calls": 0, "seconds": 0.0, "flops": 0.0, "compile_s": 0.0, "depth": 0})
    for i, (path, name, module, a, kw) in enumerate(calls):
        arrays, static = [], []
        for x in a:
            (arrays if hasattr(x, "shape") and hasattr(x, "dtype") else static).append(x)
        if any(not (hasattr(x, "shape") and hasattr(x, "dtype")) for x in a[: len(arrays)]):
            raise SystemExit(f"{name}: array arguments must come before the static ones")
        v = subtree(variables, path)
        fn = (lambda m, s, kw_: lambda v_, *xs: m.apply(v_, *xs, *s, **kw_))(module, static, kw)
        cache_key = (repr(module), tuple((x.shape, str(x.dtype)) for x in arrays), repr(static), repr(kw))
        secs, comp, flops = time_fn(*form(fn, (v, *concrete(arrays, jax.random.key(i))), i), args.iters, cache_key)
        key = name if len(path) > 1 else f"{re.sub(r'[0-9]+$', '*', path[0])} ({name})"
        row = rows[key]
        row["calls"] += 1
        row["seconds"] += secs
        row["flops"] += flops
        row["compile_s"] += comp
        row["depth"] = len(path)
        if name == "SecondOrderDeformableAlignment":  # the deformable conv alone, as in this call
            dcn = rows["modulated_deform_conv2d (inside the alignment)"]
            secs, comp, flops = time_dcn(module, v, arrays[0], jax.random.key(1000 + i), args.iters, form)
            n, h, w, cin = arrays[0].shape
            dcn["calls"] += 1
            dcn["seconds"] += secs
            dcn["flops"] += flops
            dcn["compile_s"] += comp
            dcn["depth"] = len(path) + 1
            # 9 taps x Cin values per output pixel, each 4 bilinear corners (mul + add) and 1 modulation
            dcn["sampling_flops"] = dcn.get("sampling_flops", 0.0) + 9.0 * n * h * w * 9 * cin

    children = [r for r in rows.values() if r["depth"] == 1]
    total_s = sum(r["seconds"] for r in children) or 1.0
    total_f = sum(r["flops"] for r in children) or 1.0
    table = {}
    for key, r in sorted(rows.items(), key=lambda kv: -kv[1]["seconds"]):
        table[key] = {
            "calls": r["calls"], "seconds": round(r["seconds"], 4),
            "time_share": round(r["seconds"] / total_s, 4), "gflops": round(r["flops"] / 1e9, 3),
            "flop_share": round(r["flops"] / total_f, 4),
            "gflop_per_s": round(r["flops"] / 1e9 / max(r["seconds"], 1e-9), 2),
            "compile_s": round(r["compile_s"], 2), "direct_child": r["depth"] == 1,
            **({"sampling_gflops": round(r["sampling_flops"] / 1e9, 3)} if "sampling_flops" in r else {}),
        }
    in_context = {}
    for cls in (c for c in args.ablate.split(",") if c):
        secs, flops = ablated_time(model, variables, call_args, call_kwargs, cls, args.iters, form)
        in_context[cls] = {"seconds": round(whole_s - secs, 4), "time_share": round(1 - secs / whole_s, 4),
                           "gflops": round((whole_flops - flops) / 1e9, 3),
                           "flop_share": round(1 - flops / max(whole_flops, 1.0), 4)}
    out = {
        "model": args.model, "dtype": args.dtype, "backward": args.backward, "batch": args.batch,
        "frames": args.frames, "num_local": nl,
        "height": args.height, "width": args.width,
        "whole": {"seconds": round(whole_s, 4), "gflops": round(whole_flops / 1e9, 3),
                  "compile_s": round(whole_compile, 2)},
        "sum_of_children_s": round(total_s, 4), "modules": table, "in_context": in_context,
        "backend": jax.default_backend(), "jax": jax.__version__,
    }
    emit_json(out, args.output, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
