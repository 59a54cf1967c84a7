"""Train an inpainting model.

    python -m ecformer_jax.train --config configs/sttn.py --workdir runs/sttn
    python -m ecformer_jax.train --config configs/sttn.py:tiny --workdir /tmp/tiny --config.num_steps=20

Runs on one CPU, several GPUs or a multi-host TPU pod (the same command on every host; set
--config.distributed=True or JAX_COORDINATOR_ADDRESS). Restarting with the same workdir resumes.
"""
from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "ml_collections config file (configs/<model>.py[:variant])",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "where checkpoints, TensorBoard events and image grids go")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    config = flags.FLAGS.config
    import jax

    if config.distributed or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    from ecformer_jax.training.loop import NonFiniteError, train

    try:
        train(config, flags.FLAGS.workdir)
    except NonFiniteError as e:
        logging.error("%s", e)
        sys.exit(3)
    except (ValueError, FileNotFoundError) as e:
        logging.error("%s", e)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
