"""CLIP pretraining (Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision", §2.3 and Figure 3's pseudocode).

An image encoder and a text encoder are trained to pick each other's partner among the
batch: the B x B matrix of cosine similarities between the projected, L2-normalised image and
caption embeddings, scaled by exp(logit_scale), is read row-wise (image -> caption) and
column-wise (caption -> image) as B-way classifications with the diagonal as the labels,
and the loss is the mean of the two cross-entropies (symmetric InfoNCE).

Design: the negatives are the GLOBAL batch because the loss is traced under `jax.jit` over
the sharded batch (objectives/contrastive.py: XLA all-gathers the embeddings; tests check 8
devices = 1, gradient included). The temperature is the model's `logit_scale` parameter
(init log(1 / 0.07), the scale clipped at 100: models/clip.py), so the optimizer learns it.
Images arrive as uint8 and are scaled to [0, 1] on device (a quarter of the host-to-device
bytes of float32); CLIP's per-channel mean/std normalisation is left to the patch embedding.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from models.clip import clip_flops_per_example
from objectives import base
from objectives.contrastive import info_nce


def pixels(images: jax.Array) -> jax.Array:
  """uint8 images -> float32 in [0, 1]."""
  return images.astype(jnp.float32) / 255.0


def check_caption_length(config) -> None:
  if not 3 <= config.data.text_len <= config.model.max_len:
    raise ValueError(f"data.text_len={config.data.text_len}: must be in [3, model.max_len="
                     f"{config.model.max_len}] ([CLS], at least one token, [SEP])")


@base.register("clip")
class Clip(base.Objective):
  models = ("clip",)
  modality = "image_text"
  unit = "pairs"

  def validate(self, config):
    check_caption_length(config)

  def loss_fn(self, params, batch, rng, *, model, config):
    del rng  # Deterministic: no augmentation, no dropout.
    net = model.bind(params)
    temperature = net.temperature()
    loss, accuracy = info_nce(net.embed_images(pixels(batch["image"])),
                              net.embed_texts(batch["tokens"]), temperature)
    return loss, {"image_to_text_accuracy": accuracy, "logit_scale": 1.0 / temperature}

  def features(self, params, batch, *, model, config):
    """The image tower's pooled class token (CLIP's linear-probe features)."""
    return model.bind(params).image_features(pixels(batch["image"])).astype(jnp.float32)

  def units_per_example(self, config, info):
    return 1

  def forward_flops_per_example(self, config, info, model_cfg):
    return clip_flops_per_example(model_cfg)
