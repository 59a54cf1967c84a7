"""Training presets, one per model, inside the package (they work from an installed wheel):

    python -m ecformer_jax.train --config sttn:tiny --workdir runs/x        # preset NAME[:VARIANT]
    python -m ecformer_jax.train --config my_config.py:tiny --workdir ...   # or a file of your own

Each preset module has `get_config(arg=None)`; `arg` is the variant after the colon.
"""
from __future__ import annotations

import importlib
import runpy
from pathlib import Path

from absl import flags
from ml_collections import config_flags

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


# --- the --config flag of the commands and tools: a preset or a file, plus --config.FIELD=VALUE overrides ---
class PresetConfigParser(flags.ArgumentParser):
    """--config NAME[:VARIANT] (a preset of ecformer_jax.configs) or FILE.py[:VARIANT], then ml_collections'
    config-file parser (`file_parser`)."""

    def __init__(self, file_parser):
        self.file_parser = file_parser

    def parse(self, argument):
        return self.file_parser.parse(resolve(argument))

    def flag_type(self):
        return self.file_parser.flag_type()


def define_config_flag(flag_values=flags.FLAGS, **kwargs):
    """ml_collections' --config flag (with its --config.FIELD=VALUE overrides) that also takes preset names."""
    holder = config_flags.DEFINE_config_file(
        "config", None, f"preset NAME[:VARIANT] ({', '.join(names())}) or FILE.py[:VARIANT]",
        flag_values=flag_values, lock_config=True, **kwargs)
    flag = flag_values["config"]
    flag.parser = PresetConfigParser(flag.parser)
    return holder
