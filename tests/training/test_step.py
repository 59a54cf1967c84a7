"""The inpainting task's jitted train step: learning, the NaN guard, a step for every generator (sharding
equivalence, data parallel and FSDP over processes: test_resume_multiprocess.py)."""
from __future__ import annotations

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ecformer_jax import configs, models, tasks
from ecformer_jax.training import sharding as shd
from ecformer_jax.training.loop import setup
from ecformer_jax.training.state import NonFiniteError, all_finite, check_finite, guarded_update
from tests.training import helpers


def _setup(c, mesh=None):
    mesh = mesh or shd.make_mesh(1)
    _, state, _, step = setup(c, tasks.for_config(c), mesh)
    return state, step, mesh


@flax.struct.dataclass
class _State:
    step: jax.Array
    bad_step: jax.Array
    g_params: dict
    g_opt: object
    d_params: dict
    d_opt: object
    d_spectral: jax.Array


def test_guard_takes_the_optimizer_step_only_when_finite():
    tx = optax.adam(0.1, b1=0.0, b2=0.99)
    g_params, d_params = {"w": jnp.arange(6.0).reshape(2, 3)}, {"k": jnp.ones((4,))}
    state = _State(jnp.int32(3), jnp.int32(-1), g_params, tx.init(g_params), d_params, tx.init(d_params), jnp.zeros(2))
    grads = {"g": {"w": jnp.full((2, 3), 0.5)}, "d": {"k": jnp.array([1.0, -2.0, 3.0, -4.0])}}
    step = jax.jit(lambda st, finite: guarded_update(st, finite, tx, grads, d_spectral=jnp.ones(2)))

    new = step(state, all_finite(jnp.float32(1.0), jnp.float32(2.0)))
    for p in ("g", "d"):  # exactly optax's step
        want_steps, want_opt = tx.update(grads[p], getattr(state, f"{p}_opt"), getattr(state, f"{p}_params"))
        chex.assert_trees_all_equal(getattr(new, f"{p}_params"),
                                    optax.apply_updates(getattr(state, f"{p}_params"), want_steps))
        chex.assert_trees_all_equal(getattr(new, f"{p}_opt"), want_opt)
    np.testing.assert_array_equal(new.d_spectral, np.ones(2))
    assert int(new.step) == 4 and int(new.bad_step) == -1

    bad = step(state, all_finite(jnp.float32(1.0), jnp.float32(np.nan)))
    chex.assert_trees_all_equal((bad.g_params, bad.g_opt, bad.d_params, bad.d_opt, bad.d_spectral),
                                (state.g_params, state.g_opt, state.d_params, state.d_opt, state.d_spectral))
    assert int(bad.step) == 4 and int(bad.bad_step) == 3
    after = step(bad, jnp.bool_(True))  # a finite step after a bad one changes nothing either
    chex.assert_trees_all_equal(after.g_params, state.g_params)
    assert int(after.bad_step) == 3


# The generators without official weights (issue 6) must learn on a fixed synthetic clip (STTN's training is
# proven by its parity and the loop, fault and multi-process tests). Focal shares everything but its mixer
# with swin and poolformer (its forward is proven by its parity, its gradient is JAX's autodiff): at this size
# it followed swin's loss curve to 3 decimals, so it is not run again.
LEARNERS = ["poolformer", "swin", pytest.param("ecformer", marks=pytest.mark.optimized)]  # (ecformer: run-bound)


@pytest.mark.slow
@pytest.mark.parametrize("name", LEARNERS)
def test_loss_goes_down_on_a_fixed_clip(name):
    # 2-frame clips (compile-bound: 3 frames cost ~45 s more in all for the same verdict)
    c = helpers.config(name, batch_size=1, **{"loss.adversarial_weight": 0.0, "optim.lr": 1e-4, "data.num_frames": 2})
    state, step, mesh = _setup(c)
    d_before = jax.device_get(state.d_params)
    batch = shd.global_batch(helpers.fixed_batch(c), mesh)
    l1 = []
    for _ in range(20):
        state, m = step(state, batch)
        l1.append(float(m["hole_l1"] + m["valid_l1"]))
    assert np.all(np.isfinite(l1)), l1
    assert np.mean(l1[-5:]) < 0.85 * np.mean(l1[:3]), l1  # (batch 1: single steps are noisy)
    assert int(state.step) == 20
    # adversarial weight 0: the discriminator is neither run nor updated
    assert "d_loss" not in m and "g_adv" not in m
    chex.assert_trees_all_equal(jax.device_get(state.d_params), d_before)


@pytest.mark.slow
def test_non_finite_step_is_refused_and_reported():
    c = configs.get_config("sttn:micro")
    state, step, mesh = _setup(c)
    poisoned = state.replace(g_params=jax.tree.map(lambda a: a * np.nan, state.g_params))
    before = jax.device_get(poisoned.d_params)
    new, _ = step(poisoned, shd.global_batch(helpers.fixed_batch(c), mesh))
    assert int(new.bad_step) == 0
    np.testing.assert_array_equal(jax.tree.leaves(jax.device_get(new.d_params))[0], jax.tree.leaves(before)[0])
    with pytest.raises(NonFiniteError, match="non-finite loss or gradient at step 0"):
        check_finite(new)


# e2fgvi differs from e2fgvi_hq only by its composition bias (covered by the e2fgvi tests): one of them here,
# the one generator trained with an extra loss (the flow loss, a frozen SPyNet). The LEARNERS above are covered
# there; they run FuseFormer's recipe, encoder, soft split / composition and decoder with another token mixer
# (FuseFormer's own blocks are proven by its parity, their gradients by the fold / unfold and attention VJP
# tests). DSTT trains through the same task with the hole / valid / GAN losses, its forward proven by its
# parity and its gradient JAX's autodiff, as for focal: its one-step test (30 s in the suite) is not run.
GENERATORS = ["e2fgvi_hq"]


def test_every_inpainting_generator_has_a_tiny_config():
    missing = [n for n in models.names(kind="inpainting") if n not in configs.names()]
    assert not missing, f"inpainting models without ecformer_jax/configs/<name>.py: {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("name", GENERATORS)
def test_train_step_runs_for_generator(name):
    c = helpers.config(name)
    c.batch_size = 1
    if c.data.sampling == "local_ref":
        c.data.num_local = 2  # the fewest local frames the flow loss takes (one pair)
    state, step, mesh = _setup(c)
    before = jax.device_get(state.g_params)
    state, m = step(state, shd.global_batch(helpers.fixed_batch(c), mesh))
    m = jax.device_get(m)
    assert all(np.isfinite(v) for v in m.values()), m
    if "flow" in models.get(name).extra_losses:
        assert "flow_l1" in m
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before, jax.device_get(state.g_params))
    assert any(jax.tree.leaves(changed))
