"""What a task gives the trainer. The loop (training/loop.py) calls these functions and knows nothing else
about the task; a new task (flow completion, ...) is one more module that builds a `Task`."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    # the config schema: config(model, ...) -> ml_collections.ConfigDict (the common part: training.config)
    config: Callable[..., Any]
    # batch_spec(config, batch) -> {key: jax.ShapeDtypeStruct}; every entry is (batch, frames, ...)
    batch_spec: Callable[..., dict]
    # dataset(config, process_index, process_count) -> iterable of this process's numpy batches (checkpointable)
    dataset: Callable[..., Any]
    # build(config, init_variables) -> the task's modules, opaque to the loop (checks the config too)
    build: Callable[..., Any]
    # make_init(config, built) -> pure init(rng, init_variables) -> state (with `step`, `bad_step`, `g_params`)
    make_init: Callable[..., Callable]
    # make_train_step(config, built) -> pure train_step(state, batch) -> (state, metrics), under the guard of
    # training.state.guarded_update
    make_train_step: Callable[..., Callable]
    # make_preview(config, built) -> preview(g_params, batch) -> {name: uint8 (H, W, 3) image grid}
    make_preview: Callable[..., Callable]
    # the inference runner for trained weights (inference.protocol.Inpainter, inference.vsr.VSRUpscaler); None
    # for a network that only runs inside a pipeline (flow completion: inference.propainter)
    runner: type | None
