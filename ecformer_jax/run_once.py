"""Compiling what runs once (the initial parameters and train state) cheaply."""
from __future__ import annotations

import jax


def run_once(fn, *args, out_shardings=None):
    """jit `fn` for a call made once and call it. On the CPU the compile skips LLVM's optimisations: 2-3x
    quicker (E2FGVI-HQ's tiny train state: 10 s -> 4 s; the full one 14 s -> 10 s in all), and the program still
    runs in about a second; the values are those of an optimised compile within float rounding. Under a
    transformation (jax.eval_shape of an init) it is a plain jit."""
    jitted = jax.jit(fn) if out_shardings is None else jax.jit(fn, out_shardings=out_shardings)
    tracer = getattr(jax.core, "Tracer", None)  # (should a jax version drop the name: a plain jit always)
    if tracer is None or any(isinstance(a, tracer) for a in jax.tree.leaves(args)):
        return jitted(*args)
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return jitted.lower(*args).compile(options)(*args)
