"""ProPainter's recurrent flow completion network (sczhou/ProPainter configs/train_flowcomp.json): 10 local
frames at 432x240, batch 8, Adam (0, 0.99) lr 5e-5 x 0.2 at 300k/400k/500k/600k, 700k iterations; loss
0.25 x flow + 0.01 x warp + 1 x edge. `--config recurrent_flow_completion[:tiny]`. Set
--config.loss.raft_checkpoint to raft-things.pth for real runs (the ground-truth flows)."""
from ecformer_jax.tasks.flow_completion import flow_completion_config, variant


def get_config(arg=None):
    return variant(flow_completion_config("recurrent_flow_completion"), arg)
