"""Parity harness: rebuild the official state_dict of a fixture, convert it with the real converter,
run our model and compare every recorded output / intermediate (see ../shared/parity/README.md)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ecformer_jax import convert
from ecformer_jax.convert.weight_rule import state_dict_from_fixture

TOL = 1e-4


def load(parity_dir: Path, name: str):
    npz = np.load(parity_dir / f"{name}.npz")
    meta = json.loads(bytes(npz["meta_json"]).decode())
    return npz, meta


def inputs(npz):
    """frames in [-1, 1] (B, T, H, W, 3) and masks (B, T, H, W, 1), channels-last, float32."""
    frames = npz["input/frames_u8"].astype(np.float32) / 255.0 * 2 - 1
    masks = npz["input/masks_u8"].astype(np.float32)[..., None] if "input/masks_u8" in npz else None
    return frames, masks


def convert_fixture(npz, model_name: str, **overrides):
    return convert.from_torch(model_name, state_dict_from_fixture(npz), **overrides)


def nhwc_to_nchw(a):
    return np.moveaxis(np.asarray(a), -1, 1)


def _subsample(a, ref_shape, stride: int, channels: int):
    candidates = [a[..., ::stride, ::stride]]
    if a.ndim >= 3:
        candidates.append(a[:, :channels][..., ::stride, ::stride])
    for c in candidates:
        if c.shape == tuple(ref_shape):
            return c
    raise AssertionError(f"cannot cut our shape {a.shape} down to the recorded {tuple(ref_shape)}")


def _stats(a):
    a = np.asarray(a, np.float64)
    return np.array([a.mean(), a.std(), np.abs(a).mean(), a.min(), a.max()])


def compare(npz, meta, ours: dict) -> dict:
    """ours: {'output/<k>' or 'intermediate/<k>': full tensor in the official layout}.

    Asserts every recorded entry is present and within the bar; returns {entry: worst ratio}.
    """
    recorded = [k for k in npz.files if k.startswith(("output/", "intermediate/"))]
    missing = sorted(set(recorded) - set(ours))
    assert not missing, f"our run produced no value for recorded entries {missing}"
    stride, chans = int(meta.get("stride", 1)), int(meta.get("intermediate_channels_kept", 1 << 30))
    ratios, failures = {}, []
    for key in recorded:
        section, name = key.split("/", 1)
        full = np.asarray(ours[key], np.float32)
        assert full.shape == tuple(npz[f"{section}_shape/{name}"]), (
            f"{key}: our full shape {full.shape} != recorded {tuple(npz[f'{section}_shape/{name}'])}")
        ref = npz[key]
        cut = _subsample(full, ref.shape, stride, chans)
        bar = max(1.0, float(np.abs(ref).max()))
        ratio = float(np.abs(cut - ref).max()) / bar
        ref_stats = npz[f"{section}_stats/{name}"]
        stats_bar = max(1.0, float(np.abs(ref_stats[3:]).max()))
        stats_ratio = float(np.abs(_stats(full) - ref_stats).max()) / stats_bar
        ratios[key] = max(ratio, stats_ratio)
        if ratio > TOL or stats_ratio > TOL:
            failures.append(f"{key}: ratio {ratio:.2e}, stats ratio {stats_ratio:.2e}")
    assert not failures, "parity failures (bar 1e-4):\n" + "\n".join(failures)
    return ratios
