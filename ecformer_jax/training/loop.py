"""The training loop: config in, checkpoints / metrics / image grids out; resumes from the workdir."""
from __future__ import annotations

import logging
import os
import time

import jax
import jax.numpy as jnp
from tqdm import tqdm

from ecformer_jax import convert, models
from ecformer_jax.data import pipeline
from ecformer_jax.layers.flow import SPyNet
from ecformer_jax.models.e2fgvi import local_flows
from ecformer_jax.training import sharding as shd
from ecformer_jax.training import sr
from ecformer_jax.training.checkpoints import Checkpointer, abstract_with_shardings
from ecformer_jax.training.metrics import MetricWriter, image_grid
from ecformer_jax.training.state import build_models, create_state, example_batch, num_local
from ecformer_jax.training.step import jit_train_step, make_train_step

log = logging.getLogger("ecformer_jax.train")


class NonFiniteError(FloatingPointError):
    pass


def load_generator_variables(config):
    """--config.init_from: a converted checkpoint directory or an official .pth of the generator."""
    path = config.init_from
    overrides = dict(config.model.overrides)
    if convert.is_converted(path):
        name, _, variables = convert.load(path)
        if name != config.model.name:
            raise convert.CheckpointError(f"init_from {path} holds a '{name}' model, the config trains "
                                          f"'{config.model.name}'")
        return variables
    return convert.from_torch(config.model.name, path, **overrides)


def make_flow_targets(config, init_variables):
    """Frozen SPyNet flows of the unmasked local frames (E2FGVI's flow loss)."""
    entry = models.get(config.model.name)
    if "flow" not in entry.extra_losses or config.loss.flow_weight <= 0:
        return None
    if config.loss.spynet_checkpoint:
        path = config.loss.spynet_checkpoint
        variables = convert.load(path)[2] if convert.is_converted(path) else convert.from_torch("spynet", path)
    elif init_variables is not None and "update_spynet" in init_variables["params"]:
        variables = {"params": init_variables["params"]["update_spynet"]}
        log.warning("flow loss: no loss.spynet_checkpoint given; using the SPyNet of init_from, frozen")
    else:
        variables = models.init(models.build("spynet"), "spynet", jax.random.key(1))
        log.warning("flow loss: no loss.spynet_checkpoint given; the targets come from an UNTRAINED SPyNet "
                    "(fine for smoke tests, not for real training)")
    net = SPyNet()

    def flow_targets(frames, nl):
        return local_flows(lambda ref, supp: net.apply(variables, ref, supp), frames, nl)

    return flow_targets


def check_batch(config, mesh):
    n_proc, n_dev = jax.process_count(), mesh.size
    if config.batch_size % n_dev or config.batch_size % n_proc:
        raise ValueError(f"batch_size={config.batch_size} must be divisible by the {n_dev} devices of the mesh "
                         f"and the {n_proc} processes")


def is_super_resolution(config) -> bool:
    """The task switch: models of registry kind 'super_resolution' train with training/sr.py."""
    return models.get(config.model.name).kind == "super_resolution"


def setup(config, mesh, init_variables=None):
    """Models, the sharded initial state and the jitted train step: (generator, state, shardings, step_fn)."""
    if is_super_resolution(config):
        return sr.setup(config, mesh, init_variables)
    generator, disc = build_models(config)
    state, shardings = create_state(config, generator, disc, mesh, jax.random.key(config.seed), init_variables)
    step_fn = jit_train_step(make_train_step(config, generator, disc, make_flow_targets(config, init_variables)),
                             shardings, shd.batch_sharding(mesh), shd.replicated(mesh))
    return generator, state, shardings, step_fn


def train(config, workdir: str, stop_after: int | None = None):
    """Train until config.num_steps (or `stop_after` more steps); resume from workdir if it has checkpoints."""
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    lead = jax.process_index() == 0
    mesh = shd.make_mesh(config.mesh.data)
    check_batch(config, mesh)
    init_variables = load_generator_variables(config) if config.init_from else None
    generator, state, shardings, step_fn = setup(config, mesh, init_variables)

    sr_task = is_super_resolution(config)
    dataset = pipeline.make_dataset(config.data, config.batch_size, jax.process_index(), jax.process_count(),
                                    seed=config.seed, task="sr" if sr_task else "inpainting")
    iterator = iter(dataset)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints, config.async_checkpoints)
    latest = ckpt.latest_step()
    if latest is not None:
        state = ckpt.restore(latest, abstract_with_shardings(state, shardings), iterator)
        log.info("resumed from %s at step %d", ckpt.directory, latest)
    elif lead:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=1))

    if sr_task:
        sr_preview = sr.make_preview(config, generator)
        frames_per_batch = config.batch_size * int(config.data.num_frames)
    else:
        nl = num_local(config)
        preview = jax.jit(lambda p, masked, masks: models.generate(config.model.name, generator, {"params": p},
                                                                   masked, masks, num_local_frames=nl)[0])
        frames_per_batch = config.batch_size * example_batch(config)["frames"].shape[1]
    writer = MetricWriter(workdir, enabled=lead)

    start = int(jax.device_get(state.step))
    end = config.num_steps if stop_after is None else min(config.num_steps, start + stop_after)
    bar = tqdm(total=config.num_steps, initial=start, disable=not lead, desc=config.model.name, unit="step")
    t0, s0 = time.perf_counter(), start
    try:
        for step in range(start, end):
            batch = shd.global_batch(next(iterator), mesh)
            state, metrics = step_fn(state, batch)
            done = step + 1
            bar.update(1)
            if done % config.log_every == 0 or done == end:
                metrics = jax.device_get(metrics)
                _check_finite(state)
                dt = time.perf_counter() - t0
                rate = (done - s0) / dt if dt > 0 else 0.0
                metrics.update(steps_per_s=rate, frames_per_s=rate * frames_per_batch)
                writer.scalars(done, metrics)
                shown = {"g": "g_loss", "d": "d_loss", "psnr": "psnr"}
                bar.set_postfix(**{k: f"{metrics[m]:.3f}" for k, m in shown.items() if m in metrics},
                                fps=f"{rate * frames_per_batch:.1f}")
                t0, s0 = time.perf_counter(), done
            if config.image_every and done % config.image_every == 0 and sr_task:
                writer.image(done, "lr_bicubic_output_target", sr_preview(state.g_params, batch))
            elif config.image_every and done % config.image_every == 0:
                frames = batch["frames"].astype(jnp.float32) / 127.5 - 1
                masks = batch["masks"].astype(jnp.float32)
                masked = frames * (1 - masks)
                out = preview(state.g_params, masked, masks)
                comp = frames * (1 - masks) + out * masks
                writer.image(done, "masked_output_target", image_grid(*jax.device_get((masked, comp, frames))))
            if done % config.checkpoint_every == 0 or done == config.num_steps:
                _check_finite(state)
                ckpt.save(done, state, iterator, force=True)
    finally:
        bar.close()
        ckpt.close()
        writer.close()
    return state


def _check_finite(state):
    bad = int(jax.device_get(state.bad_step))
    if bad >= 0:
        raise NonFiniteError(
            f"non-finite loss or gradient at step {bad}: training stopped and nothing after step {bad} was "
            "saved (lower the learning rate, use float32, or check the data)")
