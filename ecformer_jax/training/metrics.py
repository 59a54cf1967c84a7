"""Metrics to the console and to TensorBoard event files (tensorboardX, no TensorFlow), image grids.

The workdir may be remote (gs://...: tensorboardX writes event files there itself). Object stores cannot
append, so on a remote workdir metrics.jsonl is kept in memory and rewritten whole at each write (a resumed
run reads the old rows first: nothing is lost).
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
from etils import epath
from PIL import Image

from ecformer_jax.paths import is_remote


def _tensorboardx():
    """tensorboardX, imported without PyTorch where torch is not loaded yet: it imports torch only to accept
    torch tensors (1-2 s and ~300 MB per process), and it is given floats and numpy arrays here."""
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        import tensorboardX
        return tensorboardX
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects without torch
    try:
        import tensorboardX
    finally:
        del sys.modules["torch"]
    return tensorboardX


class MetricWriter:
    """Process 0 writes; other processes get a writer that does nothing."""

    def __init__(self, workdir: epath.PathLike, enabled: bool = True):
        self.enabled = enabled
        self.workdir = epath.Path(workdir)
        self._tb = None
        if enabled:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._tb = _tensorboardx().SummaryWriter(os.fspath(self.workdir / "tensorboard"))
            self._jsonl = _JsonLines(self.workdir / "metrics.jsonl")

    def scalars(self, step: int, values: dict):
        if not self.enabled:
            return
        for k, v in values.items():
            self._tb.add_scalar(k, float(v), step)
        self._jsonl.append(json.dumps({"step": int(step), **{k: float(v) for k, v in values.items()}}) + "\n")

    def image(self, step: int, name: str, grid: np.ndarray):
        """grid: uint8 (H, W, 3); also written as <workdir>/images/<name>_<step>.png."""
        if not self.enabled:
            return
        self._tb.add_image(name, grid, step, dataformats="HWC")
        folder = self.workdir / "images"
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / f"{name}_{step:07d}.png").open("wb") as f:
            Image.fromarray(grid).save(f, format="PNG")

    def flush(self):
        if self.enabled:
            self._tb.flush()

    def close(self):
        if self.enabled:
            self._tb.close()
            self._jsonl.close()


class _JsonLines:
    """Lines appended to a file: a local file in append mode, a remote one rewritten whole after each line."""

    def __init__(self, path: epath.Path):
        self.path = path
        if is_remote(path):
            self._text = path.read_text() if path.exists() else ""
            self._file = None
        else:
            before = path.read_text() if path.exists() else ""
            self._file = path.open("a")
            if before and not before.endswith("\n"):  # a kill tore the last line: the next row starts on its own line
                self._file.write("\n")

    def append(self, line: str):
        if self._file is None:
            self._text += line
            self.path.write_text(self._text)
        else:
            self._file.write(line)
            self._file.flush()

    def close(self):
        if self._file is not None:
            self._file.close()


def to_uint8(x) -> np.ndarray:
    """[-1, 1] floats -> uint8."""
    return np.clip((np.asarray(x, np.float32) + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def image_grid(masked, output, target, max_rows: int = 2, max_frames: int = 5) -> np.ndarray:
    """Rows of frames per sample: masked input | output | ground truth, each (B, T, H, W, 3) in [-1, 1]."""
    rows = []
    for b in range(min(max_rows, masked.shape[0])):
        for video in (masked, output, target):
            rows.append(np.concatenate(list(to_uint8(video[b, :max_frames])), axis=1))
    return np.concatenate(rows, axis=0)
