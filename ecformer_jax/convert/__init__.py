"""PyTorch checkpoint -> Flax variables, converted checkpoints on disk, and the one loader.

    loaded = convert.resolve("sttn.pth", model="sttn", expect="inpainting")   # .pth | converted | workdir
    loaded.name, loaded.model, loaded.variables, loaded.source

    variables = convert.from_torch("sttn", state_dict)    # strict: missing/unexpected keys, shapes
    convert.save(directory, "sttn", variables)             # orbax checkpoint + model name
    name, overrides, variables = convert.load(directory)

The command line is `python -m ecformer_jax.convert` (convert/__main__.py).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
from etils import epath

from ecformer_jax.convert import workdir
from ecformer_jax.convert.state_dict import TorchStateDict, to_numpy, torch_load, unwrap
from ecformer_jax.errors import CheckpointError
from ecformer_jax.paths import absolute, is_remote

__all__ = ["CheckpointError", "Resolved", "TorchStateDict", "check_variables", "from_torch", "is_converted", "load",
           "load_torch_file", "options_from_state_dict", "parse_overrides", "read_checkpoint", "resolve", "save",
           "unwrap", "workdir"]


def load_torch_file(path: epath.PathLike) -> Any:
    """torch.load a .pth/.pt file on the CPU (tensors only, no pickled code)."""
    path = epath.Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        import torch  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the install
        raise CheckpointError("reading .pth files needs PyTorch: pip install 'ecformer_jax[torch]'") from e
    return torch_load(path)  # "<file>: not a PyTorch checkpoint (why)" for anything but a tensor checkpoint


def _flatten(tree, prefix=()):
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _flatten(v, prefix + (str(k),))
    else:
        yield prefix, tree


def check_variables(name: str, expected, variables, origin: Mapping[int, str] | None = None):
    """CheckpointError unless `variables` has exactly the keys and shapes of `expected` (e.g. the eval_shape of
    the model's init). origin: {id(array): torch key} to name the source of a wrong shape."""
    exp = {p: tuple(v.shape) for p, v in _flatten(expected)}
    have = dict(_flatten(variables))
    origin = origin or {}
    problems = []
    missing = sorted("/".join(p) for p in exp.keys() - have.keys())
    extra = sorted("/".join(p) for p in have.keys() - exp.keys())
    if missing:
        problems.append(f"the checkpoint has no value for {missing[:20]}")
    if extra:
        problems.append(f"the checkpoint has values the model does not have: {extra[:20]}")
    for p in sorted(exp.keys() & have.keys()):
        shape = tuple(np.shape(have[p]))
        if shape != exp[p]:
            src = f"{origin[id(have[p])]} -> " if id(have[p]) in origin else ""
            problems.append(f"{src}{'/'.join(p)}: checkpoint gives shape {shape}, model expects {exp[p]}")
    if problems:
        raise CheckpointError(f"checkpoint does not match model '{name}': " + "; ".join(problems[:40]))


def from_torch(name: str, state_dict: Mapping[str, Any] | epath.PathLike, **overrides) -> dict:
    """Convert an official PyTorch checkpoint (state_dict, wrapped dict or .pth path) for model `name`.

    Wrapped checkpoints ('netG', 'netD', 'state_dict', 'params', ...) are unwrapped and 'module.'
    prefixes stripped. Missing or unexpected keys and wrong shapes raise CheckpointError naming them.
    Returns the Flax variables as a plain nested dict of float32 numpy arrays.
    """
    from ecformer_jax import models

    entry = models.get(name)
    if not isinstance(state_dict, Mapping):
        state_dict = load_torch_file(state_dict)
    model = models.build(name, **overrides)
    tsd = TorchStateDict(unwrap(state_dict, entry.wrappers))
    variables = entry.from_torch(tsd, model)
    tsd.check(name)
    check_variables(name, _expected(model, name), variables, tsd.origin)
    return variables


def _expected(module, name: str):
    import jax

    from ecformer_jax import models

    return jax.eval_shape(lambda: models.init(module, name, jax.random.key(0)))


def options_from_state_dict(name: str, state_dict: Mapping[str, Any]) -> dict:
    """Module options an official (unwrapped) state_dict implies, e.g. VSR-Transformer's depth and block
    counts read off its keys; {} for models whose options are not recorded in the weights."""
    from ecformer_jax import models

    read = models.get(name).options_from_state_dict
    return dict(read(state_dict)) if read is not None else {}


def parse_overrides(pairs) -> dict:
    """['depth=3', 'patch_sizes=[[2,3],[1,1]]'] -> module options (JSON values; lists become tuples)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--option expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        out[key] = _tuples(out[key])
    return out


def _tuples(value):
    """JSON lists -> tuples (module fields are hashable)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


# --- converted checkpoints on disk ---------------------------------------------------------------
META = "ecformer.json"


def save(directory: epath.PathLike, name: str, variables, overrides: dict | None = None, source: str = "",
         overwrite: bool = False) -> str:
    """Write variables as an orbax checkpoint under `directory` (atomically: a temporary sibling
    directory is renamed into place at the end). Returns the absolute path."""
    import orbax.checkpoint as ocp

    directory = absolute(directory)
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} exists; pass overwrite=True (--overwrite) to replace it")
    meta = json.dumps({"model": name, "overrides": overrides or {}, "source": str(source)}, indent=1)
    ckptr = ocp.StandardCheckpointer()
    if is_remote(directory):  # no rename on object stores: the metadata file, written last, marks it complete
        if directory.exists():
            directory.rmtree()
        ckptr.save(directory / "variables", jax_tree(variables))
        ckptr.wait_until_finished()
        (directory / META).write_text(meta)
        return str(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = epath.Path(tempfile.mkdtemp(prefix=".tmp-" + directory.name + "-", dir=directory.parent))
    try:
        ckptr.save(tmp / "variables", jax_tree(variables))
        ckptr.wait_until_finished()
        (tmp / META).write_text(meta)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(directory)


def jax_tree(variables):
    import jax

    return jax.tree.map(lambda a: np.asarray(to_numpy(a)), variables)


def is_converted(directory: epath.PathLike) -> bool:
    return (epath.Path(directory) / META).is_file()


def load(directory: epath.PathLike):
    """Read a checkpoint written by `save`: returns (model name, overrides, variables as numpy)."""
    import jax
    import orbax.checkpoint as ocp

    directory = absolute(directory)
    if not is_converted(directory):
        raise CheckpointError(f"{directory} is not a converted ecformer_jax checkpoint (no {META})")
    meta = json.loads((directory / META).read_text())
    variables = ocp.StandardCheckpointer().restore(directory / "variables")
    return meta["model"], meta.get("overrides", {}), jax.tree.map(np.asarray, variables)


# --- the one loader ---------------------------------------------------------------------------------
class Resolved(NamedTuple):
    name: str  # the registered model name
    model: Any  # the flax module, built with the checkpoint's options and the compute dtype
    variables: dict  # checked against the model: every key and shape
    source: str  # the file or folder the variables were read from


def resolve(path: epath.PathLike, model: str | None = None, expect: str | None = None, dtype: Any = None,
            step: int | None = None) -> Resolved:
    """Load weights for inference or initialisation from any of
    * an official .pth / .pt (`model` names the model; unwrapped and converted with its strict key mapping,
      options such as VSR-Transformer's depth read off the keys),
    * a converted folder (`python -m ecformer_jax.convert`, `save`; it names its model and options),
    * a training workdir (config.json + checkpoints/<step>/state: the generator of `step`, default the latest).

    model: for a folder, the model it must hold (CheckpointError naming both otherwise). expect: a kind or
    task ("inpainting", "super_resolution", "flow", "feature", ...); a model of another kind is refused with
    a ValueError. dtype: the compute dtype (parameters stay float32). Every failure is a one-line
    CheckpointError / ValueError naming the file and the problem.
    """
    name, overrides, variables, source = read_checkpoint(path, model, expect, step)
    return Resolved(name, _build(name, overrides, dtype), variables, source)


def read_checkpoint(path: epath.PathLike, model: str | None = None, expect: str | None = None,
                    step: int | None = None, options: dict | None = None) -> tuple[str, dict, dict, str]:
    """(model name, module options, variables checked against the model, source): `resolve` without building
    the module. options: module options for a .pth (on top of those read off its keys)."""
    path = epath.Path(path)
    if path.is_dir():
        if is_converted(path):
            what, (name, overrides, variables), source = "converted", load(path), str(path)
            if step is not None:
                raise ValueError(f"a step ({step}) applies to a training workdir; {path} is a converted checkpoint")
        elif workdir.is_workdir(path):
            what, (name, overrides, variables, source) = "trained", workdir.read(path, step)
        else:
            raise CheckpointError(
                f"{path} is a folder but not a converted checkpoint (no {META}) nor a training workdir (no "
                f"{workdir.CONFIG} and {workdir.CHECKPOINTS}/); pass an official .pth file, a folder written by "
                "`python -m ecformer_jax.convert` or a training workdir")
        if options:
            raise ValueError(f"{path} is a {what} checkpoint: its model options come with it, not from --option")
        if model is not None and model != name:
            raise CheckpointError(f"{path} holds a {what} '{name}' checkpoint, not '{model}'; leave the model name "
                                  "out to use the checkpoint's")
        model_entry(name, expect)
        overrides = {k: _tuples(v) for k, v in overrides.items()}
        check_variables(name, _expected(_build(name, overrides, None), name), variables)
        return name, overrides, variables, source
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if step is not None:
        raise ValueError(f"a step ({step}) applies to a training workdir; {path} is a file")
    if model is None:
        from ecformer_jax import models

        raise ValueError(f"--model is required with a .pth checkpoint ({path})"
                         + (f"; one of {', '.join(models.names(expect))}" if expect else ""))
    entry = model_entry(model, expect)
    state_dict = unwrap(load_torch_file(path), entry.wrappers)
    overrides = {**options_from_state_dict(model, state_dict), **(options or {})}
    return model, overrides, from_torch(model, state_dict, **overrides), str(path)


def model_entry(name: str, expect: str | None):
    """The registry entry of `name`; ValueError for an unknown model or one of another kind than `expect`."""
    from ecformer_jax import models

    try:
        entry = models.get(name)
    except KeyError as e:
        raise ValueError(str(e).strip("'\"")) from None
    if expect is not None and entry.kind != expect:
        words = str(expect).replace("_", "-")
        article = "an" if words[0] in "aeiou" else "a"
        raise ValueError(f"model '{name}' is not {article} {words} model (its kind is '{entry.kind}'); use one of "
                         f"{', '.join(models.names(expect))}")
    return entry


def _build(name: str, overrides: dict, dtype):
    import jax.numpy as jnp

    from ecformer_jax import models

    return models.build(name, **overrides, **({} if dtype is None else {"dtype": jnp.dtype(dtype)}))
