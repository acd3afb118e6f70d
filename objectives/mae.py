"""Masked autoencoders (He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners").

Per-step random masking happens on device from the step rng (it is cheap and must be
fresh each step): the encoder sees only the visible patches, the light decoder
reconstructs all, and the loss is the MSE on the masked patches only, optionally
against per-patch normalized pixels (§3 "Reconstruction target").
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from models.vit import mae_flops_per_image, patchify
from objectives import base


def random_keep(rng: jax.Array, batch: int, num_patches: int, mask_ratio: float):
  """(keep_idx (B, Nk), mask (B, N) with 1 = hidden): a uniform random subset per image."""
  keep = int(num_patches * (1 - mask_ratio))
  noise = jax.random.uniform(rng, (batch, num_patches))
  order = jnp.argsort(noise, axis=1)
  keep_idx = order[:, :keep]
  mask = jnp.ones((batch, num_patches)).at[jnp.arange(batch)[:, None], keep_idx].set(0.0)
  return keep_idx, mask


def normalize_patches(patches: jax.Array, eps: float = 1e-6) -> jax.Array:
  mean = patches.mean(-1, keepdims=True)
  var = patches.var(-1, keepdims=True)
  return (patches - mean) / jnp.sqrt(var + eps)


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over hidden patches of the per-patch mean squared error."""
  per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)  # (B, N)
  return base.weighted_mean(per_patch, mask)


def reconstruct(net, images: jax.Array, rng: jax.Array, config):
  """MAE's forward on a fresh random mask: (masked-patch pixel loss, encoder latent
  (B, prefix + Nk, D), keep_idx (B, Nk)); MAE-based distillation adds to the latent."""
  patches = patchify(images, net.cfg.patch_size)  # (B, N, P)
  b, n, _ = patches.shape
  keep_idx, mask = random_keep(jax.random.wrap_key_data(rng), b, n,
                               config.objective.mask_ratio)
  latent = net.encode(patches, keep_idx)
  pred = net.decode(latent, keep_idx, n)  # (B, N, P)
  target = normalize_patches(patches) if config.objective.norm_pix_loss else patches
  return masked_mse(pred, target, mask), latent, keep_idx


@base.register("mae")
class MaskedAutoencoder(base.Objective):
  models = ("mae",)
  modality = "image"
  unit = "images"

  def validate(self, config):
    ratio = config.objective.mask_ratio
    if not 0 < ratio < 1:
      raise ValueError(f"objective.mask_ratio={ratio}: must be in (0, 1)")

  def loss_fn(self, params, batch, rng, *, model, config):
    loss, _, _ = reconstruct(model.bind(params), batch["image"], rng, config)
    return loss, {}

  def features(self, params, batch, *, model, config):
    """The encoder on every patch (no masking), mean-pooled over patch tokens."""
    net = model.bind(params)
    patches = patchify(batch["image"], net.cfg.patch_size)  # (B, N, P)
    every = jnp.broadcast_to(jnp.arange(patches.shape[1]), patches.shape[:2])
    tokens = net.encode(patches, every)[:, net.cfg.num_prefix:]  # (B, N, D)
    return base.mean_pool(tokens, jnp.ones(tokens.shape[:2], bool))

  def units_per_example(self, config, info):
    return 1

  def forward_flops_per_example(self, config, info, model_cfg):
    return mae_flops_per_image(model_cfg, config.objective.mask_ratio)
