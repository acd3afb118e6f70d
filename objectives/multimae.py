"""MultiMAE (Bachmann et al. 2022, "MultiMAE: Multi-modal Multi-task Masked Autoencoders").

The paper pseudo-labels RGB images with depth and semantic segmentation so that any RGB
dataset becomes multi-modal; here the extra modalities are computed from each image on the
host (a deterministic grain transform, no learned labeller):

- `edges`: the Sobel gradient magnitude of the image's luminance (mean over channels),
  border pixels replicated, divided by its largest possible value 4 sqrt(2), so in [0, 1].
  A continuous dense map, standing in for depth; regressed with MSE.
- `segments`: the luminance quantised into `model.segment_classes` equal-width bins,
  class = min(floor(k * luminance), k - 1). A categorical map standing in for semantic
  segmentation; predicted with per-pixel cross-entropy.

On device, from the step rng, masking follows the paper: a fixed budget of
`objective.num_visible` tokens per example is split between the modalities in proportions
drawn from a symmetric Dirichlet(`objective.dirichlet_alpha`) (largest-remainder rounding,
so the counts always sum to the budget), and each modality shows that many of its patches,
uniformly at random. Every modality is then rebuilt by its own decoder; the loss is the
`objective.modality_weights`-weighted sum of each modality's loss on its hidden patches
(MSE, against per-patch normalised pixels for the image when `norm_pix_loss`, as the
paper; cross-entropy for the categorical map).
"""
from __future__ import annotations

import math

import grain
import jax
import jax.numpy as jnp
import numpy as np

from models.multimae import Modality, multimae_flops_per_image
from models.vit import patchify
from objectives import base
from objectives.mae import denormalize_patches, masked_mse, normalize_patches, reconstruction_grid

EDGES, SEGMENTS = "edges", "segments"  # batch keys of the derived modalities
SOBEL_MAX = 4 * math.sqrt(2)  # |Sobel gradient| of a [0, 1] image is at most this
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)


def derived_modalities(segment_classes: int) -> tuple[Modality, ...]:
  """The modalities `DerivedModalities` adds to the image, as the model reads them."""
  return (Modality(EDGES, 1), Modality(SEGMENTS, segment_classes, categorical=True))


def sobel_magnitude(gray: np.ndarray) -> np.ndarray:
  """(H, W) in [0, 1] -> |(Gx, Gy)| / SOBEL_MAX (H, W) float32, edges replicated."""
  padded = np.pad(gray.astype(np.float32), 1, mode="edge")
  h, w = gray.shape
  window = lambda dy, dx: padded[dy:dy + h, dx:dx + w]
  gx = sum(SOBEL_X[dy, dx] * window(dy, dx) for dy in range(3) for dx in range(3))
  gy = sum(SOBEL_X.T[dy, dx] * window(dy, dx) for dy in range(3) for dx in range(3))
  return (np.sqrt(gx * gx + gy * gy) / SOBEL_MAX).astype(np.float32)


def quantise(gray: np.ndarray, classes: int) -> np.ndarray:
  """(H, W) in [0, 1] -> int32 class of each pixel in `classes` equal-width bins."""
  return np.minimum(np.floor(gray * classes), classes - 1).astype(np.int32)


class DerivedModalities(grain.transforms.RandomMap):
  """Clean image -> the example plus its `edges` (H, W, 1) and `segments` (H, W) maps.
  Deterministic: the rng is not used (masking happens on device)."""

  def __init__(self, segment_classes: int):
    self.segment_classes = segment_classes

  def random_map(self, example, rng: np.random.Generator):
    gray = example["image"].mean(-1)
    return {**example, EDGES: sobel_magnitude(gray)[..., None],
            SEGMENTS: quantise(gray, self.segment_classes)}


def dirichlet_counts(rng: jax.Array, batch: int, num_modalities: int, total: int,
                     alpha: float) -> jax.Array:
  """(B, M) int32 visible tokens per modality: total x Dirichlet(alpha) proportions,
  rounded down, the leftover handed one each to the largest remainders: rows sum to total."""
  share = jax.random.dirichlet(rng, jnp.full((num_modalities,), alpha), (batch,)) * total
  counts = jnp.floor(share)
  leftover = total - counts.sum(-1, keepdims=True)  # (B, 1), in [0, M)
  rank = jnp.argsort(jnp.argsort(counts - share, axis=-1), axis=-1)  # 0 = largest remainder
  return (counts + (rank < leftover)).astype(jnp.int32)


def visible_tokens(rng: jax.Array, counts: jax.Array, num_patches: int, total: int):
  """counts (B, M) summing to `total` per row -> (keep_idx (B, total) ascending into the
  M * N concatenated tokens, hidden (B, M, N) float32 with 1 = hidden): counts[b, m]
  uniformly random patches of modality m are visible."""
  b, m = counts.shape
  noise = jax.random.uniform(rng, (b, m, num_patches))
  rank = jnp.argsort(jnp.argsort(noise, axis=-1), axis=-1)
  visible = rank < counts[..., None]  # (B, M, N)
  keep_idx = jnp.argsort(~visible.reshape(b, m * num_patches), axis=1, stable=True)
  return keep_idx[:, :total], (~visible).astype(jnp.float32)


@base.register("multimae")
class MultiModalMAE(base.Objective):
  models = ("multimae",)
  modality = "image"
  unit = "images"

  def validate(self, config):
    from pretrain.registry import MODELS  # the patch grid decides the budget's range
    o = config.objective
    cfg = MODELS.get(config.model.name).model_config(config.model, base.DataInfo())
    if not 1 <= o.num_visible <= cfg.num_patches:
      raise ValueError(f"objective.num_visible={o.num_visible}: must be in [1, "
                       f"{cfg.num_patches}] (the patches of one modality)")
    if not o.dirichlet_alpha > 0:
      raise ValueError(f"objective.dirichlet_alpha={o.dirichlet_alpha}: must be > 0")
    weights, names = tuple(o.modality_weights), [m.name for m in cfg.modalities]
    if len(weights) != len(names) or min(weights) < 0 or not sum(weights) > 0:
      raise ValueError(f"objective.modality_weights={weights}: one weight >= 0 per "
                       f"modality {names}, not all 0")

  def host_transform(self, config, info):
    return DerivedModalities(config.model.segment_classes)

  def _forward(self, net, batch, rng, config):
    """(hidden (B, M, N), predictions per modality (B, N, patch outputs))."""
    cfg, o = net.cfg, config.objective
    rng = jax.random.wrap_key_data(rng)
    counts = dirichlet_counts(jax.random.fold_in(rng, 0), batch["image"].shape[0],
                              len(cfg.modalities), o.num_visible, o.dirichlet_alpha)
    keep_idx, hidden = visible_tokens(jax.random.fold_in(rng, 1), counts, cfg.num_patches,
                                      o.num_visible)
    return hidden, net.decode(net.encode(batch, keep_idx), keep_idx)

  def loss_fn(self, params, batch, rng, *, model, config):
    net = model.bind(params)
    hidden, preds = self._forward(net, batch, rng, config)
    total, losses = 0.0, {}
    for i, (m, weight) in enumerate(zip(net.cfg.modalities, config.objective.modality_weights)):
      loss = self._modality_loss(net, m, batch[m.name], preds[i], hidden[:, i], config)
      total, losses[f"{m.name}_loss"] = total + weight * loss, loss
    return total, losses

  @staticmethod
  def _modality_loss(net, m: Modality, x, pred, hidden, config):
    patch = net.cfg.patch_size
    if m.categorical:
      targets = patchify(x[..., None], patch)  # (B, N, P) int
      logits = pred.reshape(*targets.shape, m.channels)
      return base.weighted_mean(base.cross_entropy(logits, targets).mean(-1), hidden)
    target = patchify(x, patch)
    if m.name == "image" and config.objective.norm_pix_loss:
      target = normalize_patches(target)
    return masked_mse(pred, target, hidden)

  def reconstructions(self, params, batch, rng, *, model, config):
    """Per modality: original, masked (hidden patches grey), every patch predicted; the
    categorical map as grey levels class / (k - 1), predicted by its argmax."""
    net = model.bind(params)
    hidden, preds = self._forward(net, batch, rng, config)
    patch, pictures = net.cfg.patch_size, {}
    for i, m in enumerate(net.cfg.modalities):
      x, pred = batch[m.name], preds[i]
      if m.categorical:
        x = x[..., None].astype(jnp.float32) / (m.channels - 1)
        pred = pred.reshape(*pred.shape[:2], -1, m.channels).argmax(-1) / (m.channels - 1)
      patches = patchify(x, patch)
      if m.name == "image" and config.objective.norm_pix_loss:
        pred = denormalize_patches(pred, patches)
      pictures[f"reconstructions_{m.name}"] = reconstruction_grid(x, patches, hidden[:, i],
                                                                  pred, patch)
    return pictures

  def features(self, params, batch, *, model, config):
    """The encoder on the image alone, every patch visible, mean-pooled over patches."""
    net = model.bind(params)
    tokens = net.encode_image(batch["image"])[:, net.cfg.num_prefix:]
    return base.mean_pool(tokens, jnp.ones(tokens.shape[:2], bool))

  def units_per_example(self, config, info):
    return 1

  def forward_flops_per_example(self, config, info, model_cfg):
    return multimae_flops_per_image(model_cfg, config.objective.num_visible)
