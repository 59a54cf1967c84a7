import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ecformer_jax.layers.patches import fold, grid_size, overlap_count, unfold


@pytest.mark.parametrize("h,w,k,s,p", [(60, 108, 7, 3, 3), (13, 17, 3, 2, 1), (8, 8, 4, 4, 0)])
def test_unfold_fold_match_torch(h, w, k, s, p):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, h, w, 5)).astype(np.float32)
    ref = F.unfold(torch.from_numpy(x).permute(0, 3, 1, 2), k, stride=s, padding=p)  # (N, C*k*k, L)
    nh, nw = grid_size(h, w, k, s, p)
    ours = np.asarray(jax.jit(unfold, static_argnums=(1, 2, 3))(x, k, s, p))  # one compile, not one per slice
    assert ours.shape == (2, nh, nw, 5 * k * k)
    # tap-major (tap * C + c) against PyTorch's channel-major (c * k * k + tap)
    ours_torch_order = ours.reshape(2, nh * nw, k * k, 5).transpose(0, 3, 2, 1).reshape(2, 5 * k * k, nh * nw)
    np.testing.assert_array_equal(ours_torch_order, ref.numpy())

    patches = rng.standard_normal((2, nh, nw, 5 * k * k)).astype(np.float32)
    tp = torch.from_numpy(patches.reshape(2, nh * nw, k * k, 5).transpose(0, 3, 2, 1).reshape(2, 5 * k * k, -1).copy())
    ref_fold = F.fold(tp, (h, w), k, stride=s, padding=p).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(jax.jit(lambda a: fold(a, (h, w), k, s, p))(patches)), ref_fold, atol=1e-5)

    ones = torch.ones(1, k * k, nh * nw)
    np.testing.assert_array_equal(overlap_count((h, w), k, s, p)[..., 0],
                                  F.fold(ones, (h, w), k, stride=s, padding=p)[0, 0].numpy())


def test_fold_rejects_wrong_grid():
    with pytest.raises(ValueError, match="patch grid does not fit"):
        fold(np.zeros((1, 3, 3, 49), np.float32), (60, 108), 7, 3, 3)


@pytest.mark.parametrize("h, w, k, s, p", [(12, 20, 7, 3, 3), (13, 11, 3, 2, 1)])
def test_custom_vjps_match_autodiff(h, w, k, s, p):
    """unfold / fold carry hand-written VJPs (each one's is the other); they must equal plain autodiff."""
    import jax.numpy as jnp

    from ecformer_jax.layers.patches import _fold, _unfold

    rng = np.random.default_rng(1)
    nh, nw = grid_size(h, w, k, s, p)
    x = rng.standard_normal((2, h, w, 3)).astype(np.float32)
    patches = rng.standard_normal((2, nh, nw, 3 * k * k)).astype(np.float32)
    vjp = lambda f: jax.jit(lambda a, g: jax.vjp(f, a)[1](g)[0])  # noqa: E731 (one compile, not one per op)
    got = vjp(lambda a: unfold(a, k, s, p))(x, patches)
    want = vjp(lambda a: _unfold(a, k, s, p))(x, patches)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    got = vjp(lambda a: fold(a, (h, w), k, s, p))(patches, x)
    want = vjp(lambda a: _fold(a, (h, w), k, s, p))(patches, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    # second order (grad of a grad) goes through the same pair
    g2 = jax.jit(jax.grad(lambda a: jnp.sum(jax.grad(lambda b: jnp.sum(unfold(b, k, s, p) ** 2))(a) ** 2)))(x)
    assert np.all(np.isfinite(np.asarray(g2)))


def _fold_every_tap_padded(patches, size, k, s, p):
    """The plain fold: each of the k*k taps padded (with stride - 1 zeros between its pixels) to the whole padded
    map, summed in (ky, kx) order."""
    from jax import lax

    n, nh, nw, f = patches.shape
    h, w = size
    taps = patches.reshape(n, nh, nw, k * k, f // (k * k))  # tap-major
    out = 0
    for ky in range(k):
        for kx in range(k):
            rows = (ky, h + 2 * p - ky - s * (nh - 1) - 1, s - 1)
            cols = (kx, w + 2 * p - kx - s * (nw - 1) - 1, s - 1)
            cfg = ((0, 0, 0), rows, cols, (0, 0, 0))
            out = out + lax.pad(taps[:, :, :, ky * k + kx], np.float32(0), cfg)
    return out[:, p:p + h, p:p + w]


@pytest.mark.parametrize("h, w, k, s, p", [(21, 33, 7, 3, 3), (13, 17, 3, 2, 1), (8, 8, 4, 4, 0), (9, 9, 2, 3, 0)])
def test_fold_by_phase_is_the_same_sum(h, w, k, s, p):
    """fold sums each stride phase on the patch grid and interleaves the phases: the same additions in the same
    order as padding every tap to the whole map, so bitwise equal, also through unfold's VJP (which is fold)."""
    rng = np.random.default_rng(2)
    nh, nw = grid_size(h, w, k, s, p)
    patches = rng.standard_normal((2, nh, nw, 3 * k * k)).astype(np.float32)
    x = rng.standard_normal((2, h, w, 3)).astype(np.float32)
    want = np.asarray(jax.jit(lambda a: _fold_every_tap_padded(a, (h, w), k, s, p))(patches))
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda a: fold(a, (h, w), k, s, p))(patches)), want)
    unfold_vjp = jax.jit(lambda a, g: jax.vjp(lambda b: unfold(b, k, s, p), a)[1](g)[0])
    np.testing.assert_array_equal(np.asarray(unfold_vjp(x, patches)), want)


def test_patch_dense_keeps_pytorch_order():
    """PatchDense holds an nn.Linear's parameters in PyTorch's channel-major patch order and applies them to
    tap-major patches: unfold -> PatchDense("in") equals nn.Unfold -> Linear, PatchDense("out") -> fold equals
    Linear -> nn.Fold, with the same parameters (what the converter writes)."""
    import flax.linen as nn

    from ecformer_jax.layers.patches import PatchDense

    h, w, k, s, p, c, hidden = 13, 17, 3, 2, 1, 4, 6
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, h, w, c)).astype(np.float32)
    nh, nw = grid_size(h, w, k, s, p)
    lin_in = torch.nn.Linear(c * k * k, hidden)
    lin_out = torch.nn.Linear(hidden, c * k * k)
    params = lambda lin: {"params": {"kernel": lin.weight.detach().numpy().T, "bias": lin.bias.detach().numpy()}}  # noqa: E731
    tokens = lin_in(F.unfold(torch.from_numpy(x).permute(0, 3, 1, 2), k, stride=s, padding=p).transpose(1, 2))
    ref_tokens = tokens.detach().numpy().reshape(2, nh, nw, hidden)
    ours_tokens = PatchDense(hidden, k * k, "in").apply(params(lin_in), unfold(x, k, s, p))
    np.testing.assert_allclose(np.asarray(ours_tokens), ref_tokens, rtol=1e-5, atol=1e-5)

    ref_map = F.fold(lin_out(tokens).transpose(1, 2), (h, w), k, stride=s, padding=p).permute(0, 2, 3, 1)
    ours_map = fold(PatchDense(c * k * k, k * k, "out").apply(params(lin_out), ours_tokens), (h, w), k, s, p)
    np.testing.assert_allclose(np.asarray(ours_map), ref_map.detach().numpy(), rtol=1e-5, atol=1e-5)
    # the same parameter tree as nn.Dense (checkpoints and the converter are unchanged)
    dense = jax.tree.map(np.shape, nn.Dense(hidden).init(jax.random.key(0), unfold(x, k, s, p)))
    assert jax.tree.map(np.shape, PatchDense(hidden, k * k, "in").init(jax.random.key(0), unfold(x, k, s, p))) == dense
    with pytest.raises(ValueError, match="patches must be"):
        PatchDense(hidden, k * k, "both").init(jax.random.key(0), unfold(x, k, s, p))
    with pytest.raises(ValueError, match="must be a multiple of taps"):
        PatchDense(hidden, k * k, "out").init(jax.random.key(0), tokens.detach().numpy())
