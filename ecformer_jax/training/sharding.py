"""Device mesh and sharding rules (jit + NamedSharding only: no pmap, no pjit, no `with mesh:`)."""
from __future__ import annotations

import jax
import numpy as np
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


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Assemble per-process numpy batches into global arrays split over 'data'."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
