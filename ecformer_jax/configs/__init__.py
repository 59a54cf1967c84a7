"""Training presets, one per model, inside the package (they work from an installed wheel):

    python -m ecformer_jax.train --config sttn:tiny --workdir runs/x        # preset NAME[:VARIANT]
    python -m ecformer_jax.train --config my_config.py:tiny --workdir ...   # or a file of your own

Each preset module has `get_config(arg=None)`; `arg` is the variant after the colon.
"""
from __future__ import annotations

import importlib
import runpy
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def names() -> list[str]:
    """The preset names (modules of this package; those starting with '_' are shared recipes)."""
    return sorted(p.stem for p in _HERE.glob("*.py") if not p.stem.startswith("_"))


def is_preset(spec: str) -> bool:
    """'sttn' or 'sttn:tiny' (a preset) rather than a file path ('configs/sttn.py', 'my.py:tiny')."""
    name = spec.split(":", 1)[0]
    return bool(name) and not name.endswith(".py") and "/" not in name and "\\" not in name


def resolve(spec: str) -> str:
    """A preset 'name[:variant]' as '<package>/configs/name.py[:variant]'; a file path is returned as given."""
    if not is_preset(spec):
        return spec
    name, colon, variant = spec.partition(":")
    if name not in names():
        raise ValueError(f"unknown config preset {name!r}; presets: {', '.join(names())} (or a path to a .py file)")
    return str(_HERE / f"{name}.py") + colon + variant


def get_config(spec: str):
    """The config of a preset 'name[:variant]' or a file 'path.py[:variant]' (without command-line overrides)."""
    path, colon, variant = resolve(spec).partition(":")
    if is_preset(spec):
        get = importlib.import_module(f"{__name__}.{spec.partition(':')[0]}").get_config
    else:
        get = runpy.run_path(path)["get_config"]
    return get(variant) if colon else get()
