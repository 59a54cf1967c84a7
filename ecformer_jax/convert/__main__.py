"""Convert an official PyTorch checkpoint (.pth), or export the generator of a training workdir, into an
orbax checkpoint folder that ecformer_jax loads.

    python -m ecformer_jax.convert --model sttn --checkpoint sttn.pth --output checkpoints/sttn
    python -m ecformer_jax.convert --checkpoint runs/vsr --step 2000 --output checkpoints/vsr

Accepts bare state_dicts and the wrapped layouts of the official scripts ('netG', 'netD',
'state_dict', 'params', 'module.' prefixes). Fails with the list of missing / unexpected keys or
wrong shapes if the file does not belong to the model. A training workdir (config.json + checkpoints/)
names its model and options; its latest checkpoint is exported unless --step says which. Load the
result with `ecformer_jax.convert.resolve(DIR)` or pass DIR as --checkpoint to inpaint / upscale.

The output is written next to DIR (or locally, for a remote gs://... DIR) and moved into place when complete.
Errors (a file that is not a PyTorch checkpoint, a checkpoint of another model, an unknown model, an existing
DIR without --overwrite, an unwritable DIR) are one line on stderr with exit status 2.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main(argv=None) -> int:
    from ecformer_jax import convert, models
    from ecformer_jax.data import video_io
    from ecformer_jax.errors import USER_ERRORS, naming, report

    p = argparse.ArgumentParser(prog="python -m ecformer_jax.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None,
                   help=f"required with a .pth; a training workdir names its own. One of: {', '.join(models.names())}")
    p.add_argument("--checkpoint", required=True, help="the official .pth / .pt file, or a training workdir")
    p.add_argument("--output", required=True, help="directory to write the orbax checkpoint to")
    p.add_argument("--step", type=int, default=None, help="training workdir: the checkpoint step (default: latest)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="model option of a .pth, e.g. --option resize_embeddings=true (JSON values)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    args = p.parse_args(argv)

    try:
        overrides = convert.parse_overrides(args.option)
        # cheap checks first: the model name, the output; then the checkpoint
        if args.model is not None:
            convert.model_entry(args.model, None)
        output = video_io.output_path(args.output)
        if output.exists() and not args.overwrite:
            raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
        video_io.check_writable(output)
        t0 = time.perf_counter()
        try:
            name, overrides, variables, source = convert.read_checkpoint(args.checkpoint, args.model, step=args.step,
                                                                         options=overrides)
        except convert.CheckpointError as e:
            raise naming(e, args.checkpoint) from None
        # atomic: a temporary folder renamed into place (on gs://, the metadata file written last marks it complete)
        path = convert.save(output, name, variables, overrides, source=source, overwrite=args.overwrite)
    except (*USER_ERRORS, KeyError, TypeError) as e:  # one line, status 2, no traceback
        return report(e)
    import jax

    leaves = jax.tree.leaves(variables.get("params", {}))
    n = sum(int(np.size(a)) for a in leaves)
    dtypes = sorted({str(np.asarray(a).dtype) for a in jax.tree.leaves(variables)})
    others = [k for k in variables if k != "params"]
    print(f"converted {name}: {n:,} parameters ({'/'.join(dtypes)})"
          + (f", plus collections {others}" if others else "")
          + f", in {time.perf_counter() - t0:.1f}s -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
