"""Masked patch position prediction (Zhai et al. 2022, "Position Prediction as an Effective
Pretraining Strategy", MP3).

A ViT without position embeddings reads the patches of an image and classifies every patch
token over the N grid positions; the loss is the cross-entropy against each token's true
position. Without position embeddings the transformer cannot tell where a token came from
except through its content and its relations to the others, which is what the task asks
it to learn. MP3 also draws a random context: a subset of the patches (1 - mask ratio of
them) that serve as keys and values in every self-attention layer, while all patches stay
queries and all predict their positions. That makes the task harder (less context for
each token) and, in the paper, cheaper; here the context is an attention mask, so the
masked keys are still computed (the FLOPs count says so).

The context is drawn on device from the step rng (like MAE's masks): it is cheap and must
be fresh each step. No host transform is needed.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from models.vit import patchify
from models.vit_pretext import position_prediction_flops_per_image
from objectives import base
from objectives.mae import random_keep


def context_mask(rng: jax.Array, batch: int, num_patches: int, mask_ratio: float):
  """(B, N) bool: the patches usable as keys/values, int(N (1 - mask_ratio)) of them at
  random per image (at least one); None when mask_ratio is 0 (full context)."""
  if mask_ratio == 0:
    return None
  _, hidden = random_keep(rng, batch, num_patches, mask_ratio, min_keep=1)
  return hidden == 0


def _every_patch(patches: jax.Array) -> jax.Array:
  return jnp.broadcast_to(jnp.arange(patches.shape[1]), patches.shape[:2])


@base.register("position_prediction")
class PositionPrediction(base.Objective):
  models = ("position_predictor",)
  modality = "image"
  unit = "images"

  def validate(self, config):
    ratio = config.objective.context_mask_ratio
    if not 0 <= ratio < 1:
      raise ValueError(f"objective.context_mask_ratio={ratio}: must be in [0, 1) "
                       "(0 = every patch is context)")

  def loss_fn(self, params, batch, rng, *, model, config):
    net = model.bind(params)
    patches = patchify(batch["image"], net.cfg.patch_size)  # (B, N, P)
    b, n, _ = patches.shape
    context = context_mask(jax.random.wrap_key_data(rng), b, n,
                           config.objective.context_mask_ratio)
    logits = net(patches, context)  # (B, N, N)
    loss, accuracy = base.token_loss(logits, _every_patch(patches), jnp.ones((b, n)))
    return loss, {"position_accuracy": accuracy}

  def features(self, params, batch, *, model, config):
    """The encoder on every patch with full context, mean-pooled over patch tokens."""
    net = model.bind(params)
    tokens = net.encode(patchify(batch["image"], net.cfg.patch_size))
    return base.mean_pool(tokens, jnp.ones(tokens.shape[:2], bool))

  def units_per_example(self, config, info):
    return 1

  def forward_flops_per_example(self, config, info, model_cfg):
    return position_prediction_flops_per_image(model_cfg)
