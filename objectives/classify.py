"""Supervised image classification: cross-entropy of a ViT + linear head on the labels.

The supervised baseline LOOK is compared against (Feng et al. 2022, "Rethinking Supervised
Pre-training for Better Downstream Transferring": its "overfit of upstream tasks" is what
this loss does, pulling every image of a class towards one point), and the teacher SSLD
distils (Cui et al. 2021, "Beyond Self-Supervision"; objectives/ssld.py). The model is
`vit_classifier` or `resnet_classifier` (models/classifier.py); the only augmentation is a
random left-right flip on the host, shared with ssld and look so the three differ only in
their loss.
"""
from __future__ import annotations

import grain
import jax.numpy as jnp
import numpy as np

from objectives import base


class Flip(grain.transforms.RandomMap):
  """Clean example -> the image flipped left-right with probability 1/2; the label kept
  (`keep_label`) or dropped, so an objective that must not see labels never gets them."""

  def __init__(self, keep_label: bool):
    self.keep_label = keep_label

  def random_map(self, example, rng: np.random.Generator):
    image = np.asarray(example["image"], np.float32)
    out = {"image": np.ascontiguousarray(image[:, ::-1]) if rng.uniform() < 0.5 else image}
    if self.keep_label:
      out["label"] = np.int32(example["label"])
    return out


class ImageClassifierObjective(base.Objective):
  """What the objectives on a classifier (ViT or ResNet) share: data, features, FLOPs."""

  modality = "image"
  unit = "images"
  models = ("vit_classifier", "resnet_classifier")
  reads_labels = True  # False: the host transform drops them

  def host_transform(self, config, info):
    return Flip(keep_label=self.reads_labels)

  def features(self, params, batch, *, model, config):
    """The backbone's pooled output ([CLS] / average pool) on the clean image."""
    return model.bind(params).features(batch["image"]).astype(jnp.float32)

  def units_per_example(self, config, info):
    return 1

  def forward_flops_per_example(self, config, info, model_cfg):
    return model_cfg.flops_per_image()


def check_num_classes(config) -> None:
  """The objectives that read class logits need a head."""
  if config.model.num_classes < 1:
    raise ValueError(f"model.num_classes={config.model.num_classes}: objective "
                     f"{config.objective.name!r} reads class logits, so it must be >= 1")


@base.register("classify")
class Classify(ImageClassifierObjective):

  def validate(self, config):
    check_num_classes(config)

  def loss_fn(self, params, batch, rng, *, model, config):
    del rng  # The flips are on the host.
    logits = model.bind(params)(batch["image"])
    loss, accuracy = base.token_loss(logits, batch["label"],
                                     jnp.ones(logits.shape[:1], jnp.float32))
    return loss, {"accuracy": accuracy}
