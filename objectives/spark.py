"""SparK (Tian et al. 2023, "Designing BERT for Convolutional Networks: Sparse and
Hierarchical Masked Modeling"), as pretrained by Wolf et al. 2023 for small medical
datasets: masked image modelling for a CNN.

Per step, on device from the step rng (like MAE), a uniform random `objective.mask_ratio`
of the mask patches is hidden; a mask patch is the network's total stride (32x32 for a
ResNet-50), so the coarsest feature map has one position per patch. The sparse encoder
sees only the visible patches (models/spark.py keeps masked positions empty at every
scale), the light decoder rebuilds the whole image, and the loss is MAE's: the MSE on the
hidden patches against per-patch normalised pixels (`norm_pix_loss`, SparK's target).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from models.spark import spark_flops_per_image
from models.vit import patchify
from objectives import base
from objectives.mae import (check_mask_ratio, denormalize_patches, pixel_loss, random_keep,
                            reconstruction_grid)


@base.register("spark")
class SparseMaskedModeling(base.Objective):
  models = ("spark",)
  modality = "image"
  unit = "images"

  def validate(self, config):
    check_mask_ratio(config)

  def _predict(self, net, batch, rng, config):
    """(patches (B, N, P) of mask-patch size, hidden (B, N), predicted patches (B, N, P))."""
    images, cfg = batch["image"], net.cfg
    side = (cfg.downsample,) * 2
    patches = patchify(images, side)
    b, n, _ = patches.shape
    _, hidden = random_keep(jax.random.wrap_key_data(rng), b, n, config.objective.mask_ratio)
    active = (hidden == 0).reshape(b, *cfg.grid)
    return patches, hidden, patchify(net(images, active), side)

  def loss_fn(self, params, batch, rng, *, model, config):
    patches, hidden, pred = self._predict(model.bind(params), batch, rng, config)
    return pixel_loss(patches, pred, hidden, config), {}

  def reconstructions(self, params, batch, rng, *, model, config):
    net = model.bind(params)
    patches, hidden, pred = self._predict(net, batch, rng, config)
    if config.objective.norm_pix_loss:
      pred = denormalize_patches(pred, patches)
    side = (net.cfg.downsample,) * 2
    return {"reconstructions": reconstruction_grid(batch["image"], patches, hidden, pred,
                                                   side)}

  def features(self, params, batch, *, model, config):
    """The encoder on the whole image (nothing masked), its last feature map averaged over
    positions (B, C): the pooled features a ResNet's classifier reads. Batch norm uses the
    batch's statistics (the model keeps no running averages)."""
    net = model.bind(params)
    images = batch["image"]
    active = jnp.ones((images.shape[0], *net.cfg.grid), bool)
    return net.encoder(images, active)[-1].astype(jnp.float32).mean((1, 2))

  def units_per_example(self, config, info):
    return 1

  def forward_flops_per_example(self, config, info, model_cfg):
    return spark_flops_per_image(model_cfg)
