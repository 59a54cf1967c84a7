"""PyTorch checkpoint -> Flax variables, and saving / loading converted variables with orbax.

    variables = convert.from_torch("sttn", state_dict)    # strict: missing/unexpected keys, shapes
    convert.save(directory, "sttn", variables)             # orbax checkpoint + model name
    name, overrides, variables = convert.load(directory)
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from ecformer_jax.convert.state_dict import CheckpointError, TorchStateDict, to_numpy, unwrap

__all__ = ["CheckpointError", "TorchStateDict", "from_torch", "load_torch_file", "save", "load", "unwrap"]


def load_torch_file(path: str | os.PathLike) -> Any:
    """torch.load a .pth/.pt file on the CPU (tensors only, no pickled code)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the install
        raise CheckpointError("reading .pth files needs PyTorch: pip install 'ecformer_jax[torch]'") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"could not read {path} as a PyTorch checkpoint: {e}") from e


def _flatten(tree, prefix=()):
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _flatten(v, prefix + (str(k),))
    else:
        yield prefix, tree


def _check_tree(model_name, expected, got, origin):
    exp = {p: tuple(v.shape) for p, v in _flatten(expected)}
    have = dict(_flatten(got))
    problems = []
    missing = sorted("/".join(p) for p in exp.keys() - have.keys())
    extra = sorted("/".join(p) for p in have.keys() - exp.keys())
    if missing:
        problems.append(f"the mapping produced no value for {missing[:20]}")
    if extra:
        problems.append(f"the mapping produced values the model does not have: {extra[:20]}")
    for p in sorted(exp.keys() & have.keys()):
        shape = tuple(np.shape(have[p]))
        if shape != exp[p]:
            src = origin.get(id(have[p]), "?")
            problems.append(f"{src} -> {'/'.join(p)}: checkpoint gives shape {shape}, model expects {exp[p]}")
    if problems:
        raise CheckpointError(f"checkpoint does not match model '{model_name}': " + "; ".join(problems[:40]))


def from_torch(name: str, state_dict: Mapping[str, Any] | str | os.PathLike, **overrides) -> dict:
    """Convert an official PyTorch checkpoint (state_dict, wrapped dict or .pth path) for model `name`.

    Wrapped checkpoints ('netG', 'netD', 'state_dict', 'params', ...) are unwrapped and 'module.'
    prefixes stripped. Missing or unexpected keys and wrong shapes raise CheckpointError naming them.
    Returns the Flax variables as a plain nested dict of float32 numpy arrays.
    """
    import jax

    from ecformer_jax import models

    entry = models.get(name)
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = load_torch_file(state_dict)
    model = models.build(name, **overrides)
    tsd = TorchStateDict(unwrap(state_dict, entry.wrappers))
    variables = entry.from_torch(tsd, model)
    tsd.check(name)
    expected = jax.eval_shape(lambda: models.init(model, name, jax.random.key(0)))
    _check_tree(name, expected, variables, tsd.origin)
    return variables


# --- converted checkpoints on disk ---------------------------------------------------------------
META = "ecformer.json"


def save(directory: str | os.PathLike, name: str, variables, overrides: dict | None = None, source: str = "",
         overwrite: bool = False) -> str:
    """Write variables as an orbax checkpoint under `directory` (atomically: a temporary sibling
    directory is renamed into place at the end). Returns the absolute path."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory):
        if not overwrite:
            raise FileExistsError(f"{directory} exists; pass overwrite=True (--overwrite) to replace it")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(directory) + "-", dir=parent)
    try:
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(os.path.join(tmp, "variables"), jax_tree(variables))
        ckptr.wait_until_finished()
        with open(os.path.join(tmp, META), "w") as f:
            json.dump({"model": name, "overrides": overrides or {}, "source": source}, f, indent=1)
        if os.path.exists(directory):
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def jax_tree(variables):
    import jax

    return jax.tree.map(lambda a: np.asarray(to_numpy(a)), variables)


def is_converted(directory) -> bool:
    return os.path.isfile(os.path.join(os.fspath(directory), META))


def load(directory: str | os.PathLike):
    """Read a checkpoint written by `save`: returns (model name, overrides, variables as numpy)."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(os.fspath(directory))
    if not is_converted(directory):
        raise CheckpointError(f"{directory} is not a converted ecformer_jax checkpoint (no {META})")
    with open(os.path.join(directory, META)) as f:
        meta = json.load(f)
    variables = ocp.StandardCheckpointer().restore(os.path.join(directory, "variables"))
    import jax

    variables = jax.tree.map(np.asarray, variables)
    return meta["model"], meta.get("overrides", {}), variables
