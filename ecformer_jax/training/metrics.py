"""Metrics to the console and to TensorBoard event files (tensorboardX, no TensorFlow), image grids."""
from __future__ import annotations

import json

import numpy as np
from etils import epath
from PIL import Image


class MetricWriter:
    """Process 0 writes; other processes get a writer that does nothing."""

    def __init__(self, workdir: epath.PathLike, enabled: bool = True):
        self.enabled = enabled
        self.workdir = epath.Path(workdir)
        self._tb = None
        if enabled:
            self.workdir.mkdir(parents=True, exist_ok=True)
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
            self._jsonl = (self.workdir / "metrics.jsonl").open("a")

    def scalars(self, step: int, values: dict):
        if not self.enabled:
            return
        for k, v in values.items():
            self._tb.add_scalar(k, float(v), step)
        self._jsonl.write(json.dumps({"step": int(step), **{k: float(v) for k, v in values.items()}}) + "\n")
        self._jsonl.flush()

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
