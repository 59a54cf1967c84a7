"""The super-resolution task (tasks/super_resolution.py): schedule, SPyNet freezing, learning, the NaN
guard, the SR data pipeline, and the loop end to end (train, then init_from the training workdir)."""
from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
import pytest

from ecformer_jax import configs, tasks
from ecformer_jax.data import pipeline
from ecformer_jax.data.synthetic import synthetic_clip
from ecformer_jax.tasks import super_resolution as sr
from ecformer_jax.training import losses
from ecformer_jax.training import sharding as shd
from ecformer_jax.training.loop import setup, train
from ecformer_jax.training.state import NonFiniteError, check_finite

TASK = tasks.get("super_resolution")


def _config(**overrides):
    c = configs.get_config("vsr_transformer:tiny")
    c.async_checkpoints = False
    for key, value in overrides.items():
        target = c
        *path, leaf = key.split(".")
        for p in path:
            target = target[p]
        target[leaf] = value
    return c


def _fixed_batch(c):
    hr = synthetic_clip(c.data.num_frames, 256, 256, seed=3)[None]
    return {"lr": pipeline.bicubic_downscale(hr[0], 4)[None], "hr": hr}


def _basicsr_lr(it, base, periods, weights, eta_min):
    """CosineAnnealingRestartLR written out as BasicSR documents it (scheduler position `it`)."""
    cum = np.cumsum(periods)
    i = next(k for k, c in enumerate(cum) if it <= c)
    start = 0 if i == 0 else cum[i - 1]
    return eta_min + weights[i] * 0.5 * (base - eta_min) * (1 + math.cos(math.pi * (it - start) / periods[i]))


def test_cosine_restart_schedule_matches_the_formula():
    c = _config()
    c.optim.lr, c.optim.eta_min = 2e-4, 1e-7
    c.optim.periods, c.optim.restart_weights = (300_000,) * 4, (1.0, 0.5, 0.5, 0.5)
    lr = sr.learning_rate(c)
    for step in (0, 1, 149_999, 299_998, 299_999, 300_000, 450_000, 899_999, 1_199_998):
        want = _basicsr_lr(step + 1, 2e-4, [300_000] * 4, [1, .5, .5, .5], 1e-7)
        np.testing.assert_allclose(float(lr(step)), want, rtol=2e-4, atol=1e-10, err_msg=f"step {step}")
    assert float(lr(299_999)) == pytest.approx(1e-7, abs=1e-10)  # end of the first period: eta_min
    assert float(lr(300_000)) == pytest.approx(1e-4, rel=1e-3)  # restart at half the base lr
    assert float(lr(2_000_000)) == pytest.approx(1e-7, abs=1e-10)  # past the end: kept at eta_min
    spy = sr.spynet_learning_rate(_config(**{"optim.spynet_frozen_steps": 5, "optim.spynet_lr_mult": 0.25}))
    base = sr.learning_rate(_config())
    assert float(spy(4)) == 0.0
    assert float(spy(5)) == pytest.approx(0.25 * float(base(5)), rel=1e-6)


def test_pixel_losses():
    a, b = np.zeros((1, 2, 4, 4, 3), np.float32), np.full((1, 2, 4, 4, 3), 0.5, np.float32)
    assert float(losses.pixel_loss(a, b, "charbonnier", 1e-12, "sum")) == pytest.approx(0.5 * a.size, rel=1e-5)
    assert float(losses.pixel_loss(a, b, "l1", reduction="mean")) == pytest.approx(0.5)
    assert float(losses.pixel_loss(a, a, "charbonnier", 1e-12, "mean")) == pytest.approx(1e-6, rel=1e-3)
    with pytest.raises(ValueError, match="loss.kind"):
        losses.pixel_loss(a, b, "l2")


@pytest.fixture(scope="module")
def trajectory():
    """8 steps of the tiny model on one fixed clip; SPyNet frozen for the first 3 steps."""
    c = _config(batch_size=1, **{"optim.spynet_frozen_steps": 3, "optim.lr": 1e-3, "optim.periods": (1000,),
                                 "optim.restart_weights": (1.0,)})
    mesh = shd.make_mesh(1)
    _, state, _, step = setup(c, TASK, mesh)
    batch = shd.global_batch(_fixed_batch(c), mesh)
    params = [jax.device_get(state.g_params)]
    metrics = []
    for _ in range(8):
        state, m = step(state, batch)
        params.append(jax.device_get(state.g_params))
        metrics.append(jax.device_get(m))
    return c, state, step, batch, params, metrics


def _changed(p0, p1, spynet: bool):
    leaves = lambda p: jax.tree.leaves({k: v for k, v in p.items() if (k == "spynet") == spynet})
    return max(float(np.max(np.abs(a - b))) for a, b in zip(leaves(p0), leaves(p1)))


@pytest.mark.slow
def test_sr_loss_goes_down_on_a_fixed_clip(trajectory):
    c, state, _, _, _, metrics = trajectory
    loss = [float(m["g_loss"]) for m in metrics]
    assert np.mean(loss[-2:]) < 0.8 * np.mean(loss[:2]), loss
    assert metrics[-1]["psnr"] > metrics[0]["psnr"]
    assert int(state.step) == 8 and int(state.bad_step) == -1


@pytest.mark.slow
def test_spynet_frozen_then_trained(trajectory):
    _, _, _, _, params, metrics = trajectory
    for k in range(1, 4):  # the first 3 updates leave SPyNet exactly as initialised
        assert _changed(params[0], params[k], spynet=True) == 0.0, k
        assert _changed(params[k - 1], params[k], spynet=False) > 0.0, k
        assert float(metrics[k - 1]["spynet_lr"]) == 0.0
    for k in range(4, 9):  # then it learns, at lr * spynet_lr_mult
        assert _changed(params[k - 1], params[k], spynet=True) > 0.0, k
    assert float(metrics[3]["spynet_lr"]) == pytest.approx(0.25 * float(metrics[3]["lr"]), rel=1e-6)


@pytest.mark.slow
def test_sr_non_finite_step_is_refused(trajectory):
    _, state, step, batch, _, _ = trajectory
    at = int(state.step)
    poisoned = state.replace(g_params=jax.tree.map(lambda a: a * np.nan, state.g_params))
    new, _ = step(poisoned, batch)  # (donates its input: `state` is not used afterwards)
    assert int(new.bad_step) == at and int(new.step) == at + 1
    with pytest.raises(NonFiniteError, match=f"step {at}"):
        check_finite(new)


def test_sr_data_pipeline():
    c = _config()
    ds = pipeline.make_dataset(c.data, 2, seed=5, task="sr")
    it = iter(ds)
    b = next(it)
    assert b["hr"].shape == (2, 3, 256, 256, 3) and b["lr"].shape == (2, 3, 64, 64, 3)
    assert b["hr"].dtype == np.uint8 and b["lr"].dtype == np.uint8
    for row in range(2):  # LR = bicubic x4 of the HR crop
        np.testing.assert_array_equal(b["lr"][row], pipeline.bicubic_downscale(b["hr"][row], 4))
    again = next(iter(pipeline.make_dataset(c.data, 2, seed=5, task="sr")))
    np.testing.assert_array_equal(again["hr"], b["hr"])  # a pure function of (seed, global index)
    # the two processes of a 2-process run see the rows of the same global batch
    halves = [next(iter(pipeline.make_dataset(c.data, 2, p, 2, seed=5, task="sr")))["hr"][0] for p in (0, 1)]
    np.testing.assert_array_equal(np.stack(halves), b["hr"])
    with pytest.raises(ValueError, match="gt_size"):
        pipeline.make_dataset(_config(**{"data.height": 200}).data, 2, task="sr")
    with pytest.raises(ValueError, match="task"):
        pipeline.make_dataset(c.data, 2, task="denoise")


@pytest.mark.slow
def test_train_loop_and_init_from_the_workdir(tmp_path):
    c = _config(batch_size=1, num_steps=2, image_every=2, checkpoint_every=2, log_every=1)
    state = train(c, str(tmp_path / "run"), TASK)
    assert int(state.step) == 2
    assert os.path.exists(tmp_path / "run" / "images" / "lr_bicubic_output_target_0000002.png")
    logged = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in logged] == [1, 2] and all(np.isfinite(r["g_loss"]) for r in logged)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["name"] == "vsr_transformer"
    assert (tmp_path / "run" / "checkpoints" / "2" / "state").is_dir()
    # a new run starts from the generator of that workdir (convert.resolve reads its latest checkpoint)
    c2 = _config(batch_size=1, num_steps=2, init_from=str(tmp_path / "run"))
    start = train(c2, str(tmp_path / "finetune"), TASK, stop_after=0)
    assert int(start.step) == 0
    for a, b in zip(jax.tree.leaves(jax.device_get(start.g_params)), jax.tree.leaves(jax.device_get(state.g_params))):
        np.testing.assert_array_equal(a, b)
    other = _config(batch_size=1, init_from=str(tmp_path / "run"), **{"model.overrides.channels": 8})
    with pytest.raises(ValueError, match="do not fit the configured 'vsr_transformer'"):
        train(other, str(tmp_path / "other"), TASK)


def test_tiny_clip_config():
    c = configs.get_config("vsr_transformer:tiny_clip")
    assert (c.data.width, c.data.height, c.data.gt_size, c.data.rotate) == (460, 256, 256, False)
    assert c.optim.periods == (c.num_steps,) and c.optim.spynet_frozen_steps >= c.num_steps
    assert c.model.overrides.num_reconstruct_blocks == 8 and c.model.overrides.channels == 16
