"""Compile the real train step (or the inference window) for a TPU topology on this host; print one JSON report.

    pip install -e ".[tpu]"      # libtpu matching the installed jax: it compiles for TPUs without one
    python tools/aot_compile.py --config sttn --topology v5e:4x4 --dtype bfloat16
    python tools/aot_compile.py --config e2fgvi_hq --topology v5e:2x2 --batch 4 --config.model.remat=True
    python tools/aot_compile.py --config e2fgvi_hq --topology v5e:1x1 --mode infer --size 720x1280

--mode train compiles the trainer's own step (ecformer_jax.training.aot: same task step, shardings and
donation as `python -m ecformer_jax.train`) over all devices of the topology, with the config's global batch
raised to one clip per chip (--batch overrides). --mode infer compiles the inpaint command's window function
(inference.protocol.run_window: the protocol's local + reference frames at the model's processing size) or
the upscale command's crop batch, for one chip. Nothing is initialised or run.

The report: devices, per-chip argument / output / temporary bytes (XLA's memory analysis of the compiled
program; donated inputs alias outputs and count once), whether that fits the chip's HBM and by how much,
FLOPs per chip and per step (XLA's cost analysis; kernels the compiler cannot see into, such as Pallas
attention, count 0), the step time implied at the chip's peak bf16 rate (a lower bound: the roofline floor)
and the collectives in the compiled program.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time

# This host only compiles: jax runs on its CPU, libtpu only describes the topology (no probing for a TPU VM).
# Several compiles may run at once (libtpu otherwise takes a machine-wide lock).
for _k, _v in (("JAX_PLATFORMS", "cpu"), ("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_HOSTNAMES", "localhost"),
               ("TPU_ACCELERATOR_TYPE", "v5litepod-4"), ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
               ("TF_CPP_MIN_LOG_LEVEL", "2")):
    os.environ.setdefault(_k, _v)

from absl import app, flags  # noqa: E402

from ecformer_jax.configs.flags import define_config_flag  # noqa: E402

GiB = 1 << 30
# generation: (HBM bytes, peak bf16 FLOP/s) per JAX device, from the Cloud TPU system-architecture pages. The
# compile-only v4 topology exposes each of a chip's two TensorCores as a device (a v4 chip: 32 GiB, 275 TFLOP/s);
# v5e, v5p and v6e give one device per chip.
CHIPS = {
    "v4": (16 * GiB, 137.5e12),
    "v5e": (16 * GiB, 197e12),
    "v5p": (95 * GiB, 459e12),
    "v6e": (32 * GiB, 918e12),
}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
          "f64": 8, "s64": 8, "u64": 8}

_CONFIG = define_config_flag()
_TOPOLOGY = flags.DEFINE_string("topology", "v5e:2x2", "TPU generation:chips, e.g. v5e:4x4, v4:2x2x4, v5p:2x2x2")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "infer"], "the train step or the inference window")
_BATCH = flags.DEFINE_integer("batch", None, "global batch (train) or crops per call (infer, VSR); "
                              "default: the config's, at least one clip per chip")
_DTYPE = flags.DEFINE_string("dtype", None, "compute dtype (float32 | bfloat16); default: the config's")
_SIZE = flags.DEFINE_string("size", None, "infer: the video size WxH (default: the model's processing size)")
_ATTENTION = flags.DEFINE_enum("attention", "auto", ["auto", "xla", "flash"],
                               "attention kernel: auto (fused where it fits) or xla (the logits materialised)")


def topology_devices(name: str):
    from jax.experimental import topologies

    generation = name.split(":", 1)[0]
    if generation not in CHIPS:
        raise app.UsageError(f"--topology {name!r}: generation must be one of {', '.join(CHIPS)}")
    return generation, topologies.get_topology_desc(name, "tpu").devices


def collectives(hlo: str) -> dict:
    """{op: {"count": n, "bytes": result bytes}} of the collective ops in an HLO module's text."""
    out = {}
    for line in hlo.splitlines():
        m = re.search(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(-start)?\(", line)
        if not m:
            continue
        shapes = re.findall(r"\b(" + "|".join(_BYTES) + r")\[([\d,]*)\]", m.group(1))
        size = sum(_BYTES[t] * _prod(d) for t, d in shapes)
        entry = out.setdefault(m.group(2), {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += size
    return out


def _prod(dims: str) -> int:
    n = 1
    for d in filter(None, dims.split(",")):
        n *= int(d)
    return n


def report(compiled, generation: str, num_devices: int, what: dict, seconds: float) -> dict:
    hbm, peak = CHIPS[generation]
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    args, outs = mem.argument_size_in_bytes, mem.output_size_in_bytes
    temp, alias = mem.temp_size_in_bytes, mem.alias_size_in_bytes
    total = args + outs - alias + temp
    flops = float(cost.get("flops", 0.0))
    return {
        **what,
        "devices": num_devices,
        "per_chip_bytes": {"arguments": args, "outputs": outs, "aliased": alias, "temporary": temp,
                           "generated_code": mem.generated_code_size_in_bytes, "total": total},
        "per_chip_GiB": round(total / GiB, 3),
        "hbm_GiB": hbm / GiB,
        "fits": total <= hbm,
        "margin_GiB": round((hbm - total) / GiB, 3),
        "flops_per_chip": flops,
        "flops_per_step": flops * num_devices,
        "tflop_per_chip": round(flops / 1e12, 3),
        "roofline_s": round(flops / peak, 4),
        "bytes_accessed_per_chip": float(cost.get("bytes accessed", 0.0)),
        "collectives": collectives(compiled.as_text()),
        "compile_s": round(seconds, 1),
    }


def compile_train(config, devices, batch):
    from ecformer_jax import tasks
    from ecformer_jax.training import aot
    from ecformer_jax.training import sharding as shd

    mesh = shd.make_mesh(config.mesh.data, devices)
    with config.unlocked():
        config.batch_size = aot.global_batch_size(config, mesh.size, batch)
    what = {"mode": "train", "model": config.model.name, "batch": config.batch_size,
            "per_chip_batch": config.batch_size // mesh.size, "dtype": config.dtype,
            "remat": bool(config.model.get("remat", False)), "shard_params": bool(config.mesh.shard_params),
            "clip": list(tasks.for_config(config).batch_spec(config, 1)["frames"].shape[1:4])}
    return aot.compile_train_step(config, tasks.for_config(config), mesh), mesh.size, what


def compile_infer(config, device, batch, size):
    """The inference command's device function for one chip, from abstract variables."""
    import jax
    import jax.numpy as jnp

    from ecformer_jax import models
    from ecformer_jax.inference.common import parse_size

    name = config.model.name
    entry = models.get(name)
    dtype = jnp.dtype(config.dtype)
    model = models.build(name, dtype=dtype, **dict(config.model.overrides))
    on_chip = jax.sharding.SingleDeviceSharding(device)
    place = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=on_chip), tree)
    variables = place(jax.eval_shape(lambda: models.init(model, name, jax.random.key(0))))
    if entry.kind == "inpainting":
        from ecformer_jax.inference.protocol import Inpainter, run_window

        runner = Inpainter(name, model, {})  # only its planning: no weights are placed
        hw = parse_size(size) if size else (config.data.height, config.data.width)
        windows, geometry = runner.plan(200, hw)
        t = max(len(w.frames) for w in windows)
        h, w = geometry.size
        frames = jax.ShapeDtypeStruct((t, h, w, 3), jnp.uint8, sharding=on_chip)
        masks = jax.ShapeDtypeStruct((t, h, w), jnp.uint8, sharding=on_chip)
        lowered = run_window.lower(variables, frames, masks, name=name, model=model,
                                   multiple=runner.size_rule.multiple, geometry=geometry,
                                   num_local=max(w.num_local for w in windows) if entry.protocol.local_frames
                                   else None)
        what = {"mode": "infer", "model": name, "window_frames": t, "size": [h, w], "dtype": config.dtype}
    else:
        from ecformer_jax.inference.vsr import VSRUpscaler

        n = batch or 16
        runner = VSRUpscaler(model, {}, batch_size=n)
        crops = jax.ShapeDtypeStruct((n, runner.num_frames, runner.lq_size, runner.lq_size, 3), jnp.uint8,
                                     sharding=on_chip)
        lowered = runner._run.lower(variables, crops)
        what = {"mode": "infer", "model": name, "crops": n, "dtype": config.dtype}
    return lowered.compile(), 1, what


def run(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from ecformer_jax.layers import attention, tiling

    config = _CONFIG.value
    if _DTYPE.value:
        with config.unlocked():
            config.dtype = _DTYPE.value
    generation, devices = topology_devices(_TOPOLOGY.value)
    t0 = time.perf_counter()
    with tiling.on_platform("tpu"), attention.implementation(_ATTENTION.value):
        if _MODE.value == "train":
            compiled, n, what = compile_train(config, devices, _BATCH.value)
        else:
            compiled, n, what = compile_infer(config, devices[0], _BATCH.value, _SIZE.value)
    seconds = time.perf_counter() - t0
    out = {"topology": _TOPOLOGY.value, "device_kind": devices[0].device_kind, "attention": _ATTENTION.value,
           **report(compiled, generation, n, what, seconds)}
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    app.run(run)
