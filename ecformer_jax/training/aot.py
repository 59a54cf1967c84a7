"""Ahead-of-time compilation of the real train step (and the inference window) for any set of devices.

    compiled = compile_train_step(config, task, mesh)          # mesh over e.g. TPU topology devices
    compiled.memory_analysis(), compiled.cost_analysis(), compiled.as_text()

The step is built exactly as `training.loop.setup` builds it (the task's init and train step, the state
shardings of `training.sharding.state_shardings`, the batch split over 'data', the state donated), but from
abstract values only: nothing is initialised or run, so a CPU host can compile for a TPU pod
(`jax.experimental.topologies`). `tools/aot_compile.py` turns the compiled program into a report.
"""
from __future__ import annotations

import jax

from ecformer_jax.training import sharding as shd
from ecformer_jax.training.state import jit_step

__all__ = ["abstract_train_step", "compile_train_step", "global_batch_size"]


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
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    batch_sharding = shd.batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
             for k, v in task.batch_spec(config, config.batch_size).items()}
    step = jit_step(task.make_train_step(config, built), shardings, mesh)
    return step, state, batch


def compile_train_step(config, task, mesh):
    """The compiled train step (jax.stages.Compiled) for `mesh`'s devices."""
    step, state, batch = abstract_train_step(config, task, mesh)
    return step.lower(state, batch).compile()
