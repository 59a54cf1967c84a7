"""The one trainer: loop, sharded state creation, the non-finite guard, sharding, checkpoints, metric writers,
losses and the config part every task shares. What is trained comes from a task (ecformer_jax.tasks)."""
