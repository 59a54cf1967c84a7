import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ecformer_jax.layers.resize import resize_nearest, upsample_bilinear


@pytest.mark.parametrize("size,align", [((120, 216), True), ((31, 47), True), ((120, 216), False), ((23, 9), False)])
def test_bilinear_matches_torch(size, align):
    x = np.random.default_rng(1).standard_normal((2, 60, 108, 3)).astype(np.float32) * 50
    ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=align)
    ours = np.asarray(upsample_bilinear(x, size, align_corners=align))
    np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), atol=2e-5)


def test_bilinear_scale_factor_matches_torch():
    x = np.random.default_rng(2).standard_normal((1, 10, 14, 2)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), scale_factor=0.25, mode="bilinear",
                        align_corners=False, recompute_scale_factor=False)
    ours = np.asarray(upsample_bilinear(x, (2, 3), align_corners=False, scale_factor=0.25))
    np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), atol=1e-6)


def test_nearest_matches_torch():
    x = np.random.default_rng(3).standard_normal((1, 240, 432, 1)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), scale_factor=0.25)
    ours = np.asarray(resize_nearest(x, (60, 108), scale_factor=0.25))
    np.testing.assert_array_equal(ours, ref.permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("shape,size,align,scale", [((2, 30, 54, 3), (120, 216), True, None),
                                                    ((2, 30, 54, 3), (23, 9), False, None),
                                                    ((1, 10, 14, 2), (2, 3), False, 0.25)])
def test_bilinear_gradient_matches_torch(shape, size, align, scale):
    """On the CPU the backward is a gather (layers/resize.py), not autodiff's scatter-add: PyTorch's gradient,
    and autodiff's second-order gradient (the TPU target's program)."""
    import jax
    import jax.numpy as jnp

    from ecformer_jax.layers.tiling import on_platform

    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((shape[0], *size, shape[-1])).astype(np.float32)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
    kw = dict(scale_factor=scale, recompute_scale_factor=False) if scale else dict(size=size)
    wt = torch.from_numpy(w).permute(0, 3, 1, 2)
    (F.interpolate(xt, mode="bilinear", align_corners=align, **kw) * wt).sum().backward()

    def loss(a):
        return jnp.sum(upsample_bilinear(a, size, align_corners=align, scale_factor=scale) * w)

    np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(loss))(x)), xt.grad.permute(0, 2, 3, 1).numpy(), atol=2e-5)
    second = lambda a: jnp.sum(jnp.sin(jax.grad(lambda b: jnp.sum(jnp.sin(loss(b))))(a)))  # noqa: E731
    ours = jax.jit(jax.grad(second))(x)
    assert "custom_vjp_call" in str(jax.make_jaxpr(loss)(x))
    with on_platform("tpu"):
        assert "custom_vjp_call" not in str(jax.make_jaxpr(loss)(x))
        want = jax.jit(jax.grad(second))(x)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(want), rtol=1e-5, atol=1e-6 * float(np.max(np.abs(want))))
