"""Tasks: what is trained and how (config schema, batch spec, models, init, train step, preview, inference
runner). The trainer (`training.loop.train(config, workdir, task)`) takes one and knows none by name.

    task = tasks.for_config(config)     # from the registry entry of config.model.name
    task = tasks.get("super_resolution")
"""
from __future__ import annotations

from ecformer_jax import models
from ecformer_jax.tasks import flow_completion, inpainting, super_resolution
from ecformer_jax.tasks.base import Task

TASKS: dict[str, Task] = {t.name: t for t in (inpainting.TASK, super_resolution.TASK, flow_completion.TASK)}


def get(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def for_config(config) -> Task:
    """The task that trains config.model.name (its registry entry's task)."""
    entry = models.get(config.model.name)
    if entry.task not in TASKS:
        raise ValueError(f"model '{config.model.name}' is a {entry.kind.value} model: no task trains it (trainable: "
                         f"models of task {', '.join(sorted(TASKS))})")
    return TASKS[entry.task]


__all__ = ["Task", "TASKS", "get", "for_config", "inpainting", "super_resolution", "flow_completion"]
