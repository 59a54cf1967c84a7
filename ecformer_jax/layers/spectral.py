"""Spectral normalisation (PyTorch's torch.nn.utils.spectral_norm, dim 0, one power iteration).

The singular vectors live in the mutable collection 'spectral' with PyTorch's own layout:
u (out,), v (in * prod(kernel),) for W_mat = weight.reshape(out, -1) in PyTorch's (out, in, *k) order,
so converted `weight_u` / `weight_v` buffers are used as they are.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecformer_jax.layers.conv import conv3d, normal_init


def _normalize(x, eps=1e-12):
    return x / jnp.maximum(jnp.linalg.norm(x), eps)


def torch_weight_matrix(kernel):
    """Flax conv kernel (*k, in, out) -> PyTorch W_mat (out, in * prod(k))."""
    nd = kernel.ndim - 2
    perm = (nd + 1, nd) + tuple(range(nd))
    return jnp.transpose(kernel, perm).reshape(kernel.shape[-1], -1)


class SpectralNormConv3d(nn.Module):
    """Conv3d (no bias) whose weight is divided by its largest singular value.

    update_stats=False (eval): sigma from the stored u, v. update_stats=True (training): one power
    iteration first, u and v written back (call with mutable=['spectral']); no gradient through u, v.
    """

    features: int
    kernel: tuple[int, int, int] = (3, 5, 5)
    strides: tuple[int, int, int] = (1, 2, 2)
    padding: tuple[int, int, int] = (1, 2, 2)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, update_stats: bool = False):
        in_ch = x.shape[-1]
        kernel = self.param("kernel", normal_init, (*self.kernel, in_ch, self.features), jnp.float32)
        fan = in_ch * self.kernel[0] * self.kernel[1] * self.kernel[2]
        u = self.variable(
            "spectral", "u", lambda: _normalize(jax.random.normal(self.make_rng("params"), (self.features,)))
        )
        v = self.variable("spectral", "v", lambda: _normalize(jax.random.normal(self.make_rng("params"), (fan,))))
        w_mat = torch_weight_matrix(kernel)
        if update_stats and not self.is_initializing():
            w_sg = jax.lax.stop_gradient(w_mat)
            v_new = _normalize(w_sg.T @ u.value)
            u_new = _normalize(w_sg @ v_new)
            u.value, v.value = u_new, v_new
        uu, vv = jax.lax.stop_gradient(u.value), jax.lax.stop_gradient(v.value)
        sigma = uu @ (w_mat @ vv)
        w = (kernel / sigma).astype(self.dtype)
        return conv3d(x.astype(self.dtype), w, self.strides, [(p, p) for p in self.padding])
