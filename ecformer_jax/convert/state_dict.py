"""Reading PyTorch state_dicts: unwrapping, strict key bookkeeping and layout transforms.

This is the only module that knows PyTorch layouts. Model files describe their own key mapping
with the helpers of `TorchStateDict` (conv / linear / norm / raw); whatever the mapping did not
take, or asked for and did not find, is reported at the end by `check()`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ecformer_jax.errors import CheckpointError
from ecformer_jax.models.registry import GENERATOR_WRAPPERS

__all__ = ["CheckpointError", "TorchStateDict", "to_numpy", "unwrap"]


def to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def _is_array(v) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype")


def unwrap(obj: Any, wrappers: tuple = GENERATOR_WRAPPERS) -> dict[str, np.ndarray]:
    """Find the state_dict inside a loaded checkpoint and strip DataParallel 'module.' prefixes.

    wrappers: the keys to look under, in order (a model's `models.get(name).wrappers`)."""
    seen = []
    while isinstance(obj, Mapping) and not any(_is_array(v) for v in obj.values()):
        key = next((k for k in wrappers if k in obj), None)
        if key is None:
            raise CheckpointError(
                "could not find a state_dict in the checkpoint: its top-level keys are "
                f"{sorted(map(str, obj))[:20]}; expected tensors or one of the wrapper keys {list(wrappers)}"
            )
        seen.append(key)
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        k = str(k)
        while k.startswith("module."):
            k = k[len("module.") :]
        if _is_array(v):
            out[k] = v
    return out


def _fmt_keys(keys, limit=30):
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


class TorchStateDict:
    """A state_dict with bookkeeping of which keys a model's mapping consumed."""

    def __init__(self, state_dict: Mapping[str, Any]):
        self._sd = dict(state_dict)
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.origin: dict[int, str] = {}  # id(converted array) -> torch key, for shape errors

    def __contains__(self, key):
        return key in self._sd

    def keys(self):
        return self._sd.keys()

    def raw(self, key: str, dtype=np.float32) -> np.ndarray:
        if key not in self._sd:
            self.missing.append(key)
            return np.zeros((0,), dtype)
        self.used.add(key)
        return np.asarray(to_numpy(self._sd[key]), dtype=dtype)

    def _track(self, array, key):
        self.origin[id(array)] = key
        return array

    def tensor(self, key: str, transform=None) -> np.ndarray:
        a = self.raw(key)
        if transform is not None and a.size:
            a = np.ascontiguousarray(transform(a))
        return self._track(a, key)

    # --- layout helpers -------------------------------------------------------------------------
    def conv(self, prefix: str, bias: bool = True, weight: str = "weight") -> dict:
        """Conv{1,2,3}d (out, in/g, *k) -> Flax {'kernel': (*k, in/g, out), 'bias'}."""
        w = self.tensor(f"{prefix}.{weight}", lambda a: np.moveaxis(a, (0, 1), (-1, -2)))
        out = {"kernel": w}
        if bias:
            out["bias"] = self.tensor(f"{prefix}.bias")
        return out

    def conv_transpose(self, prefix: str, bias: bool = True) -> dict:
        """ConvTranspose2d (in, out, kh, kw) -> Flax ConvTranspose kernel (kh, kw, in, out), flipped."""
        w = self.tensor(f"{prefix}.weight", lambda a: np.moveaxis(a, (0, 1), (-2, -1))[::-1, ::-1])
        out = {"kernel": w}
        if bias:
            out["bias"] = self.tensor(f"{prefix}.bias")
        return out

    def linear(self, prefix: str, bias: bool = True) -> dict:
        """Linear (out, in) -> Dense {'kernel': (in, out), 'bias'}; 1x1 convs are accepted too."""
        w = self.tensor(f"{prefix}.weight", lambda a: a.reshape(a.shape[0], -1).T)
        out = {"kernel": w}
        if bias:
            out["bias"] = self.tensor(f"{prefix}.bias")
        return out

    def norm(self, prefix: str) -> dict:
        """LayerNorm / affine norm: weight -> scale, bias -> bias."""
        return {"scale": self.tensor(f"{prefix}.weight"), "bias": self.tensor(f"{prefix}.bias")}

    def check(self, model_name: str):
        unexpected = set(self._sd) - self.used
        problems = []
        if self.missing:
            problems.append(f"missing keys ({len(self.missing)}): {_fmt_keys(self.missing)}")
        if unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {_fmt_keys(unexpected)}")
        if problems:
            raise CheckpointError(f"checkpoint does not match model '{model_name}': " + "; ".join(problems))
