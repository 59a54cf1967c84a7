#!/usr/bin/env python
"""ProPainter's flow-completion training targets and losses (tasks/flow_completion.py) against the official
ones, on random flows, masks and frames.

    python tools/propainter_losses_vs_official.py --official /path/to/ProPainter [--seed 0]

--official: a checkout of sczhou/ProPainter (nothing in it is changed). Imported from it: the Canny filter
(model/canny) the flow trainer builds with sigma (2, 2) and thresholds 0.1 / 0.2, and FlowLoss / EdgeLoss of
model/modules/flow_comp_raft.py (its `from RAFT import RAFT` is answered by a stub when the official RAFT
package cannot be imported: the losses do not use it). The edge targets follow the official trainer's
get_edges (magnitude over its maximum, zeros below 1). Printed: edge-map mismatches and the three losses on
both sides; the exit status is 1 unless the edges are identical and the losses agree to 1e-5 (relative).
"""
from __future__ import annotations

import argparse
import sys
import types

import numpy as np


def _official(path: str):
    sys.path.insert(0, path)
    try:
        import RAFT  # noqa: F401
    except Exception:  # the losses never call RAFT
        sys.modules["RAFT"] = types.SimpleNamespace(RAFT=None)
    from model.canny.canny_filter import Canny
    from model.modules.flow_comp_raft import EdgeLoss, FlowLoss
    return Canny, FlowLoss, EdgeLoss


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official", required=True, help="checkout of sczhou/ProPainter")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import jax.numpy as jnp
    import torch

    from ecformer_jax.tasks import flow_completion as fc

    Canny, FlowLoss, EdgeLoss = _official(args.official)
    rng = np.random.default_rng(args.seed)
    b, t, h, w = 2, 4, 32, 40
    yy, xx = np.mgrid[0:h, 0:w]
    pred = []
    for k in range(2):  # noisy piecewise-constant flows: real edges for Canny
        f = rng.normal(size=(b, t - 1, h, w, 2)).astype(np.float32) * 0.3
        f[..., 0] += 3.0 * (xx > 17 + k)
        f[..., 1] += 2.0 * ((xx + yy) > 30)
        pred.append(f)
    gt = [f + rng.normal(size=f.shape).astype(np.float32) * 0.5 for f in pred]
    masks = (rng.random((b, t, h, w, 1)) > 0.6).astype(np.float32)
    frames = rng.uniform(-1, 1, (b, t, h, w, 3)).astype(np.float32)
    pred_edges = [rng.uniform(0, 1, (b, t - 1, h, w, 1)).astype(np.float32) for _ in range(2)]

    def torch_layout(a):  # (..., H, W, C) -> (..., C, H, W)
        return torch.from_numpy(np.array(np.moveaxis(a, -1, -3)))  # a writable copy

    canny = Canny(sigma=(2, 2), low_threshold=0.1, high_threshold=0.2)

    def official_edges(flows):
        f = torch_layout(flows).reshape(-1, 2, h, w)
        mag = (f[:, 0:1] ** 2 + f[:, 1:2] ** 2) ** 0.5
        mag = mag * 0 if mag.max() < 1 else mag / mag.max()
        return np.moveaxis(canny(mag.float())[1].reshape(b, t - 1, 1, h, w).numpy(), 2, -1)

    ok = True
    ours_edges = [np.asarray(fc.flow_edges(jnp.asarray(f))) for f in gt]
    for name, f, mine in zip(("forward", "backward"), gt, ours_edges):
        bad = int((official_edges(f) != mine).sum())
        print(f"edges {name}: {bad} mismatches of {mine.size} ({int(mine.sum())} edge pixels)")
        ok &= bad == 0

    o_flow, o_warp = FlowLoss()([torch_layout(f) for f in pred], [torch_layout(f) for f in gt],
                                torch_layout(masks), torch_layout(frames))
    m_flow, m_warp = fc.flow_losses(tuple(map(jnp.asarray, pred)), tuple(map(jnp.asarray, gt)),
                                    jnp.asarray(masks), jnp.asarray(frames))
    o_edge = EdgeLoss()([torch_layout(e) for e in pred_edges], [torch_layout(e) for e in ours_edges],
                        torch_layout(masks))
    m_edge = fc.edge_loss(tuple(map(jnp.asarray, pred_edges)), tuple(map(jnp.asarray, ours_edges)),
                          jnp.asarray(masks))
    for name, o, m in (("flow", o_flow, m_flow), ("warp", o_warp, m_warp), ("edge", o_edge, m_edge)):
        o, m = float(o), float(m)
        rel = abs(o - m) / max(abs(o), 1e-12)
        print(f"{name} loss: official {o:.8g}  ours {m:.8g}  rel diff {rel:.2e}")
        ok &= rel < 1e-5
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
