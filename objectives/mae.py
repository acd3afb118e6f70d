"""Masked autoencoders (He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners").

Per-step random masking happens on device from the step rng (it is cheap and must be
fresh each step): the encoder sees only the visible patches, the light decoder
reconstructs all, and the loss is the MSE on the masked patches only, optionally
against per-patch normalized pixels (§3 "Reconstruction target").
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from models.vit import mae_flops_per_image, patchify, unpatchify
from objectives import base

# Grey of the hidden patches in the "masked" panel of the reconstruction pictures.
HIDDEN_GREY = 0.5


def random_keep(rng: jax.Array, batch: int, num_patches: int, mask_ratio: float,
                min_keep: int = 0):
  """(keep_idx (B, Nk), mask (B, N) with 1 = hidden): a uniform random subset per image,
  int(N (1 - mask_ratio)) patches but at least `min_keep`."""
  keep = max(min_keep, int(num_patches * (1 - mask_ratio)))
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


def forward(net, patches: jax.Array, rng: jax.Array, mask_ratio: float):
  """MAE's forward on a fresh random mask: (keep_idx (B, Nk), hidden mask (B, N), encoder
  latent (B, prefix + Nk, D), predicted patches (B, N, P))."""
  b, n, _ = patches.shape
  keep_idx, mask = random_keep(jax.random.wrap_key_data(rng), b, n, mask_ratio)
  latent = net.encode(patches, keep_idx)
  return keep_idx, mask, latent, net.decode(latent, keep_idx, n)


def pixel_loss(patches: jax.Array, pred: jax.Array, mask: jax.Array, config) -> jax.Array:
  """MSE on the hidden patches, against normalized pixels when `norm_pix_loss`."""
  target = normalize_patches(patches) if config.objective.norm_pix_loss else patches
  return masked_mse(pred, target, mask)


def reconstruct(net, images: jax.Array, rng: jax.Array, config):
  """(masked-patch pixel loss, encoder latent (B, prefix + Nk, D), keep_idx (B, Nk)):
  what MAE-based distillation adds its terms to."""
  patches = patchify(images, net.cfg.patch_size)  # (B, N, P)
  keep_idx, mask, latent, pred = forward(net, patches, rng, config.objective.mask_ratio)
  return pixel_loss(patches, pred, mask, config), latent, keep_idx


def denormalize_patches(pred: jax.Array, patches: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Predictions of `normalize_patches(patches)` back to pixels with the true patch
  statistics (how MAE's figures show norm_pix_loss reconstructions)."""
  mean = patches.mean(-1, keepdims=True)
  return pred * jnp.sqrt(patches.var(-1, keepdims=True) + eps) + mean


def image_grid(columns: list[jax.Array], pad: int = 1) -> jax.Array:
  """Columns of (B, H, W, C) images in [0, 1] -> one uint8 grid (B (H + pad) + pad,
  K (W + pad) + pad, C): row i is example i, column k its k-th picture, white borders."""
  b, h, w, c = columns[0].shape
  x = jnp.stack([jnp.clip(col.astype(jnp.float32), 0.0, 1.0) for col in columns], 1)
  x = jnp.pad(x, ((0, 0), (0, 0), (pad, 0), (pad, 0), (0, 0)), constant_values=1.0)
  x = x.transpose(0, 2, 1, 3, 4).reshape(b * (h + pad), len(columns) * (w + pad), c)
  x = jnp.pad(x, ((0, pad), (0, pad), (0, 0)), constant_values=1.0)
  return jnp.round(x * 255).astype(jnp.uint8)


def reconstruction_grid(image: jax.Array, patches: jax.Array, mask: jax.Array,
                        pred: jax.Array, patch: tuple[int, ...],
                        context: tuple[jax.Array, ...] = ()) -> jax.Array:
  """Per row: any context images (what else the model saw), the original, it masked
  (hidden patches grey), every patch as predicted."""
  spatial, channels = image.shape[1:-1], image.shape[-1]
  masked = jnp.where(mask[..., None] > 0, HIDDEN_GREY, patches)
  return image_grid([*context, image, unpatchify(masked, patch, spatial, channels),
                     unpatchify(pred, patch, spatial, channels)])


def check_mask_ratio(config) -> None:
  ratio = config.objective.mask_ratio
  if not 0 < ratio < 1:
    raise ValueError(f"objective.mask_ratio={ratio}: must be in (0, 1)")


@base.register("mae")
class MaskedAutoencoder(base.Objective):
  models = ("mae",)
  modality = "image"
  unit = "images"

  def validate(self, config):
    check_mask_ratio(config)

  def _predict(self, net, batch, rng, config):
    """(image (B, *S, C) to rebuild, its patches (B, N, P), hidden mask (B, N), predicted
    patches (B, N, P), context images for the pictures)."""
    patches = patchify(batch["image"], net.cfg.patch_size)
    _, mask, _, pred = forward(net, patches, rng, config.objective.mask_ratio)
    return batch["image"], patches, mask, pred, ()

  def loss_fn(self, params, batch, rng, *, model, config):
    _, patches, mask, pred, _ = self._predict(model.bind(params), batch, rng, config)
    return pixel_loss(patches, pred, mask, config), {}

  def reconstructions(self, params, batch, rng, *, model, config):
    net = model.bind(params)
    image, patches, mask, pred, context = self._predict(net, batch, rng, config)
    if config.objective.norm_pix_loss:
      pred = denormalize_patches(pred, patches)
    return {"reconstructions": reconstruction_grid(image, patches, mask, pred,
                                                   net.cfg.patch_size, context)}

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
