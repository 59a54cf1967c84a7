"""Compile the real train step (or the inference window) for a TPU topology on this host; print one JSON report.

    pip install -e ".[tpu]"      # libtpu matching the installed jax: it compiles for TPUs without one
    python tools/aot_compile.py --config sttn --topology v5e:4x4 --dtype bfloat16
    python tools/aot_compile.py --config e2fgvi_hq --topology v5e:2x2 --batch 4 --config.model.remat=True
    python tools/aot_compile.py --config e2fgvi_hq --topology v5e:2x2 --mode infer --size 1280x720

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
import sys
import time

# This host only compiles: jax runs on its CPU, libtpu only describes the topology (no probing for a TPU VM).
# Several compiles may run at once (libtpu otherwise takes a machine-wide lock).
for _k, _v in (("JAX_PLATFORMS", "cpu"), ("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_HOSTNAMES", "localhost"),
               ("TPU_ACCELERATOR_TYPE", "v5litepod-4"), ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
               ("TF_CPP_MIN_LOG_LEVEL", "2")):
    os.environ.setdefault(_k, _v)

from absl import app, flags  # noqa: E402

from ecformer_jax.configs import define_config_flag  # noqa: E402

_CONFIG = define_config_flag()
_TOPOLOGY = flags.DEFINE_string("topology", "v5e:2x2",
                                "TPU generation:chips, e.g. v5e:4x4, v4:2x2x4 (16 chips = v4-32), v5p:2x2x2")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "infer"], "the train step or the inference window")
_BATCH = flags.DEFINE_integer("batch", None, "global batch (train) or crops per call (infer, VSR); "
                              "default: the config's, at least one clip per chip")
_DTYPE = flags.DEFINE_string("dtype", None, "compute dtype (float32 | bfloat16); default: the config's")
_PEAK = flags.DEFINE_integer("peak", 0, "also list the N largest buffers live at the compiled program's peak "
                             "(XLA's memory-usage report of the default memory space)")
_SIZE = flags.DEFINE_string("size", None, "infer: the video size WxH (default: the model's processing size)")
_ATTENTION = flags.DEFINE_enum("attention", "auto", ["auto", "xla", "flash"],
                               "attention kernel: auto (fused where it fits) or xla (the logits materialised)")


def topology_devices(name: str):
    from jax.experimental import topologies

    generation = name.split(":", 1)[0]
    from ecformer_jax.training.aot import CHIPS

    if generation not in CHIPS:
        raise app.UsageError(f"--topology {name!r}: generation must be one of {', '.join(CHIPS)}")
    # v4: one device per chip, its two TensorCores together (megacore), as JAX runs a v4 pod; libtpu's default
    # compile-only v4 topology has a device per TensorCore, which JAX's mesh construction refuses
    options = {"chip_config_name": "megacore"} if generation == "v4" else {}
    try:
        return generation, topologies.get_topology_desc(name, "tpu", **options).devices
    except Exception as e:  # libtpu's message, on one line (e.g. an unknown chip count)
        raise app.UsageError(f"--topology {name!r}: libtpu has no such topology ({str(e).splitlines()[0]})") from e


def clip_shape(spec: dict) -> list:
    """(frames, height, width) of one training clip: the inpainting tasks' frames, the SR task's HR target."""
    return list((spec["frames"] if "frames" in spec else spec["hr"]).shape[1:4])


def compile_train(config, devices, batch):
    """(compile, devices, what): the sharded train step's compile, to call, and what it compiles."""
    from ecformer_jax import tasks
    from ecformer_jax.training import aot
    from ecformer_jax.training import sharding as shd

    mesh = shd.make_mesh(config.mesh.data, devices)
    with config.unlocked():
        config.batch_size = aot.global_batch_size(config, mesh.size, batch)
    what = {"mode": "train", "model": config.model.name, "batch": config.batch_size,
            "per_chip_batch": config.batch_size // mesh.size, "dtype": config.dtype,
            "remat": bool(config.model.get("remat", False)), "shard_params": bool(config.mesh.shard_params),
            "clip": clip_shape(tasks.for_config(config).batch_spec(config, 1))}
    return lambda: aot.compile_train_step(config, tasks.for_config(config), mesh), mesh.size, what


def compile_infer(config, device, batch, size):
    """(compile, 1, what): the inference command's device function for one chip, from abstract variables."""
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
    return lowered.compile, 1, what


def run(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from ecformer_jax.layers import attention, tiling
    from ecformer_jax.training import aot

    config = _CONFIG.value
    dump = None
    if _PEAK.value:  # before jax is imported: XLA reads its flags once
        import tempfile

        dump = tempfile.mkdtemp(prefix="aot-dump-")
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={dump}").strip()
    if _DTYPE.value:
        with config.unlocked():
            config.dtype = _DTYPE.value
    generation, devices = topology_devices(_TOPOLOGY.value)
    t0 = time.perf_counter()
    head = {"topology": _TOPOLOGY.value, "device_kind": devices[0].device_kind, "attention": _ATTENTION.value}
    with tiling.on_platform("tpu"), attention.implementation(_ATTENTION.value):
        if _MODE.value == "train":
            compile_, n, what = compile_train(config, devices, _BATCH.value)
        else:
            compile_, n, what = compile_infer(config, devices[0], _BATCH.value, _SIZE.value)
        try:
            compiled = compile_()
        except Exception as e:  # the compiler refuses a program that cannot fit the chip: report that, no traceback
            out = aot.refused(e, generation, n, what, time.perf_counter() - t0)
            if out is None:
                raise
        else:
            out = aot.report(compiled, generation, n, what, time.perf_counter() - t0)
            if dump:
                out["peak"] = aot.peak_buffers(dump, _PEAK.value)
    out = {**head, **out}
    if dump:
        import shutil

        shutil.rmtree(dump, ignore_errors=True)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    app.run(run)
