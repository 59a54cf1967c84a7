"""I3D video features for VFID (the network itself is `ecformer_jax.models.i3d`, registered as "i3d").

    extractor = I3DFeatures.from_checkpoint("i3d_rgb_imagenet.pt")   # or a converted folder
    feature = extractor(frames_uint8)                                  # (1024,) float64

As the anchors (FuseFormer / E2FGVI `evaluate.py`): the WHOLE video goes through I3D in one pass at its
own size (432x240 in the standard protocol), as RGB in [0, 1] (uint8 / 255, i.e. after the PNG round
trip of the completed frames), and the feature is the Mixed_5c output averaged over T, H and W.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from etils import epath

WEIGHTS_NAME = "i3d_rgb_imagenet.pt"


def load_i3d_variables(path: epath.PathLike):
    """Variables of model "i3d" from the PyTorch `i3d_rgb_imagenet.pt` (bare state_dict) or from a
    folder written by `python -m ecformer_jax.convert --model i3d`. Raises CheckpointError (a ValueError)."""
    from ecformer_jax import convert

    if not epath.Path(path).exists():
        raise convert.CheckpointError(f"I3D weights not found: {path} (expected {WEIGHTS_NAME} or a converted folder)")
    return convert.resolve(path, model="i3d").variables


class I3DFeatures:
    """One 1024-d VFID feature per video (jitted I3D; one compilation per distinct video shape)."""

    def __init__(self, variables, dtype: Any = None):
        import jax
        import jax.numpy as jnp

        from ecformer_jax import models
        from ecformer_jax.evaluation.metrics import jitted_apply

        self.model = models.build("i3d", **({"dtype": jnp.dtype(dtype)} if dtype else {}))
        self.variables = jax.tree.map(jnp.asarray, variables)
        self._apply = jitted_apply(self.model)

    @classmethod
    def from_checkpoint(cls, path: epath.PathLike, **kwargs) -> I3DFeatures:
        return cls(load_i3d_variables(path), **kwargs)

    def __call__(self, frames) -> np.ndarray:
        """frames (T, H, W, 3) uint8 (or floats already in [0, 1]) -> (1024,) float64."""
        import jax.numpy as jnp

        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"I3DFeatures: frames must be (T, H, W, 3) RGB; got shape {frames.shape}")
        x = frames.astype(np.float32) / 255.0 if frames.dtype == np.uint8 else frames.astype(np.float32)
        return np.asarray(self._apply(self.variables, jnp.asarray(x[None])), np.float64)[0]
