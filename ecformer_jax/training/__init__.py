"""Training: sharded state, losses, the jitted train step, checkpoints, metrics and the loop."""
