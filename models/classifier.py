"""A ViT image classifier: the supervised backbone of LOOK (Feng et al. 2022, "Rethinking
Supervised Pre-training for Better Downstream Transferring") and the teacher and student
of SSLD (Cui et al. 2021, "Beyond Self-Supervision: A Simple Yet Effective Network
Distillation Alternative to Improve Backbones").

Both papers train ResNets; this codebase has ViTs, so the backbone is a ViT (`encoder`,
named as in `MAE` and `DinoViT` so their runs load into it) whose [CLS] output (the mean of
the patch tokens without a cls token) feeds a linear head over `num_classes`, as in
Dosovitskiy et al. 2021 ("An Image is Worth 16x16 Words", §3.1) when pre-training.
`num_classes=0` leaves the head out: LOOK's loss reads the features, never class logits.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import Dense
from models.vit import ViT, ViTConfig


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  vit: ViTConfig
  num_classes: int = 1000  # ImageNet-1k; 0 = no head

  def validate(self) -> None:
    self.vit.validate()
    if self.num_classes < 0:
      raise ValueError(f"num_classes={self.num_classes}: must be >= 0")


class ViTClassifier(nnx.Module):
  """`encoder` (a ViT) + optional linear `head` on its pooled output."""

  def __init__(self, cfg: ClassifierConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    self.encoder = ViT(cfg.vit, rngs=rngs)
    self.head = (Dense(cfg.vit.d_model, cfg.num_classes, ("embed", "vocab"),
                       dtype=cfg.vit.dtype, init_std=cfg.vit.init_std, rngs=rngs)
                 if cfg.num_classes else None)

  def features(self, images: jax.Array) -> jax.Array:
    """images (B, *spatial, C) -> (B, D): the [CLS] output (mean of the patch tokens
    without a cls token)."""
    tokens = self.encoder(images)
    return tokens[:, 0] if self.cfg.vit.use_cls_token else tokens.mean(1)

  def __call__(self, images: jax.Array) -> jax.Array:
    """images -> class logits (B, num_classes) float32."""
    if self.head is None:
      raise ValueError("model.num_classes=0: this classifier has no head")
    return self.head(self.features(images)).astype(jnp.float32)

