"""A ViT image classifier: the supervised backbone of LOOK (Feng et al. 2022, "Rethinking
Supervised Pre-training for Better Downstream Transferring") and the teacher and student
of SSLD (Cui et al. 2021, "Beyond Self-Supervision: A Simple Yet Effective Network
Distillation Alternative to Improve Backbones").

Both papers train ResNets; this codebase has ViTs, so the backbone is a ViT (`encoder`,
named as in `MAE` and `DinoViT` so their runs load into it) whose [CLS] output (the mean of
the patch tokens without a cls token) feeds a linear head over `num_classes`, as in
Dosovitskiy et al. 2021 ("An Image is Worth 16x16 Words", §3.1) when pre-training.
`num_classes=0` leaves the head out: LOOK's loss reads the features, never class logits.

`ResNetClassifier` is the papers' own kind of backbone: SparK's ResNet (models/spark.py,
`encoder`, so SparK runs load into it) with every position visible, which makes each
masked layer the plain one; the final feature map is global-average-pooled (He et al.
2016). Its batch norms normalise with the batch's statistics, train and eval alike (SparK
keeps no running statistics).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import Dense
from models.spark import SparKConfig, SparseResNet, resnet_flops_per_image
from models.vit import ViT, ViTConfig, vit_encoder_flops_per_image


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  vit: ViTConfig
  num_classes: int = 1000  # ImageNet-1k; 0 = no head

  def validate(self) -> None:
    self.vit.validate()
    if self.num_classes < 0:
      raise ValueError(f"num_classes={self.num_classes}: must be >= 0")

  @property
  def feature_dim(self) -> int:
    return self.vit.d_model

  def flops_per_image(self) -> float:
    return (vit_encoder_flops_per_image(self.vit, self.vit.num_patches)
            + 2 * self.feature_dim * self.num_classes)


def linear_head(cfg, dtype: str, init_std: float, rngs: nnx.Rngs) -> Dense | None:
  return (Dense(cfg.feature_dim, cfg.num_classes, ("embed", "vocab"), dtype=dtype,
                init_std=init_std, rngs=rngs) if cfg.num_classes else None)


class _Classifier(nnx.Module):
  """Class logits = the head on `features`."""

  def __call__(self, images: jax.Array) -> jax.Array:
    """images -> class logits (B, num_classes) float32."""
    if self.head is None:
      raise ValueError("model.num_classes=0: this classifier has no head")
    return self.head(self.features(images)).astype(jnp.float32)


class ViTClassifier(_Classifier):
  """`encoder` (a ViT) + optional linear `head` on its pooled output."""

  def __init__(self, cfg: ClassifierConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    self.encoder = ViT(cfg.vit, rngs=rngs)
    self.head = linear_head(cfg, cfg.vit.dtype, cfg.vit.init_std, rngs)

  def features(self, images: jax.Array) -> jax.Array:
    """images (B, *spatial, C) -> (B, D): the [CLS] output (mean of the patch tokens
    without a cls token)."""
    tokens = self.encoder(images)
    return tokens[:, 0] if self.cfg.vit.use_cls_token else tokens.mean(1)


@dataclasses.dataclass(frozen=True)
class ResNetClassifierConfig:
  resnet: SparKConfig  # its decoder fields are unused
  num_classes: int = 1000  # ImageNet-1k; 0 = no head

  def validate(self) -> None:
    self.resnet.validate()
    if self.num_classes < 0:
      raise ValueError(f"num_classes={self.num_classes}: must be >= 0")

  @property
  def feature_dim(self) -> int:
    return self.resnet.stage_widths[-1] * self.resnet.expansion

  def flops_per_image(self) -> float:
    return resnet_flops_per_image(self.resnet) + 2 * self.feature_dim * self.num_classes


class ResNetClassifier(_Classifier):
  """`encoder` (SparK's ResNet, nothing masked) + optional linear `head` on its pooled
  output (torchvision's fc: N(0, 0.01) here, PyTorch's uniform there)."""

  def __init__(self, cfg: ResNetClassifierConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    self.encoder = SparseResNet(cfg.resnet, rngs=rngs)
    self.head = linear_head(cfg, cfg.resnet.dtype, 0.01, rngs)

  def features(self, images: jax.Array) -> jax.Array:
    """images (B, H, W, C) -> (B, D): the last stage's map averaged over positions."""
    visible = jnp.ones((images.shape[0], *self.cfg.resnet.grid), bool)
    return self.encoder(images, visible)[-1].mean((1, 2))
