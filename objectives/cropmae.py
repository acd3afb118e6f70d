"""CropMAE (Eymaël et al. 2024, "Efficient Image Pre-Training with Siamese Cropped Masked
Autoencoders").

SiamMAE learns correspondences by rebuilding a masked video frame from another, visible
frame; CropMAE gets the two views from one still image by cropping. On the host, a
RandomResizedCrop of the image (the "global" view) and a smaller RandomResizedCrop of that
global view (the "local" view) are both resized back to the model's input size (the repo's
GlobalToLocal strategy). On device, one shared ViT encodes the global view whole and keeps
only a handful of the local view's patches (98.5% masked); a decoder that cross-attends to
the global view's tokens (`models.vit_variants.SiameseMAE`) rebuilds the local view, with
MAE's loss on its hidden patches. So little is visible that the decoder must copy content
across views: the encoder learns where the local crop sits in the global one.

Cropping is host work (per-example boxes of varying size, then a resize to a static
shape); masking stays on device like MAE's. 98.5% of the 49 patches of a 28x28 image with
4x4 patches keeps int(0.735) = 0, so at least one patch is always kept (at 224/16 the
paper's 196 patches keep 2).
"""
from __future__ import annotations

import math

import grain
import jax
import jax.numpy as jnp
import numpy as np

from models.vit import patchify
from models.vit_variants import siamese_mae_flops_per_image
from objectives import base
from objectives.mae import MaskedAutoencoder, random_keep

VISIBLE, MASKED = "view_visible", "view_masked"  # batch keys of the two crops
MIN_KEEP = 1  # patches of the masked view always visible
CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries this often, then centre-crops


def random_resized_box(rng: np.random.Generator, height: int, width: int,
                       scale: tuple[float, float], ratio: tuple[float, float]):
  """(top, left, h, w) of a RandomResizedCrop: area a uniform fraction `scale` of the
  image, aspect ratio w/h log-uniform in `ratio`; the whole image clipped to the ratio
  range if no draw fits (as torchvision does)."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(CROP_ATTEMPTS):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  h, w = height, width
  if width / height < ratio[0]:
    h = round(width / ratio[0])
  elif width / height > ratio[1]:
    w = round(height * ratio[1])
  return (height - h) // 2, (width - w) // 2, h, w


def crop_resize(image: np.ndarray, box: tuple[int, int, int, int],
                size: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of image[top:top+h, left:left+w] (H, W, C) to `size`, sampling at
  pixel centres and clamping at the image edge. Crops are never larger than the output
  here, so no antialiasing filter is needed."""
  top, left, h, w = box

  def axis(start, extent, out, limit):
    pos = np.clip(start + (np.arange(out) + 0.5) * extent / out - 0.5, 0, limit - 1)
    low = np.floor(pos).astype(np.int64)
    return low, np.minimum(low + 1, limit - 1), (pos - low)[:, None]

  y0, y1, wy = axis(top, h, size[0], image.shape[0])
  x0, x1, wx = axis(left, w, size[1], image.shape[1])
  wx = wx[:, 0][None, :, None]
  rows = image[y0] * (1 - wy[..., None]) + image[y1] * wy[..., None]  # (out_h, W, C)
  return (rows[:, x0] * (1 - wx) + rows[:, x1] * wx).astype(np.float32)


class GlobalToLocalCrops(grain.transforms.RandomMap):
  """Clean image -> {image, view_visible: a global crop, view_masked: a local crop of the
  global crop}, both resized to the image's own size."""

  def __init__(self, *, global_scale, local_scale, aspect_ratio):
    self.global_scale, self.local_scale = tuple(global_scale), tuple(local_scale)
    self.aspect_ratio = tuple(aspect_ratio)

  def random_map(self, example, rng: np.random.Generator):
    image = example["image"]
    size = image.shape[:2]
    glob = crop_resize(image, random_resized_box(rng, *size, self.global_scale,
                                                 self.aspect_ratio), size)
    local = crop_resize(glob, random_resized_box(rng, *size, self.local_scale,
                                                 self.aspect_ratio), size)
    return {**example, VISIBLE: glob, MASKED: local}


def _check_range(config, key: str, low: float, high: float) -> None:
  value = tuple(config.objective[key])
  if len(value) != 2 or not low < value[0] <= value[1] <= high:
    raise ValueError(f"objective.{key}={value}: must be (lo, hi) with {low} < lo <= hi "
                     f"<= {high}")


@base.register("cropmae")
class CroppedMAE(MaskedAutoencoder):
  """MAE's loss, features and pictures on the local view, given the global one."""

  models = ("siamese_mae",)

  def validate(self, config):
    super().validate(config)
    _check_range(config, "global_crop_scale", 0.0, 1.0)
    _check_range(config, "local_crop_scale", 0.0, 1.0)
    _check_range(config, "crop_aspect_ratio", 0.0, math.inf)

  def host_transform(self, config, info):
    o = config.objective
    return GlobalToLocalCrops(global_scale=o.global_crop_scale, local_scale=o.local_crop_scale,
                              aspect_ratio=o.crop_aspect_ratio)

  def _predict(self, net, batch, rng, config):
    patch = net.cfg.patch_size
    patches = patchify(batch[MASKED], patch)  # (B, N, P)
    b, n, _ = patches.shape
    every = jnp.broadcast_to(jnp.arange(n), (b, n))
    context = net.encode(patchify(batch[VISIBLE], patch), every)  # (B, 1 + N, D)
    keep_idx, mask = random_keep(jax.random.wrap_key_data(rng), b, n,
                                 config.objective.mask_ratio, MIN_KEEP)
    pred = net.decode(net.encode(patches, keep_idx), keep_idx, n, context=context)
    return batch[MASKED], patches, mask, pred, (batch[VISIBLE],)

  def forward_flops_per_example(self, config, info, model_cfg):
    n = model_cfg.num_patches
    keep = max(MIN_KEEP, int(n * (1 - config.objective.mask_ratio)))
    return siamese_mae_flops_per_image(model_cfg, keep)
