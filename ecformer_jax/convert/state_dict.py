"""Reading PyTorch state_dicts: unwrapping, strict key bookkeeping and layout transforms.

This is the only module that knows PyTorch layouts. Model files describe their own key mapping
with the helpers of `TorchStateDict` (conv / linear / norm / raw); whatever the mapping did not
take, or asked for and did not find, is reported at the end by `check()`.
"""
from __future__ import annotations

import re
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from ecformer_jax.errors import CheckpointError
from ecformer_jax.models.registry import GENERATOR_WRAPPERS

__all__ = ["CheckpointError", "TorchStateDict", "to_numpy", "torch_load", "unwrap"]


def _not_a_checkpoint(path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a PyTorch checkpoint ({why})")


def _sniff(path, f) -> None:
    """CheckpointError for a file that cannot be a torch.save file, told by its bytes: empty, neither a zip
    archive (torch >= 1.6) nor a pickle (the legacy format), a damaged zip or one without data.pkl."""
    head = f.read(16)
    f.seek(0)
    if not head:
        raise _not_a_checkpoint(path, "empty file, 0 bytes")
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(f) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise _not_a_checkpoint(path, f"a truncated or damaged zip archive: {e}") from None
        finally:
            f.seek(0)
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
            raise _not_a_checkpoint(path, f"a zip archive without data.pkl; it holds {shown or 'nothing'}")
        return
    if head[:1] != b"\x80":  # pickles of protocol 2+ (all torch.save files) start with PROTO
        try:
            text = head.decode("ascii")
        except UnicodeDecodeError:
            text = None
        if text is not None and " ".join(text.split()).isprintable():
            raise _not_a_checkpoint(path, f"it is text, starting {text.split(chr(10))[0]!r}")
        raise _not_a_checkpoint(path, f"neither a zip archive nor a pickle; it starts with {head[:8]!r}")


def _torch_reason(e: Exception) -> str:
    """One line from a torch.load failure, without PyTorch's advice to load with weights_only=False."""
    text = str(e)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (f"it stores the Python object {found.group(1)}, not only tensors, and unpickling that could run "
                "code; only plain tensor checkpoints are read")
    found = re.search(r"WeightsUnpickler error: *\n*\s*([^\n]+)", text)
    if found:
        return f"its pickle data is damaged or not written by torch.save: {found.group(1).strip()}"
    if isinstance(e, EOFError) or "EOF" in text or "truncated" in text:
        return f"truncated: {' '.join(text.split()) or 'unexpected end of file'}"
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and "weights_only" not in line and "trust" not in line]
    return lines[0] if lines else type(e).__name__


def torch_load(path) -> Any:
    """torch.load an (epath) .pth / .pt file on the CPU, tensors and plain containers only (weights_only=True,
    never False). Anything else - an empty, text, garbage or truncated file, a zip that is not a torch archive,
    a pickle that needs code to load - is one CheckpointError "<file>: not a PyTorch checkpoint (why)"."""
    import torch

    try:
        with path.open("rb") as f:
            _sniff(path, f)
            return torch.load(f, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:
        raise _not_a_checkpoint(path, _torch_reason(e)) from None


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
