"""What every task's train state shares: created already sharded, updated under the non-finite guard, the
step jitted (state donated) once.

    abstract = jax.eval_shape(init)  ->  sharding rules  ->  jax.jit(init, out_shardings=...)

A task's state is a flax.struct pytree with at least `step` (updates done) and `bad_step` (-1, or the first
step whose losses or gradients were not finite; from then on the state no longer changes and the loop stops
before writing anything).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ecformer_jax.run_once import run_once
from ecformer_jax.training import sharding as shd


class NonFiniteError(FloatingPointError):
    pass


def all_finite(*values) -> jax.Array:
    """True where every scalar in `values` (losses, gradient norms) is finite."""
    finite = jnp.isfinite(values[0])
    for v in values[1:]:
        finite = finite & jnp.isfinite(v)
    return finite


def guarded_update(state, finite, **updates):
    """The non-finite guard: `state` one step on, with the fields in `updates` taken only when this step is
    finite and no earlier step failed; otherwise the old fields are kept and bad_step records this step."""
    ok = finite & (state.bad_step < 0)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    return state.replace(
        step=state.step + 1, **{k: keep(v, getattr(state, k)) for k, v in updates.items()},
        bad_step=jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step))


def check_finite(state):
    """Raise NonFiniteError if the guard recorded a bad step."""
    bad = int(jax.device_get(state.bad_step))
    if bad >= 0:
        raise NonFiniteError(
            f"non-finite loss or gradient at step {bad}: training stopped and nothing after step {bad} was "
            "saved (lower the learning rate, use float32, or check the data)")


def create_state(init, mesh, rng, shard_params: bool = False, init_variables=None):
    """Run the pure `init(rng, init_variables) -> state` already sharded; returns (state, shardings)."""
    abstract = jax.eval_shape(init, rng, init_variables)
    shardings = shd.state_shardings(abstract, mesh, shard_params)
    state = run_once(init, rng, init_variables, out_shardings=shardings)
    return state, shardings


def jit_step(train_step, state_shardings, mesh):
    """jit `train_step(state, batch) -> (state, metrics)`: batch split over 'data', metrics replicated, the
    input state donated. With sharded parameters (mesh.shard_params) the step gathers them whole first
    (`sharding.fsdp_step`)."""
    if shd.any_sharded(state_shardings):
        train_step = shd.fsdp_step(train_step, mesh)
    return jax.jit(train_step, in_shardings=(state_shardings, shd.batch_sharding(mesh)),
                   out_shardings=(state_shardings, shd.replicated(mesh)), donate_argnums=(0,))
