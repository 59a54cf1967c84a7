"""The parity fixtures' deterministic weight rule: rebuild an official state_dict from its manifest.

Every `param` / `buffer_rule` entry is drawn from a generator seeded by crc32(f"{salt}:{name}");
`buffer_stored` / `buffer_kept` entries come from the fixture itself. Used by the parity tests and by
tools that need the official weights' layout without a download (benchmarks, demos).
"""
from __future__ import annotations

import json
import zlib
from collections.abc import Mapping

import numpy as np


def rule_value(name: str, shape, salt: str) -> np.ndarray:
    shape = tuple(int(s) for s in shape)
    x = np.random.default_rng(zlib.crc32(f"{salt}:{name}".encode())).standard_normal(shape)
    if len(shape) >= 2:
        v = x / np.sqrt(max(1, int(np.prod(shape[1:]))))
    elif name.endswith("running_var"):
        v = 1 + 0.1 * np.abs(x)
    elif name.endswith(("weight_u", "weight_v")):
        v = x / np.linalg.norm(x)
    elif name.endswith(("weight", "gamma")):
        v = 1 + 0.1 * x
    else:
        v = 0.1 * x
    return np.asarray(v, dtype=np.float32)


def state_dict_from_manifest(manifest, salt: str, stored: Mapping[str, np.ndarray] | None = None) -> dict:
    """manifest: list of [name, shape, kind, dtype]; stored: values for buffer_stored/buffer_kept entries."""
    stored = stored or {}
    out = {}
    for name, shape, kind, dtype in manifest:
        if kind in ("param", "buffer_rule"):
            out[name] = rule_value(name, shape, salt)
        else:
            if name not in stored:
                raise KeyError(f"manifest entry {name} ({kind}) has no stored value")
            out[name] = np.asarray(stored[name]).astype(dtype, copy=False)
    return out


def state_dict_from_fixture(npz) -> dict:
    """The official state_dict a parity fixture (an opened .npz) was recorded with."""
    meta = json.loads(bytes(npz["meta_json"]).decode())
    manifest = json.loads(bytes(npz["manifest_json"]).decode())
    stored = {k[len("state/"):]: npz[k] for k in npz.files if k.startswith("state/")}
    return state_dict_from_manifest(manifest, meta["weight_salt"], stored)
