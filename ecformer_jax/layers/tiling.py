"""How big a piece of work the CPU gets at a time.

Layers whose intermediates dwarf their inputs (attention logits, the deformable convolution's sampled columns)
run on the CPU in tiles of about `CPU_TILE` elements, one tile after another in a `lax.map`: the tile stays in
cache and the whole intermediate is never allocated (on the CPU a fresh 150 MB buffer costs as much as the
arithmetic that fills it). GPUs and TPUs get the whole thing at once.
"""
from __future__ import annotations

import jax

CPU_TILE = 1 << 21  # elements (8 MB of float32); 0 turns tiling off everywhere


def default_tile(tile: int | None) -> int:
    """`tile` if given, else `CPU_TILE` on the CPU and 0 (untiled) elsewhere."""
    if tile is not None:
        return int(tile)
    return CPU_TILE if jax.default_backend() == "cpu" else 0
