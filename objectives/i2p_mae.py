"""I2P-MAE (Zhang et al. 2023, "Learning 3D Representations from 2D Pre-trained Models via
Image-to-Point Masked Autoencoders"): masked autoencoding of point tokens whose masking
is guided by 2D saliency.

Host side (pretrain/data/points.py): each Fashion-MNIST image becomes a point cloud read
as a height map (x, y from foreground pixel coordinates, z from intensity; `num_points`
points), then point tokens: `num_groups` FPS centers and each center's `model.group_size`
nearest points, relative to the center. 2D-guided masking: I2P-MAE keeps visible the
tokens a pretrained 2D model's saliency marks important; our point clouds come from
images, so the source image's own saliency (its gradient magnitude, averaged over each
group's points) is that guide: visible groups are drawn without replacement with
probability proportional to it (`objective.saliency_masking`; False = uniform, as
Point-MAE). Masking is host work here because it needs the image.

Device side: the Point-MAE-style encoder sees the visible tokens, the decoder predicts the
hidden groups' points, and the loss is the L2 Chamfer distance between predicted and true
points of each hidden group (Point-MAE's), averaged over hidden groups.
"""
from __future__ import annotations

import grain
import jax
import jax.numpy as jnp
import numpy as np

from models.transformer import stack_flops_per_token
from objectives import base
from objectives.mae import image_grid
from pretrain.data import points as points_lib


def num_visible(num_groups: int, mask_ratio: float) -> int:
  """Visible groups: int(G (1 - mask_ratio)), at least one, at most G - 1."""
  return min(num_groups - 1, max(1, int(num_groups * (1 - mask_ratio))))


class PointTokens(grain.transforms.RandomMap):
  """Clean image -> {image, points (N, 3), centers (G, 3), neighborhoods (G, k, 3),
  visible_idx (Gv,), masked_idx (G - Gv,)} (index arrays sorted)."""

  def __init__(self, *, num_points: int, num_groups: int, group_size: int,
               mask_ratio: float, saliency_masking: bool):
    self.num_points, self.num_groups, self.group_size = num_points, num_groups, group_size
    self.visible = num_visible(num_groups, mask_ratio)
    self.saliency_masking = saliency_masking

  def random_map(self, example, rng: np.random.Generator):
    image = example["image"]
    cloud = points_lib.image_to_points(image, self.num_points, rng)
    centers_idx = points_lib.farthest_point_sample(cloud, self.num_groups,
                                                   int(rng.integers(len(cloud))))
    centers = cloud[centers_idx]
    groups = points_lib.knn(cloud, centers, self.group_size)  # (G, k)
    if self.saliency_masking:
      rows, cols = points_lib.point_pixels(cloud[groups], image.shape[:2])
      saliency = points_lib.saliency_map(image)[rows, cols].mean(-1)  # (G,)
    else:
      saliency = np.ones(self.num_groups)
    visible = points_lib.guided_visible(saliency + points_lib.SALIENCY_FLOOR,
                                        self.visible, rng)
    return {"image": image, "points": cloud, "centers": centers,
            "neighborhoods": (cloud[groups] - centers[:, None]).astype(np.float32),
            "visible_idx": visible,
            "masked_idx": np.setdiff1d(np.arange(self.num_groups), visible).astype(np.int32)}


def chamfer_l2(pred: jax.Array, target: jax.Array) -> jax.Array:
  """(..., n, 3), (..., m, 3) -> (...): mean over pred of the squared distance to the
  nearest target point plus mean over target of the squared distance to the nearest
  predicted point."""
  dist = jnp.square(pred[..., :, None, :] - target[..., None, :, :]).sum(-1)  # (..., n, m)
  return dist.min(-1).mean(-1) + dist.min(-2).mean(-1)


def predict(net, batch):
  """(predicted hidden groups (B, Gm, k, 3), their true points (B, Gm, k, 3)), both
  relative to the groups' centers."""
  centers, visible, masked = batch["centers"], batch["visible_idx"], batch["masked_idx"]
  latent = net.encode(batch["neighborhoods"], centers, visible)
  pred = net.decode(latent, centers, visible, masked)
  target = jnp.take_along_axis(batch["neighborhoods"], masked[:, :, None, None], axis=1)
  return pred, target


def render(points: jax.Array, valid: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """Points (B, n, 3) as a height-map image (B, H, W, 1): each valid point lights its
  pixel with its z (the brightest point wins)."""
  b, n, _ = points.shape
  h, w = shape
  rows = jnp.clip(((points[..., 1] + 1) / 2 * h).astype(jnp.int32), 0, h - 1)
  cols = jnp.clip(((points[..., 0] + 1) / 2 * w).astype(jnp.int32), 0, w - 1)
  value = jnp.where(valid, jnp.clip(points[..., 2], 0.0, 1.0), 0.0)
  canvas = jnp.zeros((b, h * w)).at[jnp.arange(b)[:, None], rows * w + cols].max(value)
  return canvas.reshape(b, h, w, 1)


@base.register("i2p_mae")
class ImageToPointMAE(base.Objective):
  models = ("point_mae",)
  modality = "image"
  unit = "images"

  def validate(self, config):
    o, k = config.objective, config.model.group_size
    if not 0 < o.mask_ratio < 1:
      raise ValueError(f"objective.mask_ratio={o.mask_ratio}: must be in (0, 1)")
    if not 2 <= o.num_groups <= o.num_points:
      raise ValueError(f"objective.num_groups={o.num_groups}: must be in [2, "
                       f"objective.num_points={o.num_points}]")
    if not 1 <= k <= o.num_points:
      raise ValueError(f"model.group_size={k}: must be in [1, objective.num_points="
                       f"{o.num_points}]")

  def host_transform(self, config, info):
    o = config.objective
    return PointTokens(num_points=o.num_points, num_groups=o.num_groups,
                       group_size=config.model.group_size, mask_ratio=o.mask_ratio,
                       saliency_masking=o.saliency_masking)

  def loss_fn(self, params, batch, rng, *, model, config):
    del rng  # Grouping and masking are drawn on the host.
    pred, target = predict(model.bind(params), batch)
    return chamfer_l2(pred, target).mean(), {}

  def reconstructions(self, params, batch, rng, *, model, config):
    """Per row: the image, its point cloud, the visible groups' points, and those plus
    the predicted hidden groups (all drawn as height maps)."""
    pred, _ = predict(model.bind(params), batch)
    centers, shape = batch["centers"], batch["image"].shape[1:3]

    def absolute(groups, idx):  # (B, n, k, 3) relative to their centers -> (B, n k, 3)
      at = jnp.take_along_axis(centers, idx[..., None], axis=1)[:, :, None]
      return (groups + at).reshape(groups.shape[0], -1, 3)

    visible = absolute(jnp.take_along_axis(batch["neighborhoods"],
                                           batch["visible_idx"][:, :, None, None], axis=1),
                       batch["visible_idx"])
    guessed = absolute(pred, batch["masked_idx"])
    both = jnp.concatenate([visible, guessed], 1)
    valid = jnp.ones(both.shape[:2], bool)
    cloud = batch["points"]
    return {"reconstructions": image_grid([
        batch["image"].mean(-1, keepdims=True),
        render(cloud, jnp.ones(cloud.shape[:2], bool), shape),
        render(visible, valid[:, :visible.shape[1]], shape),
        render(both, valid, shape)])}

  def units_per_example(self, config, info):
    return 1

  def forward_flops_per_example(self, config, info, model_cfg):
    o, m = config.objective, model_cfg
    groups, k = o.num_groups, m.group_size
    visible = num_visible(groups, o.mask_ratio)
    h1, h2, h3 = m.embed_dims
    embed = visible * k * 2 * (3 * h1 + h1 * h2 + 2 * h2 * h3 + h3 * m.d_model)
    positions = (visible + groups) * 2 * (3 * h1 + h1 * m.d_model)
    encoder = visible * stack_flops_per_token(m.encoder_block, m.num_layers, visible)
    decoder = groups * stack_flops_per_token(m.decoder_block, m.dec_layers, groups)
    head = (groups - visible) * 2 * m.d_model * 3 * k
    return embed + positions + encoder + decoder + head
