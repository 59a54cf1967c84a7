"""Loss terms of the official trainers (inpainting: hole/valid L1, GAN, flow L1; super-resolution: pixel)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def hole_valid_l1(pred, target, masks):
    """(hole L1, valid L1), each normalised by the mean of its mask as the official code does:
    mean|m * (pred - gt)| / mean(m) and mean|(1 - m) * (pred - gt)| / mean(1 - m)."""
    diff = jnp.abs(pred - target)
    m = jnp.broadcast_to(masks, diff.shape)  # masks (..., 1) or already as wide as diff
    hole = jnp.mean(diff * m) / jnp.maximum(jnp.mean(m), 1e-8)
    valid = jnp.mean(diff * (1 - m)) / jnp.maximum(jnp.mean(1 - m), 1e-8)
    return hole, valid


def discriminator_loss(real_logits, fake_logits, gan_type: str = "hinge"):
    """D loss, averaged over real and fake as the official AdversarialLoss does (x 0.5)."""
    if gan_type == "hinge":
        return 0.5 * (jnp.mean(jax.nn.relu(1 - real_logits)) + jnp.mean(jax.nn.relu(1 + fake_logits)))
    if gan_type == "nsgan":
        return 0.5 * (jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits)))
    if gan_type == "lsgan":
        return 0.5 * (jnp.mean((real_logits - 1) ** 2) + jnp.mean(fake_logits ** 2))
    raise ValueError(f"unknown gan_type {gan_type!r}: hinge | nsgan | lsgan")


def generator_adversarial_loss(fake_logits, gan_type: str = "hinge"):
    if gan_type == "hinge":
        return -jnp.mean(fake_logits)
    if gan_type == "nsgan":
        return jnp.mean(jax.nn.softplus(-fake_logits))
    if gan_type == "lsgan":
        return jnp.mean((fake_logits - 1) ** 2)
    raise ValueError(f"unknown gan_type {gan_type!r}: hinge | nsgan | lsgan")


def flow_l1(pred_flows, target_flows):
    """E2FGVI's flow completion loss: L1 of the forward plus L1 of the backward flows."""
    return sum(jnp.mean(jnp.abs(p - t)) for p, t in zip(pred_flows, target_flows))


def pixel_loss(pred, target, kind: str = "charbonnier", eps: float = 1e-12, reduction: str = "sum"):
    """Charbonnier sqrt((pred - target)^2 + eps) or L1 |pred - target|, summed or averaged over everything
    (the super-resolution loss; BasicSR's CharbonnierLoss with reduction 'sum' officially)."""
    diff = pred - target
    if kind == "charbonnier":
        err = jnp.sqrt(diff * diff + eps)
    elif kind == "l1":
        err = jnp.abs(diff)
    else:
        raise ValueError(f"unknown loss.kind {kind!r}: charbonnier | l1")
    if reduction == "sum":
        return jnp.sum(err)
    if reduction == "mean":
        return jnp.mean(err)
    raise ValueError(f"unknown loss.reduction {reduction!r}: sum | mean")
