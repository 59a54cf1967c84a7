"""ProPainter's three checkpoints for the inference pipeline (inference/propainter.py): find them (a folder of the
official release files or converted folders, or three comma-separated paths), tell them apart by their keys,
load them. `locate`, `load_networks`, `wants_pipeline`."""
from __future__ import annotations

import os
from typing import Any, NamedTuple

from etils import epath

from ecformer_jax.errors import CheckpointError, naming

# the three networks: registered name -> the official release file
FILES = {"propainter": "ProPainter.pth", "recurrent_flow_completion": "recurrent_flow_completion.pth",
         "raft": "raft-things.pth"}
# a key that only that network's state_dict has (after any 'module.' prefix)
_ANCHORS = {"raft": "fnet.conv1.weight",
            "recurrent_flow_completion": "feat_prop_module.deform_align.backward_.conv_offset.0.weight",
            "propainter": "transformers.transformer.0.attention.query.weight"}



# --- checkpoints ------------------------------------------------------------------------------------------------
class Networks(NamedTuple):
    raft: Any  # convert.Resolved of each network
    flow_completion: Any
    generator: Any


def _official_names() -> str:
    return ", ".join(FILES.values())


def _identify(path: epath.Path) -> str | None:
    """Which of the three networks a checkpoint file / converted folder holds (None: none of them)."""
    import json

    from ecformer_jax import convert

    if path.is_dir():
        if not convert.is_converted(path):
            return None
        try:
            name = json.loads((path / convert.META).read_text())["model"]
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise CheckpointError(f"{path / convert.META}: unreadable ({e})") from None
        return name if name in FILES else None
    for name, file in FILES.items():
        if path.name == file:
            return name
    keys = convert.unwrap(convert.load_torch_file(path)).keys()
    for name, anchor in _ANCHORS.items():
        if any(k == anchor or k.endswith("." + anchor) for k in keys):
            return name
    return None


def locate(checkpoint) -> dict[str, epath.Path]:
    """{network name: path} of the three checkpoints (.pth files or converted folders). checkpoint: a folder
    holding ProPainter.pth, recurrent_flow_completion.pth and raft-things.pth (or, for any of them, a converted
    folder of that network inside it), or the three paths separated by commas. CheckpointError naming the missing
    or unrecognised file."""
    from ecformer_jax import convert

    text = os.fspath(checkpoint)
    found: dict[str, epath.Path] = {}
    if "," in text:
        where = f"--checkpoint {text}"
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            path = epath.Path(part)
            if not path.exists():
                raise CheckpointError(f"checkpoint not found: {path}")
            name = _identify(path)
            if name is None:
                raise CheckpointError(f"{path}: not one of ProPainter's checkpoints ({_official_names()}, or a "
                                      "converted folder of propainter / recurrent_flow_completion / raft)")
            if name in found:
                raise CheckpointError(f"{where}: {found[name]} and {path} are both {name} checkpoints")
            found[name] = path
    else:
        folder = epath.Path(text)
        where = str(folder)
        if not folder.exists():
            raise CheckpointError(f"checkpoint not found: {folder}")
        if not folder.is_dir() or convert.is_converted(folder):
            raise CheckpointError(f"{folder}: ProPainter needs three checkpoints; give the folder holding "
                                  f"{_official_names()} or the three paths separated by commas")
        for name, file in FILES.items():
            if (folder / file).is_file():
                found[name] = folder / file
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            name = _identify(sub)
            if name is not None and name not in found:
                found[name] = sub
    missing = [file for name, file in FILES.items() if name not in found]
    if missing:
        raise CheckpointError(f"{where}: no {missing[0]}" + (f" (nor {', '.join(missing[1:])})" if missing[1:] else "")
                              + f"; ProPainter needs {_official_names()} (official files or converted folders)")
    return found


def load_networks(checkpoint, dtype=None) -> Networks:
    """The three networks from `locate(checkpoint)` (or its result, a {name: path} dict); dtype (e.g.
    'bfloat16') is the flow completion network's and the generator's compute dtype (RAFT always runs in float32,
    as the official script does)."""
    from ecformer_jax import convert

    paths = checkpoint if isinstance(checkpoint, dict) else locate(checkpoint)

    def load(name, dt):
        try:
            return convert.resolve(paths[name], name, dtype=dt)
        except CheckpointError as e:
            raise naming(e, paths[name]) from None

    return Networks(load("raft", None), load("recurrent_flow_completion", dtype), load("propainter", dtype))


def wants_pipeline(checkpoint, model_name: str | None) -> bool:
    """Whether the inpaint command should run this pipeline: --model names a model whose registry entry has
    pipeline 'propainter', or, without --model, --checkpoint lists paths with commas or is a folder holding
    ProPainter.pth."""
    from ecformer_jax import models

    if model_name is not None:
        try:
            return models.get(model_name).pipeline == "propainter"
        except KeyError:
            return False
    if isinstance(checkpoint, (str, os.PathLike)):
        text = os.fspath(checkpoint)
        if "," in text:
            return True
        path = epath.Path(text)
        return path.is_dir() and (path / FILES["propainter"]).is_file()
    return False
