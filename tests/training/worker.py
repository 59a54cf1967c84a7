"""Subprocess entry for the resume and multi-process tests:

    python tests/training/worker.py CONFIG WORKDIR OUT_NPZ [PROCESS_ID NUM_PROCESSES PORT]
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def main():
    config_path, workdir, out = sys.argv[1:4]
    import jax

    if len(sys.argv) > 4:
        pid, nproc, port = (int(a) for a in sys.argv[4:7])
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc, process_id=pid)
    jax.config.update("jax_default_matmul_precision", "highest")
    import numpy as np
    from jax.experimental import multihost_utils

    from ecformer_jax import configs, tasks
    from ecformer_jax.training.loop import train

    config = configs.get_config(config_path)
    state = train(config, workdir, tasks.for_config(config))
    # parameters may be sharded over the processes (mesh.shard_params): gather the whole values on every process
    sharded = sum(not a.sharding.is_fully_replicated for a in jax.tree.leaves(state.g_params))
    params = multihost_utils.process_allgather(state.g_params, tiled=True)
    multihost_utils.sync_global_devices("worker-done")
    if jax.process_index() == 0:
        flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
                for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
        np.savez(out, **flat)
    print("WORKER-DONE", jax.process_index(), jax.device_count(), "sharded", sharded)


if __name__ == "__main__":
    main()
