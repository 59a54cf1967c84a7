"""Ahead-of-time compilation of the real train step (and the inference window) for any set of devices.

    compiled = compile_train_step(config, task, mesh)          # mesh over e.g. TPU topology devices
    compiled.memory_analysis(), compiled.cost_analysis(), compiled.as_text()

The step is built exactly as `training.loop.setup` builds it (the task's init and train step, the state
shardings of `training.sharding.state_shardings`, the batch split over 'data', the state donated), but from
abstract values only: nothing is initialised or run, so a CPU host can compile for a TPU pod
(`jax.experimental.topologies`). `tools/aot_compile.py` turns the compiled program into a report.
"""
from __future__ import annotations

import os
import re

import jax

from ecformer_jax.training import sharding as shd
from ecformer_jax.training.checkpoints import abstract_with_shardings
from ecformer_jax.training.state import jit_step

__all__ = ["abstract_train_step", "compile_train_step", "global_batch_size", "report", "collectives",
           "collective_sources", "peak_buffers", "refused", "CHIPS"]


def global_batch_size(config, num_devices: int, batch: int | None = None) -> int:
    """`batch` if given, else the config's batch raised to at least one clip per device; a multiple of the
    device count."""
    b = int(batch) if batch else max(int(config.batch_size), num_devices)
    if b % num_devices:
        raise ValueError(f"batch {b} is not divisible by the {num_devices} devices (pass --batch)")
    return b


def abstract_train_step(config, task, mesh):
    """(jitted step, abstract state, abstract batch): the trainer's step for `mesh`, with ShapeDtypeStructs
    that carry the trainer's shardings. config.batch_size is the global batch."""
    built = task.build(config, None)
    init = task.make_init(config, built)
    rng = jax.eval_shape(lambda: jax.random.key(config.seed))
    abstract = jax.eval_shape(init, rng, None)
    shardings = shd.state_shardings(abstract, mesh, config.mesh.shard_params)
    state = abstract_with_shardings(abstract, shardings)
    batch_sharding = shd.batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
             for k, v in task.batch_spec(config, config.batch_size).items()}
    step = jit_step(task.make_train_step(config, built), shardings, mesh)
    return step, state, batch


def compile_train_step(config, task, mesh):
    """The compiled train step (jax.stages.Compiled) for `mesh`'s devices."""
    step, state, batch = abstract_train_step(config, task, mesh)
    return step.lower(state, batch).compile()


# --- what the compiled program says ---------------------------------------------------------------------
GiB = 1 << 30
# generation: (HBM bytes, peak bf16 FLOP/s) per JAX device = per chip, from the Cloud TPU system-architecture
# pages. A v4 chip's two TensorCores run as one device ("megacore", as on a real v4 pod; tools/aot_compile.py asks
# libtpu for that configuration); v5e, v5p and v6e have one device per chip anyway.
CHIPS = {
    "v4": (32 * GiB, 275e12),
    "v5e": (16 * GiB, 197e12),
    "v5p": (95 * GiB, 459e12),
    "v6e": (32 * GiB, 918e12),
}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
          "f64": 8, "s64": 8, "u64": 8}


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


def collective_sources(hlo: str) -> dict:
    """{op: {where: n}} for every collective but the all-reduce: the JAX operation it was partitioned from (the
    `op_name` of its metadata, without the `jit(...)` prefix), for tracing unexpected communication."""
    out = {}
    for line in hlo.splitlines():
        m = re.search(r"\s(" + "|".join(c for c in COLLECTIVES if c != "all-reduce") + r")(-start)?\(", line)
        if not m:
            continue
        where = re.search(r'op_name="([^"]*)"', line)
        where = re.sub(r"^jit\([^)]*\)/", "", where.group(1)) if where else "?"
        entry = out.setdefault(m.group(1), {})
        entry[where] = entry.get(where, 0) + 1
    return out


def _prod(dims: str) -> int:
    n = 1
    for d in filter(None, dims.split(",")):
        n *= int(d)
    return n


def peak_buffers(dump_dir: str, n: int) -> dict:
    """{"total_bytes", "largest": [[bytes, shapes], ...]} from the memory-usage report XLA dumped for the main
    program (the largest module compiled)."""
    import glob

    files = glob.glob(os.path.join(dump_dir, "*memory-usage-report.txt"))
    if not files:
        return {}
    text = open(max(files, key=os.path.getsize)).read()
    section = text.split("Memory Space: default", 1)[-1]
    total = int(re.search(r"Total bytes: (\d+)", section).group(1))
    rows = re.findall(r"^\s*[\d.]+\w*B\(\s*\d+%\);\s*([\d.]+)(\w*B);\s*\d+;\s*\d+;\s*(.+)$", section, re.M)
    unit = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    return {"total_bytes": total,
            "largest": [[int(float(v) * unit[u]), shapes.strip()] for v, u, shapes in rows[:n]]}


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
        "collectives": collectives(hlo := compiled.as_text()),
        "collective_sources": collective_sources(hlo),
        "compile_s": round(seconds, 1),
    }


def refused(error: Exception, generation: str, num_devices: int, what: dict, seconds: float) -> dict | None:
    """The report of a program the TPU compiler refuses because its temporaries exceed the chip's HBM
    (RESOURCE_EXHAUSTED): it does not fit, an answer rather than a crash. None for any other error."""
    text = str(error)
    if "RESOURCE_EXHAUSTED" not in text:
        return None
    line = next(ln for ln in text.splitlines() if "RESOURCE_EXHAUSTED" in ln).strip()
    out = {**what, "devices": num_devices, "hbm_GiB": CHIPS[generation][0] / GiB, "fits": False, "refused": line,
           "compile_s": round(seconds, 1)}
    m = re.search(r"temporaries \(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)", line)
    if m:  # XLA's units are binary (G = GiB)
        out["temporary_GiB"], out["usable_GiB"] = float(m.group(1)), float(m.group(2))
    return out
