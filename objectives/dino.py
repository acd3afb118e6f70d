"""DINO self-distillation (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision
Transformers", §3.1, Algorithm 1), the objective behind DINOv2 (Oquab et al. 2023) and
RAD-DINO (Pérez-García et al. 2024, "RAD-DINO: Exploring Scalable Medical Image Encoders
Beyond Text Supervision", which trains DINOv2's recipe on chest X-rays).

A student and a teacher (an EMA of the student: teacher.kind=ema with the cosine momentum
schedule) see different random crops of one image: 2 global crops and K smaller local ones,
made on the host (`MultiCrop`). The teacher sees only the global crops; its outputs are
centred (minus `center`, an EMA of the teacher's mean output over the global batch) and
sharpened (temperature teacher_temp, warmed up linearly from warmup_teacher_temp); the
student's, at student_temp, are trained to match them with a cross-entropy over every
(teacher global view, student view) pair of different views:
  loss = mean over pairs (i, v), i != v, and images of
         -sum_k softmax((t_i - c) / tau_t)_k log softmax(s_v / tau_s)_k.
Centring keeps one prototype from dominating, sharpening keeps the outputs from going
uniform: together they avoid collapse without negatives (§5.3).

Design: the center persists across steps as this objective's state in the train state
(`initial_state`, returned each step under base.NEXT_STATE); the teacher temperature of a
step is computed on the host from the example index (step = index // global_batch, as the
MLM curriculum does; evaluation batches count from step 0) and travels with the batch, so
the loss stays a pure function of (params, batch). Local crops are smaller than the model's
image: the ViT interpolates its position table to their grid (models/vit.py).

iBOT (Zhou et al. 2022, "iBOT: Image BERT Pre-Training with Online Tokenizer", §3.2) adds
masked image modeling with the teacher as online tokenizer (`ibot_weight` > 0): the host
also draws a blockwise mask over each global crop's patches (BEiT's, Bao et al. 2022,
Algorithm 1; a ratio uniform in `ibot_mask_ratio`), the student sees its global crops with
the masked patches replaced by a learned [MASK] embedding, the teacher the full crops, and
  loss += ibot_weight * mean over images and global views v of the mean over v's masked
          patches j of -sum_k softmax((t_vj - c_p) / tau_t)_k log softmax(s_vj / tau_s)_k,
the student's patch tokens predicting the teacher's on the same view. Patch tokens go
through the same head as [CLS] (iBOT's shared head), with their own center c_p updated like
DINO's over all the teacher's patch tokens, and the same temperatures (iBOT: 0.1 and
0.04 -> 0.07 for both). The [CLS] term is DINO's, with the student on the masked crops.
"""
from __future__ import annotations

import math

import grain
import jax
import jax.numpy as jnp
import numpy as np

from models.dino import head_flops
from models.vit import vit_encoder_flops_per_image
from objectives import base

GLOBAL_CROPS = 2  # DINO Algorithm 1: two global views x1, x2.


def resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(H, W, C) -> (h, w, C) float32 by separable linear interpolation with half-pixel
  centres, edge pixels clamped and no antialiasing (torch's align_corners=False)."""
  out = image.astype(np.float32)
  for axis, (n_in, n_out) in enumerate(zip(image.shape[:2], size)):
    x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(x).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (x - lo).reshape((-1,) + (1,) * (out.ndim - 1 - axis)).astype(np.float32)
    out = np.take(out, lo, axis) * (1 - frac) + np.take(out, hi, axis) * frac
  return out


def crop_box(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float],
             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """(top, left, h, w) of a random crop covering a `scale` fraction of the area at a
  log-uniform aspect ratio in `ratio`; 10 tries, then the whole image (torchvision's
  RandomResizedCrop)."""
  area = height * width
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  return 0, 0, height, width


def teacher_temperature(step: int, *, warmup: float, final: float, warmup_steps: int) -> float:
  """Linear warmup from `warmup` to `final` over `warmup_steps`, then `final` (DINO)."""
  if step >= warmup_steps:
    return final
  return warmup + (final - warmup) * step / warmup_steps


BLOCK_ASPECT = (0.3, 1 / 0.3)  # BEiT: log-uniform aspect ratios of mask blocks
MIN_BLOCK = 4  # BEiT / iBOT: the smallest block, in patches


def block_mask(rng: np.random.Generator, grid: tuple[int, int], ratio: float) -> np.ndarray:
  """(h, w) bool, True = masked: rectangles of >= MIN_BLOCK patches (or what is left) at
  log-uniform aspect ratios, each kept only if it adds patches without overshooting
  round(ratio * h * w); stops there or after 10 rejected blocks in a row (BEiT)."""
  h, w = grid
  target, mask, rejected = round(ratio * h * w), np.zeros(grid, bool), 0
  while mask.sum() < target and rejected < 10:
    left = target - int(mask.sum())
    top, lft, bh, bw = crop_box(rng, h, w, (min(MIN_BLOCK, left) / (h * w), left / (h * w)),
                                BLOCK_ASPECT)
    added = int((~mask[top:top + bh, lft:lft + bw]).sum())
    if 0 < added <= left:
      mask[top:top + bh, lft:lft + bw], rejected = True, 0
    else:
      rejected += 1
  return mask


class MultiCrop(grain.transforms.RandomMap):
  """Clean image -> {"global": (2, G, G, C), "local": (K, L, L, C)} random resized crops,
  each flipped left-right with probability 1/2, plus this step's "teacher_temp"; with
  `mask_grid` (iBOT) also "masks": (2, N) bool blockwise masks of the global crops' patches
  at a ratio drawn uniformly from `mask_ratio` per crop."""

  wants_example_index = True

  def __init__(self, *, global_size: int, local_size: int, local_crops: int,
               global_scale: tuple[float, float], local_scale: tuple[float, float],
               global_batch: int, temperature: dict, mask_grid: tuple[int, int] = (),
               mask_ratio: tuple[float, float] = (0.0, 0.0)):
    self.sizes = (global_size, local_size)
    self.local_crops = local_crops
    self.scales = (tuple(global_scale), tuple(local_scale))
    self.global_batch = global_batch
    self.temperature = temperature
    self.mask_grid, self.mask_ratio = tuple(mask_grid), tuple(mask_ratio)

  def crop(self, image: np.ndarray, size: int, scale, rng: np.random.Generator) -> np.ndarray:
    top, left, h, w = crop_box(rng, image.shape[0], image.shape[1], scale)
    view = resize_bilinear(image[top:top + h, left:left + w], (size, size))
    return view[:, ::-1] if rng.uniform() < 0.5 else view

  def random_map(self, example, rng: np.random.Generator):
    image = np.asarray(example["image"], np.float32)
    views = {}
    for name, count, size, scale in (("global", GLOBAL_CROPS, self.sizes[0], self.scales[0]),
                                     ("local", self.local_crops, self.sizes[1],
                                      self.scales[1])):
      crops = [self.crop(image, size, scale, rng) for _ in range(count)]
      views[name] = (np.stack(crops) if crops else
                     np.zeros((0, size, size, image.shape[-1]), np.float32))
    step = int(example["example_index"]) // self.global_batch
    views["teacher_temp"] = np.float32(teacher_temperature(step, **self.temperature))
    if self.mask_grid:
      views["masks"] = np.stack([block_mask(rng, self.mask_grid, rng.uniform(*self.mask_ratio))
                                 .reshape(-1) for _ in range(GLOBAL_CROPS)])
    return views


def dino_loss(student_logits: jax.Array, teacher_logits: jax.Array, center: jax.Array,
              student_temp: float, teacher_temp: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(loss, teacher entropy): student (B, V, K) over all views, teacher (B, 2, K) over the
  global views (the first two student views), teacher_temp (B,). Pairs of one view with
  itself are left out."""
  target = (teacher_logits - center) / teacher_temp[:, None, None]
  ce = base.soft_cross_entropy(student_logits[:, None] / student_temp,
                               target[:, :, None])  # (B, 2, V)
  num_global, num_views = ce.shape[1:]
  pairs = 1.0 - jnp.eye(num_global, num_views)
  entropy = base.soft_cross_entropy(target, target).mean()
  return (ce.mean(0) * pairs).sum() / pairs.sum(), entropy


def ibot_patch_loss(student_patches: jax.Array, teacher_patches: jax.Array,
                    center: jax.Array, masks: jax.Array, student_temp: float,
                    teacher_temp: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(loss, teacher entropy), each per view the mean over its masked patches (0 for none),
  then the mean over all views of all images: student (B, 2, N, K) on the masked global
  views, teacher (B, 2, N, K) on the full ones, masks (B, 2, N) bool, teacher_temp (B,)."""
  target = (teacher_patches - center) / teacher_temp[:, None, None, None]
  weights = masks.astype(jnp.float32)

  def masked_mean(per_patch):  # (B, 2, N) -> ()
    return ((per_patch * weights).sum(-1) / jnp.maximum(weights.sum(-1), 1.0)).mean()

  return (masked_mean(base.soft_cross_entropy(student_patches / student_temp, target)),
          masked_mean(base.soft_cross_entropy(target, target)))


def next_center(center: jax.Array, teacher_logits: jax.Array, momentum: float) -> jax.Array:
  """center <- m * center + (1 - m) * mean teacher output over images and global views (and
  patches, for iBOT's patch center)."""
  batch_mean = teacher_logits.reshape(-1, teacher_logits.shape[-1]).mean(0)
  return momentum * center + (1.0 - momentum) * batch_mean


def _views(net, images: jax.Array, *per_view: jax.Array) -> jax.Array:
  """images (B, V, H, W, C) (and per-view inputs (B, V, ...)) -> net's outputs (B, V, ...):
  all V views through `net` at once."""
  b, v = images.shape[:2]
  flat = [x.reshape((b * v,) + x.shape[2:]) for x in (images, *per_view)]
  out = net(*flat)
  return out.reshape((b, v) + out.shape[1:])


@base.register("dino")
class Dino(base.Objective):
  modality = "image"
  unit = "images"
  models = ("dino",)
  uses_teacher = True

  def validate(self, config):
    o = config.objective
    for key in ("global_crop_size", "local_crop_size"):
      if o[key] < 1:
        raise ValueError(f"objective.{key}={o[key]}: must be >= 1")
    if o.local_crops < 0:
      raise ValueError(f"objective.local_crops={o.local_crops}: must be >= 0")
    for key in ("global_crop_scale", "local_crop_scale"):
      lo, hi = o[key]
      if not 0 < lo <= hi <= 1:
        raise ValueError(f"objective.{key}={tuple(o[key])}: need 0 < low <= high <= 1")
    for key in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
      if o[key] <= 0:
        raise ValueError(f"objective.{key}={o[key]}: must be > 0")
    if o.teacher_temp_warmup_steps < 0:
      raise ValueError(f"objective.teacher_temp_warmup_steps={o.teacher_temp_warmup_steps}: "
                       "must be >= 0")
    if not 0 <= o.center_momentum < 1:
      raise ValueError(f"objective.center_momentum={o.center_momentum}: must be in [0, 1)")
    if o.ibot_weight < 0:
      raise ValueError(f"objective.ibot_weight={o.ibot_weight}: must be >= 0")
    lo, hi = o.ibot_mask_ratio
    if o.ibot_weight and not 0 < lo <= hi < 1:
      raise ValueError(f"objective.ibot_mask_ratio={tuple(o.ibot_mask_ratio)}: need "
                       "0 < low <= high < 1")
    if o.ibot_weight and not config.model.mask_token:
      raise ValueError(f"objective.ibot_weight={o.ibot_weight} masks the student's patches: "
                       "set model.mask_token=True")
    patch = tuple(config.model.patch_size)
    for key in ("global_crop_size", "local_crop_size"):
      if any(patch) and any(o[key] % p for p in patch):
        raise ValueError(f"objective.{key}={o[key]} is not a multiple of model.patch_size="
                         f"{patch}")

  def host_transform(self, config, info):
    o = config.objective
    masking = {}
    if o.ibot_weight:
      grid = tuple(o.global_crop_size // p for p in config.model.patch_size)
      masking = dict(mask_grid=grid, mask_ratio=o.ibot_mask_ratio)
    return MultiCrop(global_size=o.global_crop_size, local_size=o.local_crop_size,
                     local_crops=o.local_crops, global_scale=o.global_crop_scale,
                     local_scale=o.local_crop_scale, global_batch=config.train.global_batch,
                     temperature=dict(warmup=o.warmup_teacher_temp, final=o.teacher_temp,
                                      warmup_steps=o.teacher_temp_warmup_steps), **masking)

  def initial_state(self, config, info, model_cfg):
    state = {"center": jnp.zeros((model_cfg.out_dim,), jnp.float32)}
    if config.objective.ibot_weight:
      state["patch_center"] = jnp.zeros((model_cfg.out_dim,), jnp.float32)
    return state

  def loss_fn(self, params, batch, rng, *, model, config, teacher, objective_state):
    del rng  # All randomness (the crops, the masks) is on the host.
    o = config.objective
    student_net = model.bind(params)
    if o.ibot_weight:
      student_tokens = _views(student_net.token_logits, batch["global"], batch["masks"])
      teacher_tokens = _views(teacher.bind().token_logits, batch["global"])
      student, target = student_tokens[:, :, 0], teacher_tokens[:, :, 0]
    else:
      student = _views(student_net, batch["global"])
      target = _views(teacher.bind(), batch["global"])
    if o.local_crops:
      student = jnp.concatenate([student, _views(student_net, batch["local"])], axis=1)
    center = objective_state["center"]
    loss, entropy = dino_loss(student, target, center, o.student_temp, batch["teacher_temp"])
    # Sharpness and spread of the teacher's centred distribution: collapse to one prototype
    # sends the entropy to 0, collapse to uniform sends it to log(out_dim).
    metrics = {"teacher_entropy": entropy, "teacher_temp": batch["teacher_temp"].mean()}
    next_state = {"center": next_center(center, target, o.center_momentum)}
    if o.ibot_weight:
      patches = teacher_tokens[:, :, 1:]
      patch_loss, patch_entropy = ibot_patch_loss(
          student_tokens[:, :, 1:], patches, objective_state["patch_center"], batch["masks"],
          o.student_temp, batch["teacher_temp"])
      metrics.update(dino_loss=loss, ibot_loss=patch_loss,
                     patch_teacher_entropy=patch_entropy)
      loss = loss + o.ibot_weight * patch_loss
      next_state["patch_center"] = next_center(objective_state["patch_center"], patches,
                                               o.center_momentum)
    metrics[base.NEXT_STATE] = next_state
    return loss, metrics

  def features(self, params, batch, *, model, config):
    """The backbone's [CLS] output on the clean image (what DINO evaluates with k-NN)."""
    return model.bind(params).features(batch["image"]).astype(jnp.float32)

  def units_per_example(self, config, info):
    return 1

  def forward_flops_per_example(self, config, info, model_cfg):
    """Student on 2 global + K local crops, plus the teacher on the 2 global / 3 (no
    backward through it); iBOT's patch tokens through the head."""
    o, vit = config.objective, model_cfg.vit

    def view(size, tokens_through_head=1):
      patches = math.prod(size // p for p in vit.patch_size)
      return (vit_encoder_flops_per_image(vit, patches)
              + tokens_through_head * head_flops(model_cfg))

    # iBOT sends every patch token of the global views through the head, too.
    patches = math.prod(o.global_crop_size // p for p in vit.patch_size)
    global_views = GLOBAL_CROPS * view(o.global_crop_size,
                                       1 + (patches if o.ibot_weight else 0))
    return global_views + o.local_crops * view(o.local_crop_size) + global_views / 3
