"""The one training loop: config and task in, checkpoints / metrics / image grids out; resumes from the workdir.

    state = train(config, workdir, tasks.for_config(config))

The task (ecformer_jax.tasks) supplies the data, the models, the pure init and train step and the preview;
everything else is here, the same for every task. The workdir:

    <workdir>/config.json                   the config (process 0, first run)
    <workdir>/checkpoints/<step>/state      orbax StandardCheckpoint of the train state (g_params, ...)
    <workdir>/checkpoints/<step>/data       the data iterator's position (grain)
    <workdir>/metrics.jsonl, tensorboard/, images/<name>_<step>.png

Faults (docs/reliability.md): a run killed at any moment restarts from the newest committed checkpoint with the
same numbers; a damaged checkpoint is skipped (training.checkpoints); a workdir of another model is refused;
SIGTERM saves at the next step boundary and returns.
"""
from __future__ import annotations

import signal
import threading
import time
from typing import Any, NamedTuple

import jax
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from tqdm import tqdm

from ecformer_jax import convert
from ecformer_jax.paths import absolute
from ecformer_jax.training import checkpoints
from ecformer_jax.training import sharding as shd
from ecformer_jax.training.checkpoints import Checkpointer, abstract_with_shardings
from ecformer_jax.training.metrics import MetricWriter
from ecformer_jax.training.state import NonFiniteError, check_finite, create_state, jit_step

__all__ = ["train", "setup", "Setup", "NonFiniteError", "load_init_variables", "StopRequest"]


class Setup(NamedTuple):
    built: Any  # the task's models
    state: Any  # the initial train state, sharded
    shardings: Any  # its shardings
    step: Any  # the jitted train step (donates the state)


def load_init_variables(config):
    """--config.init_from: the generator variables of an official .pth, a converted folder or a training workdir."""
    return convert.resolve(config.init_from, model=config.model.name).variables


def check_batch(config, mesh):
    n_proc, n_dev = jax.process_count(), mesh.size
    if config.batch_size % n_dev or config.batch_size % n_proc:
        raise ValueError(f"batch_size={config.batch_size} must be divisible by the {n_dev} devices of the mesh "
                         f"and the {n_proc} processes")


def setup(config, task, mesh, init_variables=None) -> Setup:
    """The task's models, the sharded initial state and the jitted train step."""
    built = task.build(config, init_variables)
    init, rng = task.make_init(config, built), jax.random.key(config.seed)
    if init_variables is not None:
        check_fits(jax.eval_shape(init, rng, None).g_params, init_variables["params"], config.model.name)
    state, shardings = create_state(init, mesh, rng, config.mesh.shard_params, init_variables)
    return Setup(built, state, shardings, jit_step(task.make_train_step(config, built), shardings, mesh))


def check_fits(expected, params, name: str):
    """init_from weights must have the parameters (names and shapes) of the configured model."""
    want = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
    got = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    if bad:
        k = bad[0]
        raise ValueError(f"init_from: the weights do not fit the configured '{name}' (model.overrides?): {len(bad)} "
                         f"parameter(s) differ, e.g. {k}: {got.get(k)} given, {want.get(k)} expected")


def train(config, workdir: epath.PathLike, task, stop_after: int | None = None):
    """Train until config.num_steps (or `stop_after` more steps); resume from workdir if it has checkpoints.
    SIGTERM (a pre-empted VM) stops at the next step boundary with a committed checkpoint of that step."""
    workdir = absolute(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lead = jax.process_index() == 0
    mesh = shd.make_mesh(config.mesh.data)
    check_batch(config, mesh)
    written_for = checkpoints.check_config(workdir, config)
    init_variables = load_init_variables(config) if config.init_from else None
    built, state, shardings, step_fn = setup(config, task, mesh, init_variables)

    iterator = iter(task.dataset(config, jax.process_index(), jax.process_count()))
    ckpt = Checkpointer(workdir / "checkpoints", config.keep_checkpoints, config.async_checkpoints)
    restored, latest = ckpt.restore_latest(abstract_with_shardings(state, shardings), iterator, written_for)
    if latest is not None:
        state = restored
        logging.info("resumed from %s at step %d", ckpt.directory, latest)
    elif lead:
        checkpoints.write_config(workdir, config)

    preview = task.make_preview(config, built)
    frames_per_batch = config.batch_size * max(s.shape[1] for s in task.batch_spec(config, 1).values())
    writer = MetricWriter(workdir, enabled=lead)
    stop = StopRequest()

    start = int(jax.device_get(state.step))
    end = config.num_steps if stop_after is None else min(config.num_steps, start + stop_after)
    bar = tqdm(total=config.num_steps, initial=start, disable=not lead, desc=config.model.name, unit="step")
    t0, s0, stopped = time.perf_counter(), start, None
    try:
        for step in range(start, end):
            batch = shd.global_batch(next(iterator), mesh)
            state, metrics = step_fn(state, batch)
            done = step + 1
            bar.update(1)
            if done % config.log_every == 0 or done == end:
                metrics = jax.device_get(metrics)
                check_finite(state)
                dt = time.perf_counter() - t0
                rate = (done - s0) / dt if dt > 0 else 0.0
                metrics.update(steps_per_s=rate, frames_per_s=rate * frames_per_batch)
                writer.scalars(done, metrics)
                shown = {"g": "g_loss", "d": "d_loss", "psnr": "psnr"}
                bar.set_postfix(**{k: f"{metrics[m]:.3f}" for k, m in shown.items() if m in metrics},
                                fps=f"{rate * frames_per_batch:.1f}")
                t0, s0 = time.perf_counter(), done
            if config.image_every and done % config.image_every == 0:
                for name, grid in preview(state.g_params, batch).items():
                    writer.image(done, name, grid)
            stopping = stop(done)
            if done % config.checkpoint_every == 0 or done == config.num_steps or stopping:
                check_finite(state)
                ckpt.save(done, state, iterator, force=True)
            if stopping:
                stopped = done
                break
    finally:
        bar.close()
        try:
            ckpt.close()  # waits for the last save to commit
        finally:
            writer.close()
            stop.close()
    if stopped is not None:
        logging.warning("SIGTERM: stopped after step %d, its checkpoint is committed in %s; the same command "
                        "continues from there", stopped, ckpt.directory)
    return state


class StopRequest:
    """SIGTERM asks for a stop at the next step boundary. One process: a flag set by the signal handler. Several:
    JAX's preemption sync point (jax.distributed installs its own SIGTERM notifier), so that every process stops
    after the same step, whichever got the signal."""

    def __init__(self):
        self.requested, self._previous = False, None
        self.multi = jax.process_count() > 1
        if not self.multi and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def __call__(self, step: int) -> bool:
        if self.multi:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def close(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
