"""Train a model (inpainting or super-resolution: the task follows from the model).

    python -m ecformer_jax.train --config sttn --workdir runs/sttn
    python -m ecformer_jax.train --config sttn:tiny --workdir /tmp/tiny --config.num_steps=20
    python -m ecformer_jax.train --config my_config.py:tiny --workdir /tmp/mine      # a config file of your own
    ecformer-train --config vsr_transformer:tiny --workdir /tmp/vsr                  # the console script

--config takes a preset NAME[:VARIANT] (ecformer_jax/configs/NAME.py) or a path FILE.py[:VARIANT]; any field
can be overridden with --config.FIELD=VALUE. Runs on one CPU, several GPUs or a multi-host TPU pod (the same
command on every host; set --config.distributed=True or JAX_COORDINATOR_ADDRESS). Restarting with the same
workdir resumes from its newest usable checkpoint; SIGTERM (a pre-empted VM) saves a checkpoint at the next step
and exits 0. Quiet by default; -v 1 also shows the INFO of jax, orbax and grain.

Exit status: 0 done (or stopped by SIGTERM), 2 a one-line error (bad config or data, a workdir written for another
model, no usable checkpoint, a checkpoint that could not be written), 3 a non-finite loss.
"""
from __future__ import annotations

import logging as std_logging
import os
import sys

from absl import app, flags, logging

from ecformer_jax.configs import define_config_flag
from ecformer_jax.huge_pages import restart_with_huge_pages

_CONFIG = define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, TensorBoard events and image grids go")
flags.mark_flags_as_required(["config", "workdir"])

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def quiet_logging():
    """Below -v 1: only our own INFO lines and everyone's warnings (no jax backend probing, orbax or grain INFO;
    no matplotlib font-cache note); other libraries' errors without their tracebacks (a failed checkpoint write
    reaches our one-line error), and no 'Event loop is closed' tracebacks (the reads and writes orbax leaves
    running after one of them failed)."""
    if logging.get_verbosity() >= logging.DEBUG:
        return
    handler = logging.get_absl_handler()
    handler.addFilter(lambda r: r.levelno >= std_logging.WARNING or r.pathname.startswith(_PACKAGE))
    handler.addFilter(_without_foreign_traceback)
    std_logging.getLogger("matplotlib").setLevel(std_logging.ERROR)
    default_hook = sys.unraisablehook
    sys.unraisablehook = lambda u: None if _closed_loop(u.exc_value) else default_hook(u)


def _without_foreign_traceback(record) -> bool:
    if not record.pathname.startswith(_PACKAGE):
        record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


def _closed_loop(error) -> bool:
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def run(argv):
    """The command after flag parsing (absl's app.run calls it)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    quiet_logging()
    config = _CONFIG.value
    import jax

    if config.distributed or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()
    from ecformer_jax import tasks
    from ecformer_jax.training.loop import NonFiniteError, train

    try:
        train(config, _WORKDIR.value, tasks.for_config(config))
    except NonFiniteError as e:
        logging.error("%s", e)
        sys.exit(3)
    except (ValueError, OSError) as e:  # bad config or data, a workdir of another model, disk full, ...
        logging.error("%s", e)
        sys.exit(2)


def main():
    """Console entry point (ecformer-train)."""
    restart_with_huge_pages()
    app.run(run)


if __name__ == "__main__":
    main()
