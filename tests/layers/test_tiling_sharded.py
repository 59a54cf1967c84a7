"""The CPU tiles of attention and the deformable conv split only non-batch axes, and E2FGVI's flow completion and
RAFT's bidirectional flows pair frames within each clip (RAFT also groups its correlation pyramids per clip):
under a batch-sharded jit over 8 devices they compile to per-device work with no collectives, and give the
unsharded result; the CPU conv's kernel gradient, sharded, gives the unsharded one."""
from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_disable_most_optimizations", True)  # compile-bound: small programs run once
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ecformer_jax.layers.attention import attend
from ecformer_jax.layers.deform import modulated_deform_conv2d
assert jax.device_count() == 8
sh = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
rng = np.random.default_rng(0)
q, k = rng.standard_normal((8, 4, 40, 16), np.float32), rng.standard_normal((8, 4, 30, 16), np.float32)
x, kern = rng.standard_normal((8, 7, 9, 4), np.float32), rng.standard_normal((3, 3, 4, 6), np.float32)
off, m = 2 * rng.standard_normal((8, 7, 9, 36), np.float32), rng.random((8, 7, 9, 18), np.float32)
cases = {
    "attend": (lambda tile: lambda a, b: attend(a, b, b, tile=tile), (q, k), (1200, 700)),
    "deform": (lambda tile: lambda a, o, mm: modulated_deform_conv2d(a, o, mm, kern, None, deform_groups=2, tile=tile),
               (x, off, m), (144,)),
}
# E2FGVI's flow completion pairs frames of each clip: the pairs must stay with their clip's device
from ecformer_jax import models
from ecformer_jax.models.e2fgvi import local_flows
spynet = models.build("spynet")
sv = models.init(spynet, "spynet", jax.random.key(0))
clips = rng.uniform(-1, 1, (8, 3, 128, 128, 3)).astype(np.float32)
cases["e2fgvi_flows"] = (lambda tile: lambda c: jnp.stack(local_flows(lambda a, b: spynet.apply(sv, a, b), c, 3)),
                         (clips,), (None,))
# RAFT (ProPainter): 4 pairs per clip with room for 2 correlation pyramids per clip: 2 groups, each clip's own
from ecformer_jax.models import raft
raft.DENSE_LIMIT_BYTES = 2 * (8 * 8) ** 2 * 4
rm = models.build("raft")
rv = models.init(rm, "raft", jax.random.key(0))
assert rm.corr_group(4, 64, 64) == 2
clips64 = clips[:, :, :64, :64]
cases["raft_bidirectional"] = (lambda tile: lambda c: jnp.stack(rm.apply(rv, c, 2, method="bidirectional")),
                               (clips64,), (None,))
for name, (make, args, tiles) in cases.items():
    want = np.asarray(jax.jit(make(0))(*args))
    for tile in tiles:
        out_sh = NamedSharding(sh.mesh, P(None, "data")) if name.endswith(("flows", "bidirectional")) else sh
        f = jax.jit(make(tile), in_shardings=(sh,) * len(args), out_shardings=out_sh)
        hlo = f.lower(*args).compile().as_text()
        found = [op for op in ("all-gather", "all-reduce", "collective-permute", "all-to-all") if op in hlo]
        assert not found, (name, tile, found)
        np.testing.assert_allclose(np.asarray(f(*args)), want, rtol=1e-5, atol=1e-5)
# the CPU conv gradient (layers/conv.py: per kernel row at stride 1, per tap when strided): the batch-sharded
# kernel gradient (per-device partial products, all-reduced) is the unsharded one
from ecformer_jax.layers.conv import conv_general_dilated
xc, kc = rng.standard_normal((8, 12, 20, 16), np.float32), 0.1 * rng.standard_normal((3, 3, 16, 24), np.float32)
rep = NamedSharding(sh.mesh, P())
for stride, dil in (((1, 1), (1, 1)), ((1, 1), (2, 2)), ((2, 2), (1, 1))):
    def loss(kk, a, stride=stride, dil=dil):
        return jnp.sum(jnp.sin(conv_general_dilated(a, kk, stride, ((2, 2), (2, 2)), rhs_dilation=dil,
                                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))))
    want = np.asarray(jax.jit(jax.grad(loss))(kc, xc))
    got = jax.jit(jax.grad(loss), in_shardings=(rep, sh), out_shardings=rep)(kc, xc)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
# FSDP (mesh.shard_params): the trainer's step gathers the parameters whole and keeps the activations split over
# the batch only: nothing but parameter all-gathers and gradient all-reduces (XLA used to split convs like their
# parameters, with all-to-alls and collective-permutes of activations between them)
from ecformer_jax import configs, tasks
from ecformer_jax.training import aot
config = configs.get_config("sttn:micro")
with config.unlocked():
    config.mesh.shard_params, config.batch_size = True, 8
step, state, batch = aot.abstract_train_step(config, tasks.for_config(config), sh.mesh)
assert any(s.sharding.spec != P() for s in jax.tree.leaves(state.g_params)), "no parameter is sharded"
hlo = step.lower(state, batch).compile().as_text()
assert set(aot.collectives(hlo)) == {"all-gather", "all-reduce"}, aot.collectives(hlo)
sources = aot.collective_sources(hlo)["all-gather"]
assert not [w for w in sources if "conv" in w or "Discriminator" in w or "STTN" in w], sources
print("TILING-SHARDED-OK")
"""


def test_tiles_stay_on_their_device_under_batch_sharding():
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "TILING-SHARDED-OK" in res.stdout
