"""name -> one entry that owns the model's facts.

Every model file registers itself at import with `register(...)`; `ecformer_jax.models` imports them
all. An entry holds the module and its official hyper-parameters, the torch key mapping, example
inputs, its `Kind` and, for generators, the call convention, the size rule, the long-video protocol
defaults, the default discriminator and the extra loss terms. Trainer, commands and tools read these
facts here and nowhere else. `build(name, **overrides)` checks the overrides against the module's fields.
"""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecformer_jax.run_once import run_once

# keys a checkpoint may wrap its state_dict in (convert.unwrap tries them in this order)
GENERATOR_WRAPPERS = ("netG", "params_ema", "params", "state_dict", "model", "generator", "net", "G")
DISCRIMINATOR_WRAPPERS = ("netD", "params", "state_dict", "model", "discriminator", "net", "D")

# the generators' call convention: what `generate` passes to apply (in this order; num_local_frames by keyword)
INPUTS = ("masked_frames", "masks", "num_local_frames")


class Kind(str, enum.Enum):
    INPAINTING = "inpainting"
    SUPER_RESOLUTION = "super_resolution"
    DISCRIMINATOR = "discriminator"
    FLOW = "flow"
    BACKBONE = "backbone"
    BLOCK = "block"
    FEATURE = "feature"

    def __str__(self):
        return self.value


TASKS = (Kind.INPAINTING, Kind.SUPER_RESOLUTION)  # the kinds that are trained and run as a task


@dataclasses.dataclass(frozen=True)
class SizeRule:
    """fixed: (H, W) the model runs at by default (frames resized there and back), None = the video's own
    size; multiple: the processing size is mirror-padded up to multiples of (mh, mw), cropped back after."""

    fixed: tuple[int, int] | None
    multiple: tuple[int, int] = (4, 4)


@dataclasses.dataclass(frozen=True)
class ProtocolDefaults:
    """The long-video inpainting protocol of a generator (inference.protocol): whose test script it follows
    and that script's settings. local_frames: the generator is told how many window frames are local
    (E2FGVI's num_local_frames)."""

    family: str
    local_frames: bool = False
    neighbor_stride: int = 5
    ref_stride: int = 10
    mask_dilation: int = 4


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str
    module: type[nn.Module]
    defaults: dict
    from_torch: Callable  # (TorchStateDict, module) -> variables dict
    example_inputs: Callable  # (module) -> tuple of small arrays for init / eval_shape
    kind: Kind
    description: str = ""
    inputs: tuple = ("masked_frames",)  # generators: the apply arguments, names from INPUTS
    outputs: tuple = ("frames",)  # generators: apply's outputs; the ones after "frames" go to generate's extras
    size_fn: Callable | None = None  # (module) -> SizeRule; read through size_rule()
    protocol: ProtocolDefaults | None = None
    discriminator: str | None = None  # the discriminator a training config uses by default
    extra_losses: tuple = ()  # loss terms the trainer adds for this model, e.g. ("flow",)
    options_from_state_dict: Callable | None = None  # (state_dict) -> module options its keys imply
    # the inference pipeline the inpaint command runs for a network that is not a generator on its own
    # ('propainter': inference.propainter, RAFT + flow completion + this generator); None for the rest
    pipeline: str | None = None
    # the task that trains a network whose kind is not a task (recurrent_flow_completion: 'flow_completion';
    # propainter: 'inpainting'); None: trained as its kind's task, or not trained here
    trained_by: str | None = None
    # how the inpainting task builds the generator's inputs: 'masked' (generate(masked frames, masks)) or
    # 'flow_guided' (ProPainter: frozen RAFT flows of the clean local frames completed by the frozen flow
    # completion network, image propagation, updated masks; see tasks.inpainting)
    train_inputs: str = "masked"

    @property
    def task(self) -> str | None:
        """'inpainting' | 'super_resolution' for generators, `trained_by` for the networks it names, None for
        everything else."""
        return self.kind.value if self.kind in TASKS else self.trained_by

    @property
    def wrappers(self) -> tuple:
        return DISCRIMINATOR_WRAPPERS if self.kind == Kind.DISCRIMINATOR else GENERATOR_WRAPPERS

    @property
    def takes_masks(self) -> bool:
        return "masks" in self.inputs

    @property
    def local_frames(self) -> bool:
        """Whether the generator takes num_local_frames (static under jit: it shapes the network)."""
        return "num_local_frames" in self.inputs

    def size_rule(self, module: nn.Module) -> SizeRule | None:
        """The frame sizes `module` (built from this entry) runs at; None for models without a rule."""
        return None if self.size_fn is None else self.size_fn(module)

    def call_args(self, masked_frames, masks=None, num_local_frames: int | None = None) -> tuple[tuple, dict]:
        """(args, kwargs) of the generator's apply / init in the common convention (see `generate`)."""
        args = (masked_frames, masks) if self.takes_masks else (masked_frames,)
        kwargs = {"num_local_frames": num_local_frames} if self.local_frames else {}
        return args, kwargs


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, module, from_torch, example_inputs, kind: Kind | str, defaults=None, description="",
             inputs=("masked_frames",), outputs=("frames",), size_rule=None, protocol=None, discriminator=None,
             extra_losses=(), options_from_state_dict=None, pipeline=None, trained_by=None, train_inputs="masked"):
    """Register a model. An unknown kind is refused; an inpainting generator must declare its size rule and
    protocol, and a generator's protocol must agree with its inputs on num_local_frames. pipeline: see
    ModelEntry.pipeline (a model run by a pipeline is not run as a task on its own); trained_by, train_inputs:
    see ModelEntry."""
    try:
        kind = Kind(kind)
    except ValueError:
        raise ValueError(f"model '{name}': unknown kind {kind!r}; kinds are {[k.value for k in Kind]}") from None
    inputs, outputs = tuple(inputs), tuple(outputs)
    if inputs[:1] != ("masked_frames",) or set(inputs) - set(INPUTS) or outputs[:1] != ("frames",):
        raise ValueError(f"model '{name}': inputs {inputs} must start with masked_frames and come from {INPUTS}; "
                         f"outputs {outputs} must start with frames")
    if kind == Kind.INPAINTING:
        if size_rule is None or protocol is None:
            raise ValueError(f"inpainting model '{name}' must declare its size_rule and protocol")
        if protocol.local_frames != ("num_local_frames" in inputs):
            raise ValueError(f"model '{name}': protocol.local_frames={protocol.local_frames} disagrees with its "
                             f"inputs {inputs}")
    elif protocol is not None:
        raise ValueError(f"model '{name}' is a {kind.value} model: only inpainting generators have a protocol")
    _REGISTRY[name] = ModelEntry(name, module, dict(defaults or {}), from_torch, example_inputs, kind, description,
                                 inputs, outputs, size_rule, protocol, discriminator, tuple(extra_losses),
                                 options_from_state_dict, pipeline, trained_by, train_inputs)


def names(kind: Kind | str | None = None) -> list[str]:
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
    inputs = entry.example_inputs(model)
    # one compiled program (the forward pass is dropped from it); flax's init run eagerly compiles every operation
    # of the forward on its own (SPyNet: 415 programs, 12 s on the CPU)
    return run_once(lambda key: model.init(key, *inputs), rng)


def generate(name: str, model: nn.Module, variables, masked_frames, masks, num_local_frames: int | None = None,
             **kwargs):
    """One call convention for every inpainting generator: returns (frames, extras).

    masked_frames (B, T, H, W, 3) in [-1, 1] with holes at 0, masks (B, T, H, W, 1), 1 = hole.
    extras holds the outputs the entry declares after the frames (E2FGVI: {"flows": (forward, backward)}).
    kwargs go to apply (e.g. mutable=...), in which case the apply's extra return value is in extras["state"].
    """
    entry = get(name)
    if entry.kind != Kind.INPAINTING:
        raise ValueError(f"model '{name}' is a {entry.kind.value} model, not an inpainting generator")
    args, call_kwargs = entry.call_args(masked_frames, masks, num_local_frames)
    out = model.apply(variables, *args, **call_kwargs, **kwargs)
    extras = {}
    if kwargs.get("mutable"):
        out, extras["state"] = out
    if len(entry.outputs) == 1:
        return out, extras
    frames, *rest = out
    return frames, {**dict(zip(entry.outputs[1:], rest)), **extras}


def as_torch_layout(x: Any):  # pragma: no cover - convenience for users comparing with torch
    return jnp.moveaxis(x, -1, -3)
