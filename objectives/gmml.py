"""GMML (Atito et al. 2022, "GMML is All you Need") and SiT (Atito et al. 2021, "SiT:
Self-supervised vIsion Transformer").

Group masked model learning corrupts groups of connected patches, so that a corrupted
region covers a meaningful part of an object, and trains a ViT that sees the whole
corrupted image to rebuild the original from the visible context. Unlike MAE the encoder
keeps the corrupted tokens (there is no mask token and no decoder beyond a per-token pixel
head), so it has to tell corrupted from clean content by itself.

Host (a grain RandomMap, deterministic from the seed and example index): per view, the
image is rotated by a random multiple of 90 degrees (when SiT's rotation head is on), then
rectangular blocks of whole patches, up to `corrupt_block` of the grid side, are added at
random until a fraction drawn uniformly from `corrupt_ratio` of the patches is covered
(the released code's `GMML_drop_rand_patches`: 50-75% with blocks up to 0.3 of the side).
Each block is zeroed, replaced by Gaussian noise with the image's per-channel mean and
standard deviation (the code's N(0, 1) on normalized images), or marked for replacement by
the same region of another image, with probabilities `corrupt_probs`. A per-example map
cannot see other images, so replacement happens on device: a marked patch takes the clean
pixels of the previous image of the batch (the code draws a random batch partner).

Loss: the L1 distance between the predicted and the clean pixels over the corrupted
patches only (the code's `drop_only=1`), plus SiT's optional heads, each with its weight
(0 = off): the 4-way rotation classification of a rotation token, and InfoNCE between the
contrastive tokens of two independently corrupted (and rotated) views of each image, with
in-batch negatives (`objectives.contrastive.info_nce`).
"""
from __future__ import annotations

import math

import grain
import jax
import jax.numpy as jnp
import numpy as np

from models.vit import patchify, unpatchify
from models.vit_pretext import NUM_TASK_TOKENS, ROTATIONS, sit_flops_per_image
from objectives import base
from objectives.contrastive import info_nce, validate_temperature
from objectives.mae import image_grid
from pretrain.registry import MODELS

CLEAN, CORRUPTED, KIND, ROTATION = "clean", "corrupted", "corrupt_kind", "rotation"
ZERO, NOISE, REPLACE = 1, 2, 3  # corrupt_kind of a patch; 0 = clean
KIND_NAMES = ("zero", "noise", "replace")  # the order of objective.corrupt_probs


def group_mask(rng: np.random.Generator, grid: tuple[int, int], ratio: tuple[float, float],
               max_block: float, probs) -> tuple[np.ndarray, list[tuple[int, ...]]]:
  """(kind per patch (gh, gw) int32, boxes [(top, left, h, w, kind), ...]): random blocks
  of patches with sides 1..max(1, int(max_block * side)), each of a kind drawn from
  `probs` (later blocks overwrite earlier ones), until at least ceil(U(ratio) * N) patches
  are covered; the last block overshoots by less than one block."""
  gh, gw = grid
  target = math.ceil(rng.uniform(*ratio) * gh * gw)
  max_h, max_w = max(1, int(max_block * gh)), max(1, int(max_block * gw))
  kinds = np.zeros(grid, np.int32)
  boxes = []
  while np.count_nonzero(kinds) < target:
    h, w = int(rng.integers(1, max_h + 1)), int(rng.integers(1, max_w + 1))
    top, left = int(rng.integers(0, gh - h + 1)), int(rng.integers(0, gw - w + 1))
    kind = 1 + int(rng.choice(len(KIND_NAMES), p=probs))
    kinds[top:top + h, left:left + w] = kind
    boxes.append((top, left, h, w, kind))
  return kinds, boxes


class GroupCorruption(grain.transforms.RandomMap):
  """Clean image (H, W, C) -> `views` rotated clean views (V, H, W, C), their corrupted
  copies (replacement blocks still clean: filled on device), the kind of every patch
  (V, N) in patchify order, and the rotations (V,) in quarter turns."""

  def __init__(self, *, patch: tuple[int, int], ratio, max_block: float, probs, views: int,
               rotate: bool):
    self.patch, self.ratio, self.max_block = tuple(patch), tuple(ratio), max_block
    self.probs = np.asarray(probs, np.float64)
    self.views, self.rotate = views, rotate

  def corrupt(self, clean: np.ndarray, rng: np.random.Generator):
    (ph, pw), (h, w) = self.patch, clean.shape[:2]
    kinds, _ = group_mask(rng, (h // ph, w // pw), self.ratio, self.max_block, self.probs)
    pixels = np.repeat(np.repeat(kinds, ph, 0), pw, 1)[..., None]  # (H, W, 1)
    noise = rng.normal(clean.mean((0, 1)), clean.std((0, 1)), clean.shape)
    corrupted = np.where(pixels == ZERO, 0.0, np.where(pixels == NOISE, noise, clean))
    return corrupted.astype(np.float32), kinds.reshape(-1)

  def random_map(self, example, rng: np.random.Generator):
    image = np.asarray(example["image"], np.float32)
    out = {CLEAN: [], CORRUPTED: [], KIND: [], ROTATION: []}
    for _ in range(self.views):
      turns = int(rng.integers(ROTATIONS)) if self.rotate else 0
      clean = np.ascontiguousarray(np.rot90(image, turns, axes=(0, 1)))
      corrupted, kinds = self.corrupt(clean, rng)
      for key, value in zip(out, (clean, corrupted, kinds, turns)):
        out[key].append(value)
    out = {k: np.stack(v) for k, v in out.items()}
    out[ROTATION] = out[ROTATION].astype(np.int32)
    return {**example, **out}


def model_inputs(batch, patch: tuple[int, ...]):
  """(corrupted images (B*V, H, W, C) with the replacement patches filled from the same
  view of the previous image of the batch (a batch of one replaces from itself: no
  corruption), clean target patches (B*V, N, P), patch kinds (B*V, N))."""
  clean = batch[CLEAN]
  b, v, *spatial, channels = clean.shape
  flat = lambda x: x.reshape((b * v,) + x.shape[2:])
  kinds = flat(batch[KIND])
  donor = patchify(flat(jnp.roll(clean, 1, axis=0)), patch)
  patches = jnp.where(kinds[..., None] == REPLACE, donor, patchify(flat(batch[CORRUPTED]), patch))
  return (unpatchify(patches, patch, tuple(spatial), channels), patchify(flat(clean), patch),
          kinds)


def l1_on_corrupted(pred: jax.Array, target: jax.Array, kinds: jax.Array) -> jax.Array:
  """Mean absolute pixel error over the corrupted patches (whole patches are corrupted, so
  this is the mean over corrupted pixels)."""
  per_patch = jnp.abs(pred.astype(jnp.float32) - target).mean(-1)  # (B, N)
  return base.weighted_mean(per_patch, (kinds > 0).astype(jnp.float32))


def _views(config) -> int:
  return 2 if config.objective.sit_contrastive_weight > 0 else 1


@base.register("gmml")
class GroupMaskedModel(base.Objective):
  models = ("sit",)
  modality = "image"
  unit = "images"

  def validate(self, config):
    o = config.objective
    lo, hi = tuple(o.corrupt_ratio)
    if not 0 < lo <= hi <= 1:
      raise ValueError(f"objective.corrupt_ratio={tuple(o.corrupt_ratio)}: must be (lo, hi) "
                       "with 0 < lo <= hi <= 1")
    if not 0 < o.corrupt_block <= 1:
      raise ValueError(f"objective.corrupt_block={o.corrupt_block}: must be in (0, 1]")
    probs = tuple(o.corrupt_probs)
    if len(probs) != len(KIND_NAMES) or min(probs) < 0 or not math.isclose(sum(probs), 1):
      raise ValueError(f"objective.corrupt_probs={probs}: must be 3 probabilities of "
                       f"({', '.join(KIND_NAMES)}) summing to 1")
    for key in ("sit_rotation_weight", "sit_contrastive_weight"):
      if o[key] < 0:
        raise ValueError(f"objective.{key}={o[key]}: must be >= 0 (0 = head off)")
    validate_temperature(o, "sit_contrastive_temperature")

  def host_transform(self, config, info):
    o = config.objective
    patch = MODELS.get(config.model.name).model_config(config.model, info).vit.patch_size
    rotate = o.sit_rotation_weight > 0
    if rotate and info.image_shape[0] != info.image_shape[1]:
      raise ValueError(f"objective.sit_rotation_weight={o.sit_rotation_weight} rotates "
                       f"images by 90 degrees: needs square images, got {info.image_shape}")
    return GroupCorruption(patch=patch, ratio=o.corrupt_ratio, max_block=o.corrupt_block,
                           probs=o.corrupt_probs, views=_views(config), rotate=rotate)

  def _forward(self, net, batch):
    images, target, kinds = model_inputs(batch, net.cfg.vit.patch_size)
    return (images, target, kinds, *net(images))

  def loss_fn(self, params, batch, rng, *, model, config):
    o = config.objective
    _, target, kinds, rotation, embedding, pred = self._forward(model.bind(params), batch)
    recon = l1_on_corrupted(pred, target, kinds)
    loss, metrics = recon, {"reconstruction_loss": recon}
    if o.sit_rotation_weight > 0:
      rot_loss, rot_acc = base.token_loss(rotation, batch[ROTATION].reshape(-1),
                                          jnp.ones(rotation.shape[:1]))
      loss += o.sit_rotation_weight * rot_loss
      metrics.update(rotation_loss=rot_loss, rotation_accuracy=rot_acc)
    if o.sit_contrastive_weight > 0:
      pairs = embedding.reshape(-1, 2, embedding.shape[-1])  # (B, views, E)
      con_loss, con_acc = info_nce(pairs[:, 0], pairs[:, 1], o.sit_contrastive_temperature)
      loss += o.sit_contrastive_weight * con_loss
      metrics.update(contrastive_loss=con_loss, contrastive_accuracy=con_acc)
    return loss, metrics

  def reconstructions(self, params, batch, rng, *, model, config):
    """Per row (first view): the clean image, what the encoder saw, its reconstruction."""
    net = model.bind(params)
    images, target, _, _, _, pred = self._forward(net, batch)
    cfg, views = net.cfg.vit, batch[CLEAN].shape[1]
    first = lambda x: x[::views]
    spatial = images.shape[1:-1]
    return {"reconstructions": image_grid([
        unpatchify(first(target), cfg.patch_size, spatial, cfg.channels), first(images),
        unpatchify(first(pred), cfg.patch_size, spatial, cfg.channels)])}

  def features(self, params, batch, *, model, config):
    """The encoder on the clean image, mean-pooled over patch tokens (task tokens out)."""
    tokens = model.bind(params).tokens(batch["image"])[:, NUM_TASK_TOKENS:]
    return base.mean_pool(tokens, jnp.ones(tokens.shape[:2], bool))

  def units_per_example(self, config, info):
    return 1

  def forward_flops_per_example(self, config, info, model_cfg):
    return _views(config) * sit_flops_per_image(model_cfg)
