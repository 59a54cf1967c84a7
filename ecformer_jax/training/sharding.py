"""Device mesh and sharding rules (jit + NamedSharding only: no pmap, no pjit, no `with mesh:`)."""
from __future__ import annotations

import contextvars

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"


def make_mesh(num_data: int = -1, devices=None) -> Mesh:
    """A 1-D mesh with the axis 'data' over the first `num_data` (-1: all) of `devices` (default: all global
    devices; pass a TPU topology's devices to compile ahead of time for a pod)."""
    devices = jax.devices() if devices is None else list(devices)
    n = len(devices) if num_data in (-1, 0, None) else int(num_data)
    if n > len(devices):
        raise ValueError(f"mesh.data={n} but only {len(devices)} devices are visible")
    axis_types = (jax.sharding.AxisType.Auto,)
    return jax.make_mesh((n,), (DATA,), axis_types=axis_types, devices=devices[:n])


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over 'data'."""
    return NamedSharding(mesh, P(DATA))


def param_spec(shape, mesh_size: int, min_size: int = 2 ** 14) -> P:
    """FSDP rule: shard the largest axis divisible by the mesh size; small or indivisible arrays stay
    replicated."""
    if mesh_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % mesh_size == 0:
            spec = [None] * len(shape)
            spec[axis] = DATA
            return P(*spec)
    return P()


def state_shardings(abstract_state, mesh: Mesh, shard_params: bool):
    """Sharding for every leaf of an abstract state: replicated (data parallel) or FSDP."""
    size = mesh.shape[DATA]

    def rule(leaf):
        if shard_params and getattr(leaf, "ndim", 0) > 0:
            return NamedSharding(mesh, param_spec(leaf.shape, size))
        return NamedSharding(mesh, P())

    return jax.tree.map(rule, abstract_state)


PARAM_FIELDS = ("g_params", "d_params")  # the state fields a task's forward reads
_STEP_MESH = contextvars.ContextVar("ecformer_jax_fsdp_mesh", default=None)  # set while a sharded step traces


def any_sharded(shardings) -> bool:
    """True where some leaf of a pytree of NamedShardings is split (the state of mesh.shard_params)."""
    return any(any(p is not None for p in s.spec) for s in jax.tree.leaves(shardings))


def fsdp_step(train_step, mesh: Mesh):
    """FSDP inside the step: `train_step` with the parameters (sharded at rest, with their optimizer state)
    gathered whole before the forward, and `gathered` active while it traces. Without this XLA propagates a
    parameter's split into the activations it multiplies (convs split over channels or rows, all-to-alls and
    collective-permutes between them) instead of keeping them split over the batch only."""

    def step(state, batch):
        token = _STEP_MESH.set(mesh)
        try:
            state = state.replace(**gathered_once({f: getattr(state, f) for f in PARAM_FIELDS if hasattr(state, f)}))
            return train_step(state, batch)
        finally:
            _STEP_MESH.reset(token)

    return step


def gathered(tree):
    """`tree` whole on every device inside a step with sharded parameters (`fsdp_step`); elsewhere `tree`."""
    mesh = _STEP_MESH.get()
    return tree if mesh is None else jax.lax.with_sharding_constraint(tree, replicated(mesh))


def gathered_once(params):
    """`gathered(params)` through an optimization barrier: a TPU compile otherwise gathers each parameter again
    near each of its uses (STTN's paper step: 284 all-gathers of 1.2 GB for 0.2 GB of parameters) and holds the
    copies."""
    mesh = _STEP_MESH.get()
    return params if mesh is None else gathered(jax.lax.optimization_barrier(gathered(params)))


def gathered_updates(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` taking whole gradients under FSDP: the moments stay sharded and each device updates its shard, but the
    convs giving the gradients are not split like the parameters (XLA would otherwise). A no-op otherwise."""

    def update(grads, opt_state, params=None, **extra):
        return tx.update(gathered(grads), opt_state, params, **extra)

    return optax.GradientTransformation(tx.init, update)


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Assemble per-process numpy batches into global arrays split over 'data'."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
