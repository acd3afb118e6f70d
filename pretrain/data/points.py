"""Point clouds from images and their point tokens, in NumPy on the host (for I2P-MAE).

No 3D corpus ships with the repo or PyPI at a usable size, so a point cloud is made from an
image read as a height map: N points sampled uniformly from the foreground pixels, x and
y from the pixel's coordinates (jittered inside the pixel, scaled to [-1, 1]) and z from
its intensity in [0, 1]. Point tokens are Point-MAE's (Pang et al. 2022, §3.1): G centers
by farthest-point sampling (FPS), each center's k nearest points as its group, the group
expressed relative to its center.

The 2D saliency I2P-MAE takes from a pretrained 2D model's attention on projected views
is, here, the source image's own gradient magnitude (where the height map has structure:
edges and texture), averaged over each group's points.
"""
from __future__ import annotations

import numpy as np

FOREGROUND = 0.05  # intensity above which a pixel is part of the object
SALIENCY_FLOOR = 1e-3  # every group keeps a nonzero chance of being drawn visible


def image_to_points(image: np.ndarray, num_points: int,
                    rng: np.random.Generator) -> np.ndarray:
  """(H, W, C) image in [0, 1] -> (num_points, 3) float32 (x, y, z): a height map's
  points from its foreground pixels (all pixels if none), drawn with replacement."""
  intensity = image.mean(-1)
  h, w = intensity.shape
  pixels = np.flatnonzero(intensity > FOREGROUND)
  if not len(pixels):
    pixels = np.arange(h * w)
  chosen = rng.choice(pixels, num_points)
  rows, cols = np.divmod(chosen, w)
  jitter = rng.random((num_points, 2))
  x = (cols + jitter[:, 0]) / w * 2 - 1
  y = (rows + jitter[:, 1]) / h * 2 - 1
  return np.stack([x, y, intensity[rows, cols]], -1).astype(np.float32)


def farthest_point_sample(points: np.ndarray, num: int, start: int = 0) -> np.ndarray:
  """(num,) int32 indices: `start`, then each next point the farthest (Euclidean) from
  all chosen so far (ties to the lowest index)."""
  chosen = np.zeros(num, np.int32)
  chosen[0] = start
  dist = np.full(len(points), np.inf)
  for i in range(1, num):
    dist = np.minimum(dist, ((points - points[chosen[i - 1]]) ** 2).sum(-1))
    chosen[i] = np.argmax(dist)
  return chosen


def knn(points: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
  """(Q, k) int32 indices of the k points nearest each query, nearest first (stable)."""
  dist = ((queries[:, None, :] - points[None, :, :]) ** 2).sum(-1)  # (Q, N)
  return np.argsort(dist, axis=1, kind="stable")[:, :k].astype(np.int32)


def saliency_map(image: np.ndarray) -> np.ndarray:
  """(H, W) gradient magnitude of the image's intensity."""
  gy, gx = np.gradient(image.mean(-1).astype(np.float64))
  return np.hypot(gx, gy)


def point_pixels(points: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """(rows, cols) of the pixel each point of `image_to_points` came from."""
  h, w = shape
  rows = np.clip(((points[..., 1] + 1) / 2 * h).astype(np.int64), 0, h - 1)
  cols = np.clip(((points[..., 0] + 1) / 2 * w).astype(np.int64), 0, w - 1)
  return rows, cols


def guided_visible(saliency: np.ndarray, num_visible: int,
                   rng: np.random.Generator) -> np.ndarray:
  """Sorted indices of `num_visible` groups drawn without replacement with probability
  proportional to `saliency` (Gumbel top-k): salient groups tend to stay visible."""
  keys = np.log(saliency) + rng.gumbel(size=len(saliency))
  return np.sort(np.argsort(-keys, kind="stable")[:num_visible]).astype(np.int32)
