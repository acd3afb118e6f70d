"""Context Autoencoder (Chen et al. 2022, "Context Autoencoder for Self-Supervised
Representation Learning").

MAE's decoder sees the encoder's visible latents, so part of the representation work can
move into the decoder. CAE cuts that path: a latent regressor predicts the hidden patches'
latents from the visible ones, those predictions are aligned with what the encoder itself
makes of the hidden patches (MSE against a stop-gradient target computed in the same step
by the same encoder), and the decoder rebuilds the hidden pixels from the predictions
alone (`models.vit_variants.ContextAutoencoder`). Loss = pixel MSE on the hidden patches
+ align_weight x latent MSE (CAE: 2).

Masking is uniform random on device, like MAE's (the paper uses BEiT's block-wise masking
at 50%), and the target is pixels, as the brief asks (the paper's headline target is the
DALL-E tokenizer's codes; it also reports pixels).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from models.vit import patchify
from models.vit_variants import cae_flops_per_image
from objectives import base
from objectives.mae import MaskedAutoencoder, normalize_patches, random_keep


def keep_and_hide(rng: jax.Array, batch: int, num_patches: int, mask_ratio: float):
  """(keep_idx (B, Nk), hidden_idx (B, N - Nk), mask (B, N) with 1 = hidden)."""
  keep_idx, mask = random_keep(rng, batch, num_patches, mask_ratio)
  hidden_idx = jnp.argsort(mask, axis=1, stable=True)[:, keep_idx.shape[1]:]
  return keep_idx, hidden_idx, mask


@base.register("cae")
class ContextAutoencoder(MaskedAutoencoder):
  """MAE's masking, features and pictures; CAE's regressor, alignment and decoder."""

  models = ("cae",)

  def validate(self, config):
    super().validate(config)
    if config.objective.align_weight < 0:
      raise ValueError(f"objective.align_weight={config.objective.align_weight}: must be "
                       ">= 0")

  def _forward(self, net, batch, rng, config):
    """(patches, hidden_idx, mask, predicted pixels (B, Nh, P), latent alignment MSE)."""
    patches = patchify(batch["image"], net.cfg.patch_size)  # (B, N, P)
    b, n, _ = patches.shape
    keep_idx, hidden_idx, mask = keep_and_hide(jax.random.wrap_key_data(rng), b, n,
                                               config.objective.mask_ratio)
    predicted = net.regress(net.encode(patches, keep_idx), hidden_idx)  # (B, Nh, D)
    target = jax.lax.stop_gradient(net.encode(patches, hidden_idx)[:, net.cfg.num_prefix:])
    align = jnp.mean(jnp.square(predicted.astype(jnp.float32) - target.astype(jnp.float32)))
    return patches, hidden_idx, mask, net.decode(predicted, hidden_idx), align

  def loss_fn(self, params, batch, rng, *, model, config):
    patches, hidden_idx, _, pixels, align = self._forward(model.bind(params), batch, rng,
                                                          config)
    target = jnp.take_along_axis(patches, hidden_idx[..., None], axis=1)  # (B, Nh, P)
    if config.objective.norm_pix_loss:
      target = normalize_patches(target)
    recon = jnp.mean(jnp.square(pixels - target))
    loss = recon + config.objective.align_weight * align
    return loss, {"reconstruction_loss": recon, "alignment_loss": align}

  def _predict(self, net, batch, rng, config):
    """For the pictures: the visible patches as they are, the hidden ones as decoded."""
    patches, hidden_idx, mask, pixels, _ = self._forward(net, batch, rng, config)
    rows = jnp.arange(patches.shape[0])[:, None]
    pred = patches if not config.objective.norm_pix_loss else normalize_patches(patches)
    return batch["image"], patches, mask, pred.at[rows, hidden_idx].set(pixels), ()

  def forward_flops_per_example(self, config, info, model_cfg):
    keep = int(model_cfg.num_patches * (1 - config.objective.mask_ratio))
    return cae_flops_per_image(model_cfg, keep)
