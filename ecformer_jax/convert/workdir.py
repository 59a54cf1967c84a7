"""The generator of a training workdir, read in place (no training import).

    <workdir>/config.json                   the run's config: model.name, model.overrides
    <workdir>/checkpoints/<step>/state      orbax StandardCheckpoint of the train state (key g_params)

    name, overrides, variables, source = workdir.read("runs/vsr")          # the latest step
"""
from __future__ import annotations

import json

import numpy as np
from etils import epath

from ecformer_jax.errors import CheckpointError

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
PARAMS_KEY = "g_params"


def is_workdir(path: epath.PathLike) -> bool:
    """A folder written by `python -m ecformer_jax.train`: config.json and checkpoints/."""
    p = epath.Path(path)
    return p.is_dir() and (p / CONFIG).is_file() and (p / CHECKPOINTS).is_dir()


def steps(workdir: epath.PathLike) -> list[int]:
    """The checkpointed steps of `workdir`, ascending (orbax's temporary folders are not steps)."""
    folder = epath.Path(workdir) / CHECKPOINTS
    return sorted(int(d.name) for d in folder.iterdir() if d.name.isdigit()) if folder.is_dir() else []


def read(workdir: epath.PathLike, step: int | None = None) -> tuple[str, dict, dict, str]:
    """(model name, model overrides, {'params': generator parameters as numpy}, source) of checkpoint `step`
    (default: the latest) of `workdir`. Only the generator's parameters are read, not the optimizer state."""
    import jax
    import orbax.checkpoint as ocp

    workdir = epath.Path(workdir).expanduser()
    config_path = workdir / CONFIG
    if not config_path.is_file():
        raise CheckpointError(f"{config_path} not found: is {workdir} a training workdir?")
    try:
        model = json.loads(config_path.read_text())["model"]
        name, overrides = model["name"], dict(model.get("overrides") or {})
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{config_path} does not name a model (model.name): {e}") from None
    found = steps(workdir)
    folder = workdir / CHECKPOINTS
    if not found:
        raise CheckpointError(f"no checkpoints in {folder}")
    step = found[-1] if step is None else int(step)
    if step not in found:
        raise CheckpointError(f"no checkpoint of step {step} in {folder}; available: {found}")
    path = folder / str(step) / "state"
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        tree = checkpointer.metadata(path).item_metadata
        if PARAMS_KEY not in tree:
            raise CheckpointError(f"{path} holds no generator parameters ({PARAMS_KEY}); its keys are "
                                  f"{sorted(tree.keys())}")
        target = {PARAMS_KEY: tree[PARAMS_KEY]}
        numpy = ocp.RestoreArgs(restore_type=np.ndarray)
        as_numpy = {PARAMS_KEY: jax.tree.map(lambda _: numpy, tree[PARAMS_KEY])}
        restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
            item=target, restore_args=as_numpy, partial_restore=True))
    except CheckpointError:
        raise
    except Exception as e:  # orbax raises several kinds for a broken or foreign folder
        raise CheckpointError(f"could not read the training checkpoint {path}: {e}") from e
    return name, overrides, {"params": restored[PARAMS_KEY]}, f"{folder}/{step}"
