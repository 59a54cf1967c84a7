"""`attend` on the accelerators: the Pallas TPU flash kernel (numerics through Pallas' TPU interpret mode,
and an ahead-of-time compile for a v5e topology that holds the kernel and no tiling), the cuDNN choice on
GPU (jax.nn.dot_product_attention patched: there is no GPU here), the fall-backs, and the CPU path
unchanged."""
from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecformer_jax.layers import attention as A
from ecformer_jax.layers.attention import MASKED_LOGIT, attend, implementation
from ecformer_jax.layers.tiling import CPU_TILE, default_tile, on_platform, target_platform


def _qkv(qshape, lk, dtype=jnp.float32, seed=0):
    *lead, _, d = qshape
    rng = np.random.default_rng(seed)
    shapes = (qshape, (*lead, lk, d), (*lead, lk, d))
    return tuple(jnp.asarray(rng.standard_normal(s, np.float32), dtype) for s in shapes)


def _key_mask(shape, seed=1):  # a NumPy 0 / PAD bias the same for every query, as E2FGVI's padded keys
    rng = np.random.default_rng(seed)
    return np.where(rng.random(shape) < 0.2, MASKED_LOGIT, 0.0).astype(np.float32)


def _uses_kernel(f, *args) -> bool:
    return "pallas_call" in str(jax.make_jaxpr(f)(*args))


def test_platform_and_implementation_settings():
    assert target_platform() == "cpu" and default_tile(None) == CPU_TILE
    with on_platform("tpu"):
        assert target_platform() == "tpu" and default_tile(None) == 0
    with pytest.raises(ValueError, match="on_platform"):
        on_platform("metal")
    with pytest.raises(ValueError, match="implementation"):
        implementation("fast")
    traces = []

    @jax.jit
    def f(x):
        traces.append(target_platform())
        return x + 1

    f(1.0)
    with on_platform("tpu"):
        f(1.0)  # the override is part of jit's cache key: traced again for the new target
    assert traces == ["cpu", "tpu"]


try:
    from jax.experimental.pallas import tpu as pltpu
except Exception:  # a jax without Pallas TPU
    pltpu = None
needs_interpret = pytest.mark.skipif(not hasattr(pltpu, "force_tpu_interpret_mode"),
                                     reason="this jax has no Pallas TPU interpret mode")


@needs_interpret
@pytest.mark.parametrize("qshape, lk, bias, scale", [
    ((1, 2, 200, 64), 150, None, 0.2),  # both lengths padded to the kernel's blocks
    ((2, 2, 3, 130, 32), 260, _key_mask((1, 1, 3, 1, 260)), None),  # key mask varying over a middle axis
    ((130, 32), 256, _key_mask((1, 256)), 0.5),  # no leading axes
])
def test_flash_kernel_matches_xla_path(qshape, lk, bias, scale):
    q, k, v = _qkv(qshape, lk)
    want = attend(q, k, v, scale=scale, bias=bias, tile=0)
    with on_platform("tpu"):
        assert _uses_kernel(lambda a, b, c: attend(a, b, c, scale=scale, bias=bias), q, k, v)
        with pltpu.force_tpu_interpret_mode():
            got = attend(q, k, v, scale=scale, bias=bias)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)


@needs_interpret
def test_flash_kernel_gradients_match_xla_path():
    q, k, v = _qkv((1, 1, 130, 32), 140)
    bias = _key_mask((1, 140))
    loss = lambda a, b, c, tile=None: jnp.sum(jnp.sin(attend(a, b, c, scale=0.3, bias=bias, tile=tile)))
    want = jax.grad(lambda *a: loss(*a, tile=0), argnums=(0, 1, 2))(q, k, v)
    with on_platform("tpu"), pltpu.force_tpu_interpret_mode():
        got = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=5e-5, atol=5e-5)


@needs_interpret
@pytest.mark.slow
def test_e2fgvi_window_attention_through_the_kernel():
    """TemporalFocalAttention's padded pooled keys reach the kernel as a key mask (segment ids)."""
    from ecformer_jax.layers.windows import FocalPool, TemporalFocalAttention

    # 3 frames of 2x2 windows of 5x9 tokens: 135 queries per window
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 3, 10, 18, 32), np.float32))
    pooled = FocalPool((5, 9)).apply(FocalPool((5, 9)).init(jax.random.key(1), x), x)
    module = TemporalFocalAttention(32, 2)
    params = module.init(jax.random.key(2), x, pooled)
    apply = jax.jit(module.apply)
    want = apply(params, x, pooled)
    with on_platform("tpu"):
        assert _uses_kernel(lambda a: module.apply(params, a, pooled), x)
        with pltpu.force_tpu_interpret_mode():
            got = apply(params, x, pooled)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


@pytest.mark.skipif(pltpu is None, reason="this jax has no Pallas TPU")
def test_tpu_fallbacks():
    """Top-k, short (window) attentions, a general or traced bias, unsupported head dims and a forced xla
    keep the XLA path (untiled for a TPU)."""
    big = _qkv((1, 2, 256, 64), 256)
    with on_platform("tpu"):
        assert _uses_kernel(lambda *a: attend(*a), *big)
        assert _uses_kernel(lambda *a: A.topk_attention(*a, topk=256), *big)  # topk >= Lk is dense
        assert not _uses_kernel(lambda *a: A.topk_attention(*a, topk=8), *big)
        assert not _uses_kernel(lambda *a: attend(*a), *_qkv((1, 2, 49, 64), 98))
        assert not _uses_kernel(lambda *a: attend(*a, bias=np.full((256, 256), 0.5, np.float32)), *big)
        assert not _uses_kernel(lambda *a: attend(*a, bias=jnp.zeros((1, 256))), *big)
        assert not _uses_kernel(lambda *a: attend(*a), *_qkv((1, 2, 256, 192), 256))
        assert not _uses_kernel(lambda *a: attend(*a, tile=1 << 14), *big)
        with implementation("xla"):
            assert not _uses_kernel(lambda *a: attend(*a), *big)
            assert "while" not in str(jax.make_jaxpr(lambda *a: attend(*a))(*big))  # untiled for a TPU


AOT_SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
from jax.experimental import topologies
from jax.sharding import NamedSharding, PartitionSpec as P
from ecformer_jax.layers.attention import attend, implementation
from ecformer_jax.layers.tiling import on_platform
try:
    devices = topologies.get_topology_desc("v5e:2x2", "tpu").devices
except Exception as e:
    print("NO-TOPOLOGY", type(e).__name__, e)
    raise SystemExit(0)
Auto, Explicit = jax.sharding.AxisType.Auto, jax.sharding.AxisType.Explicit

def hlo(qshape, lk, bias=None, impl="auto", grad=False, axis_type=Auto):
    sh = NamedSharding(jax.make_mesh((4,), ("data",), devices=devices, axis_types=(axis_type,)), P("data"))
    *lead, lq, d = qshape
    sq, sk = (jax.ShapeDtypeStruct(s, jnp.bfloat16, sharding=sh) for s in (qshape, (*lead, lk, d)))
    f = lambda q, k, v: attend(q, k, v, bias=bias)
    if grad:
        f = jax.grad(lambda *a: attend(*a, bias=bias).astype(jnp.float32).sum(), argnums=(0, 1, 2))
    with on_platform("tpu"), implementation(impl):
        return jax.jit(f).trace(sq, sk, sk).lower().compile().as_text()

def count(text):
    return {op: text.count(op) for op in ("tpu_custom_call", " while(", "all-gather", "all-to-all")}

mask = np.zeros((1, 1, 3, 1, 200), np.float32)
mask[0, 0, 1, 0, 150:170] = -100.0
got = {
    "dense": count(hlo((4, 2, 160, 64), 160)),
    "explicit": count(hlo((4, 2, 160, 64), 160, bias=mask[0, 0, :1, :, :160], axis_type=Explicit)),
    "xla": count(hlo((4, 2, 160, 64), 160, impl="xla")),
    "masked_grad": count(hlo((4, 2, 3, 130, 128), 200, bias=mask, grad=True)),
    "window": count(hlo((4, 2, 49, 32), 49)),
}
print(got)
none = {"tpu_custom_call": 0, " while(": 0, "all-gather": 0, "all-to-all": 0}
assert got["dense"] == got["explicit"] == {**none, "tpu_custom_call": 1}, got
assert got["xla"] == none and got["window"] == none, got
assert got["masked_grad"] == {**none, "tpu_custom_call": 3}, got  # forward, dK/dV, dQ kernels
print("FUSED-TPU-OK")
"""


def test_tpu_compile_holds_the_flash_kernel_and_no_tiling():
    """Compiled ahead of time for a batch-sharded v5e:2x2 (a CPU host, `on_platform("tpu")`): the kernel,
    inside its shard_map, with no gathers and no tiling loop; the XLA path and short windows have neither."""
    pytest.importorskip("libtpu")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost",
           "TPU_ACCELERATOR_TYPE": "v5litepod-4", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    res = subprocess.run([sys.executable, "-c", AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    if "NO-TOPOLOGY" in res.stdout:
        pytest.skip(f"libtpu gives no v5e topology here: {res.stdout.strip()[-200:]}")
    assert "FUSED-TPU-OK" in res.stdout, res.stdout[-2000:]


def test_gpu_choice_calls_cudnn(monkeypatch):
    """On a GPU target bf16 / fp16 attention goes to jax.nn.dot_product_attention(implementation="cudnn")
    in its (B, L, heads, D) layout with the scale and bias; float32 and big head dims stay on XLA."""
    calls = []
    original = jax.nn.dot_product_attention

    def spy(q, k, v, bias=None, *, scale=None, implementation=None, **kw):
        calls.append((implementation, q.shape, None if bias is None else bias.shape))
        return original(q, k, v, bias=bias, scale=scale, implementation="xla", **kw)

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    q, k, v = _qkv((2, 3, 4, 40, 16), 24, jnp.bfloat16)
    bias = jnp.asarray(np.random.default_rng(3).standard_normal((4, 40, 24), np.float32))
    with on_platform("gpu"):
        got = jax.jit(lambda *a: attend(*a, scale=0.25, bias=bias))(q, k, v)
        jax.make_jaxpr(lambda *a: attend(*a, scale=0.25))(*_qkv((2, 4, 40, 16), 24))  # float32: XLA
        jax.make_jaxpr(attend)(*_qkv((2, 4, 40, 160), 24, jnp.bfloat16))  # head dim over cuDNN's limit: XLA
        jax.make_jaxpr(lambda *a: A.topk_attention(*a, topk=4))(q, k, v)  # top-k: XLA
    assert calls == [("cudnn", (2, 40, 12, 16), (1, 12, 40, 24))]
    want = jax.jit(lambda *a: attend(*a, scale=0.25, bias=bias.astype(jnp.bfloat16), tile=0))(q, k, v)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=2e-2)


@pytest.mark.parametrize("qshape, lk", [((2, 4, 300, 32), 700), ((1, 3, 2, 200, 16), 180)])
def test_cpu_path_unchanged(qshape, lk):
    """On the CPU `attend` is the tiled XLA path bit for bit: default == explicit CPU_TILE == forced xla,
    a NumPy key mask == the same bias as a jax array (also in small tiles), and no kernel in the jaxpr."""
    q, k, v = _qkv(qshape, lk)
    mask = _key_mask((*qshape[1:-2], 1, lk))

    def run(bias, tile=None):
        return np.asarray(jax.jit(lambda *a: attend(*a, scale=0.2, bias=bias, tile=tile))(q, k, v))

    np.testing.assert_array_equal(run(mask, CPU_TILE // 64), run(jnp.asarray(mask), CPU_TILE // 64))
    default = run(mask)
    np.testing.assert_array_equal(default, run(jnp.asarray(mask), CPU_TILE))
    with implementation("xla"):
        np.testing.assert_array_equal(run(mask), default)
    with on_platform("cpu"), implementation("flash"):  # forced, but the bias is not a mask: XLA
        np.testing.assert_array_equal(run(jnp.asarray(mask)), default)
    assert not _uses_kernel(lambda *a: attend(*a, scale=0.2, bias=mask), q, k, v)
