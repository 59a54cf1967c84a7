"""Activation rematerialisation as a switch: `block_class(Block, remat)` is `Block` or `nn.remat(Block)`.

A rematerialised block keeps only its input for the backward pass and recomputes its activations there:
training memory falls by roughly the activations of all but one block, for about one more forward pass.
Parameter names do not change, so checkpoints and converted weights load either way.
"""
from __future__ import annotations

import flax.linen as nn


def block_class(cls, remat: bool, static_argnums: tuple = ()):
    """`cls`, or `nn.remat(cls)` when `remat`; static_argnums count `self` as 0 (non-array call arguments)."""
    return nn.remat(cls, static_argnums=static_argnums) if remat else cls
