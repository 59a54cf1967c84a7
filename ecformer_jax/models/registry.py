"""name -> (module factory, torch converter, example inputs).

Every model file registers itself at import with `register(...)`; `ecformer_jax.models` imports
them all. `build(name, **overrides)` checks the overrides against the module's fields.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecformer_jax.convert.state_dict import DISCRIMINATOR_WRAPPERS, GENERATOR_WRAPPERS


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str
    module: type[nn.Module]
    defaults: dict
    from_torch: Callable  # (TorchStateDict, module) -> variables dict
    example_inputs: Callable  # (module) -> tuple of small arrays for init / eval_shape
    kind: str  # 'inpainting' | 'discriminator' | 'flow' | 'backbone' | 'super_resolution'
    takes_masks: bool = False
    wrappers: tuple = GENERATOR_WRAPPERS
    description: str = ""
    generate: Callable | None = None  # (module, variables, masked, masks, num_local_frames) -> (frames, extras)
    extra_losses: tuple = ()  # loss terms the trainer adds for this model, e.g. ("flow",)


_REGISTRY: dict[str, ModelEntry] = {}


def register(name, module, from_torch, example_inputs, kind, takes_masks=False, defaults=None, description="",
             generate=None, extra_losses=()):
    wrappers = DISCRIMINATOR_WRAPPERS if kind == "discriminator" else GENERATOR_WRAPPERS
    _REGISTRY[name] = ModelEntry(name, module, dict(defaults or {}), from_torch, example_inputs, kind,
                                 takes_masks, wrappers, description, generate, tuple(extra_losses))


def names(kind: str | None = None) -> list[str]:
    return sorted(n for n, e in _REGISTRY.items() if kind is None or e.kind == kind)


def get(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise KeyError(f"unknown model '{name}'; available: {', '.join(names())}")
    return _REGISTRY[name]


def build(name: str, **overrides) -> nn.Module:
    """The flax module for `name` with the official hyper-parameters, updated by `overrides`."""
    entry = get(name)
    fields = {f.name for f in dataclasses.fields(entry.module)} - {"parent", "name"}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise TypeError(f"model '{name}' has no option(s) {bad}; its options are {sorted(fields)}")
    return entry.module(**{**entry.defaults, **overrides})


def name_of(model: nn.Module) -> str:
    for n, e in _REGISTRY.items():
        if type(model) is e.module:
            return n
    raise KeyError(f"{type(model).__name__} is not a registered model")


def init(model: nn.Module, name: str | None = None, rng=None, dtype=jnp.float32):
    """Initialise variables of `model` on its registered example inputs (official init)."""
    entry = get(name or name_of(model))
    rng = jax.random.key(0) if rng is None else rng
    return model.init(rng, *entry.example_inputs(model))


def generate(name: str, model: nn.Module, variables, masked_frames, masks, num_local_frames: int | None = None,
             **kwargs):
    """One call convention for every inpainting generator: returns (frames, extras).

    masked_frames (B, T, H, W, 3) in [-1, 1] with holes at 0, masks (B, T, H, W, 1), 1 = hole.
    extras holds model-specific outputs (E2FGVI: {"flows": (forward, backward)}). kwargs go to apply
    (e.g. mutable=...), in which case the apply's extra return value is in extras["state"].
    """
    entry = get(name)
    if entry.kind != "inpainting":
        raise ValueError(f"model '{name}' is a {entry.kind} model, not an inpainting generator")
    if entry.generate is not None:
        return entry.generate(model, variables, masked_frames, masks, num_local_frames, **kwargs)
    args = (masked_frames, masks) if entry.takes_masks else (masked_frames,)
    out = model.apply(variables, *args, **kwargs)
    if kwargs.get("mutable"):
        return out[0], {"state": out[1]}
    return out, {}


def as_torch_layout(x: Any):  # pragma: no cover - convenience for users comparing with torch
    return jnp.moveaxis(x, -1, -3)
