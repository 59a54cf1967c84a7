"""How big a piece of work the CPU gets at a time, and which platform the code being traced is for.

Layers whose intermediates dwarf their inputs (attention logits, the deformable convolution's sampled columns)
run on the CPU in tiles of about `CPU_TILE` elements, one tile after another in a `lax.map`: the tile stays in
cache and the whole intermediate is never allocated (on the CPU a fresh 150 MB buffer costs as much as the
arithmetic that fills it). GPUs and TPUs get the whole thing at once (and attention a fused kernel,
layers/attention.py).

The choice follows the *target* platform, `target_platform()`: `jax.default_backend()` unless overridden by
`with on_platform("tpu"):` while tracing, as an ahead-of-time compile for a TPU topology on a CPU host does.
The override is part of `jax.jit`'s cache key (`jax.make_user_context`), so a function traced for one target
is re-traced for another.
"""
from __future__ import annotations

import contextlib
import contextvars

import jax

CPU_TILE = 1 << 21  # elements (8 MB of float32); 0 turns tiling off everywhere
PLATFORMS = ("cpu", "gpu", "tpu")


class _ContextVarContext:
    """`jax.make_user_context` for jax versions without it: the same `.value` / `with ctx(v):` interface
    (but not part of jit's cache key: trace for one target per jitted function there)."""

    def __init__(self, default_value=None):
        self._var = contextvars.ContextVar(f"ecformer_jax_context_{id(self)}", default=default_value)

    @property
    def value(self):
        return self._var.get()

    @contextlib.contextmanager
    def __call__(self, new_value):
        token = self._var.set(new_value)
        try:
            yield
        finally:
            self._var.reset(token)


def traced_context(default_value=None):
    """A thread-local setting read while tracing (`.value`, `with ctx(value):`) that jit's caches key on."""
    make = getattr(jax, "make_user_context", None)
    return make(default_value) if make is not None else _ContextVarContext(default_value)


_PLATFORM = traced_context(None)


def target_platform() -> str:
    """"cpu", "gpu" or "tpu": the `on_platform` override if one is active, else `jax.default_backend()`."""
    override = _PLATFORM.value
    if override is not None:
        return override
    backend = jax.default_backend()
    return "gpu" if backend in ("cuda", "rocm") else backend


def on_platform(name: str):
    """Context manager: trace for platform `name` ("cpu" | "gpu" | "tpu") whatever this host runs, e.g.
    `with on_platform("tpu"): jax.jit(f).trace(*specs).lower().compile()` for a TPU topology."""
    if name not in PLATFORMS:
        raise ValueError(f"on_platform: {name!r} is not one of {', '.join(PLATFORMS)}")
    return _PLATFORM(name)


def default_tile(tile: int | None) -> int:
    """`tile` if given, else `CPU_TILE` when the target platform is the CPU and 0 (untiled) elsewhere."""
    if tile is not None:
        return int(tile)
    return CPU_TILE if target_platform() == "cpu" else 0


def lane_dense(images):
    """(..., W, C) -> (..., W * C). A TPU stores an array's minor axis in 128-wide lanes, so full-resolution images
    with 1-9 channels minor take 14-128x their size in HBM; merged with the width they do not (the inpainting
    step's loss images, ProPainter's image propagation). Free on the CPU (a bitcast)."""
    return images.reshape(*images.shape[:-2], -1)
