"""Synthetic video clips for tests, demos and the `tiny` training configs.

A clip is a slowly panning textured background (coloured sinusoidal gratings) with a few textured
ellipses gliding over it on smooth sinusoidal paths. Every frame is an analytic function of (seed, t),
so any subset of frames can be rendered without the others, and a hole can be filled from the
neighbouring frames (the content moves, but smoothly) — inpainting such clips is learnable.
"""
from __future__ import annotations

import numpy as np


def _params(seed: int, height: int, width: int) -> dict:
    rng = np.random.default_rng([int(seed), 0x5EED])
    scale = min(height, width)
    p = {}
    # background: 3 gratings, each with a colour, a wave vector and a drift (pixels per frame)
    k = rng.uniform(2.0, 7.0, 3) * 2 * np.pi / scale
    theta = rng.uniform(0, np.pi, 3)
    p["bg_k"] = np.stack([k * np.cos(theta), k * np.sin(theta)], 1)  # (3, 2) in (row, col)
    p["bg_phase"] = rng.uniform(0, 2 * np.pi, 3)
    p["bg_color"] = rng.uniform(-1, 1, (3, 3))
    p["bg_base"] = rng.uniform(0.3, 0.7, 3)
    pan_angle = rng.uniform(0, 2 * np.pi)
    p["pan"] = rng.uniform(0.3, 1.2) * np.array([np.sin(pan_angle), np.cos(pan_angle)]) * scale / 96
    # objects: 3 ellipses with stripes, moving on Lissajous paths
    n = 3
    p["obj_center"] = rng.uniform(0.25, 0.75, (n, 2)) * [height, width]
    p["obj_amp"] = rng.uniform(0.1, 0.3, (n, 2)) * [height, width]
    p["obj_freq"] = rng.uniform(0.02, 0.06, (n, 2)) * 2 * np.pi  # radians per frame
    p["obj_phase"] = rng.uniform(0, 2 * np.pi, (n, 2))
    p["obj_axes"] = rng.uniform(0.12, 0.25, (n, 2)) * scale
    p["obj_rot"] = rng.uniform(0, np.pi, n)
    p["obj_spin"] = rng.uniform(-0.03, 0.03, n)
    p["obj_stripe"] = rng.uniform(0.15, 0.4, n) * 2 * np.pi / np.maximum(p["obj_axes"].min(1), 1) * 3
    p["obj_color_a"] = rng.uniform(0, 1, (n, 3))
    p["obj_color_b"] = rng.uniform(0, 1, (n, 3))
    return p


def _render(p: dict, t: float, height: int, width: int) -> np.ndarray:
    rows = np.arange(height, dtype=np.float32) - np.float32(p["pan"][0] * t)
    cols = np.arange(width, dtype=np.float32) - np.float32(p["pan"][1] * t)
    img = np.empty((height, width, 3), np.float32)
    img[:] = p["bg_base"]
    for j in range(3):
        # sin(kr*r + kc*c + phase) as a sum of two outer products (separable, cheap)
        ar = p["bg_k"][j, 0] * rows + p["bg_phase"][j]
        bc = p["bg_k"][j, 1] * cols
        wave = np.outer(np.sin(ar), np.cos(bc)) + np.outer(np.cos(ar), np.sin(bc))
        img += (0.15 * wave)[..., None] * p["bg_color"][j].astype(np.float32)
    for j in range(len(p["obj_center"])):
        center = p["obj_center"][j] + p["obj_amp"][j] * np.sin(p["obj_freq"][j] * t + p["obj_phase"][j])
        a, b = p["obj_axes"][j]
        reach = max(a, b) + 2
        r0, r1 = max(int(center[0] - reach), 0), min(int(center[0] + reach) + 1, height)
        c0, c1 = max(int(center[1] - reach), 0), min(int(center[1] + reach) + 1, width)
        if r0 >= r1 or c0 >= c1:
            continue
        rot = p["obj_rot"][j] + p["obj_spin"][j] * t
        dr = (np.arange(r0, r1, dtype=np.float32) - np.float32(center[0]))[:, None]
        dc = (np.arange(c0, c1, dtype=np.float32) - np.float32(center[1]))[None, :]
        u = np.float32(np.cos(rot)) * dr + np.float32(np.sin(rot)) * dc  # object coordinates: the texture
        v = np.float32(-np.sin(rot)) * dr + np.float32(np.cos(rot)) * dc  # moves with the object
        radius = np.sqrt((u / np.float32(a)) ** 2 + (v / np.float32(b)) ** 2)
        alpha = np.clip((1.0 - radius) * np.float32(min(a, b)) + 0.5, 0, 1)[..., None]  # ~1 px soft edge
        stripes = (0.5 + 0.5 * np.sin(np.float32(p["obj_stripe"][j]) * u))[..., None]
        color_a, color_b = p["obj_color_a"][j].astype(np.float32), p["obj_color_b"][j].astype(np.float32)
        color = stripes * color_a + (1 - stripes) * color_b
        patch = img[r0:r1, c0:c1]
        img[r0:r1, c0:c1] = (1 - alpha) * patch + alpha * color
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def synthetic_clip(num_frames: int, height: int, width: int, seed: int = 0, frame_indices=None) -> np.ndarray:
    """A deterministic synthetic clip -> uint8 (T, height, width, 3).

    frame_indices: optional frames to render (default all `num_frames`); frame t is the same whichever
    other frames are rendered with it.
    """
    if num_frames < 1 or height < 1 or width < 1:
        raise ValueError(f"synthetic_clip needs num_frames, height, width >= 1; got {num_frames}, {height}, {width}")
    indices = range(num_frames) if frame_indices is None else [int(i) for i in frame_indices]
    bad = [i for i in indices if not 0 <= i < num_frames]
    if bad:
        raise ValueError(f"synthetic_clip has {num_frames} frames; cannot render frame(s) {bad[:5]}")
    p = _params(seed, height, width)
    return np.stack([_render(p, float(t), height, width) for t in indices]) if indices else \
        np.zeros((0, height, width, 3), np.uint8)


def synthetic_masks(num_frames: int, height: int, width: int, seed: int = 0, frame_indices=None) -> np.ndarray:
    """Deterministic smooth masks -> bool (T, height, width), True = hole: one ellipse (about 5-15% of the
    frame) drifting on a sinusoidal path, for demos and quick tests (training uses `masks.random_shape_masks`)."""
    if num_frames < 1 or height < 1 or width < 1:
        raise ValueError(f"synthetic_masks needs num_frames, height, width >= 1; got {num_frames}, {height}, {width}")
    indices = np.arange(num_frames) if frame_indices is None else np.asarray(frame_indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= num_frames):
        raise ValueError(f"synthetic_masks has {num_frames} frames; cannot render frames {indices.tolist()[:5]}")
    rng = np.random.default_rng([int(seed), 0x3A5C])
    area = rng.uniform(0.05, 0.15) * height * width
    aspect = rng.uniform(0.6, 1.6)
    a = np.sqrt(area / np.pi * aspect)  # row semi-axis
    b = area / (np.pi * a)  # column semi-axis
    center = rng.uniform(0.35, 0.65, 2) * [height, width]
    amp = rng.uniform(0.1, 0.25, 2) * [height, width]
    freq = rng.uniform(0.03, 0.08, 2) * 2 * np.pi
    phase = rng.uniform(0, 2 * np.pi, 2)
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    out = np.zeros((len(indices), height, width), bool)
    for k, t in enumerate(indices):
        c = center + amp * np.sin(freq * t + phase)
        out[k] = ((rows - c[0]) / a) ** 2 + ((cols - c[1]) / b) ** 2 <= 1.0
    return out


__all__ = ["synthetic_clip", "synthetic_masks"]
