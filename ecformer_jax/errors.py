"""Errors shared across the package (a leaf module: it imports nothing of ours)."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model (missing/unexpected keys, wrong shapes, bad file)."""
