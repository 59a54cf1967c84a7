#!/usr/bin/env python
"""Convert an official PyTorch checkpoint (.pth) into an orbax checkpoint that ecformer_jax loads.

    python tools/convert_torch.py --model sttn --checkpoint sttn.pth --output checkpoints/sttn

Accepts bare state_dicts and the wrapped layouts of the official scripts ('netG', 'netD',
'state_dict', 'params', 'module.' prefixes). Fails with the list of missing / unexpected keys or
wrong shapes if the file does not belong to the model. Load the result with
`ecformer_jax.convert.load(DIR)` or pass DIR as --checkpoint to the inpainting command.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def parse_overrides(pairs):
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"--option expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        if isinstance(out[key], list):
            out[key] = tuple(tuple(v) if isinstance(v, list) else v for v in out[key])
    return out


def main(argv=None):
    from ecformer_jax import convert, models

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help=f"one of: {', '.join(models.names())}")
    p.add_argument("--checkpoint", required=True, help="the official .pth / .pt file")
    p.add_argument("--output", required=True, help="directory to write the orbax checkpoint to")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="model option, e.g. --option resize_embeddings=true (JSON values)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    args = p.parse_args(argv)

    try:
        models.get(args.model)
        overrides = parse_overrides(args.option)
        t0 = time.perf_counter()
        variables = convert.from_torch(args.model, args.checkpoint, **overrides)
        path = convert.save(args.output, args.model, variables, overrides, source=args.checkpoint,
                            overwrite=args.overwrite)
    except (convert.CheckpointError, KeyError, TypeError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import jax

    leaves = jax.tree.leaves(variables.get("params", {}))
    n = sum(int(np.size(a)) for a in leaves)
    dtypes = sorted({str(np.asarray(a).dtype) for a in jax.tree.leaves(variables)})
    others = [k for k in variables if k != "params"]
    print(f"converted {args.model}: {n:,} parameters ({'/'.join(dtypes)})"
          + (f", plus collections {others}" if others else "")
          + f", in {time.perf_counter() - t0:.1f}s -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
