"""A k-means visual tokenizer: image -> a row-major sequence of discrete patch codes.

TokenUnify (Chen et al. 2024) pretrains on sequences of image tokens. The simplest real
visual tokenizer is vector quantisation of raw patches: a codebook fitted by k-means
(Lloyd's algorithm) on patch vectors of training images, each patch replaced by the id of
its nearest code. It is fitted once per setting on the host in NumPy and cached in the
data cache (keyed by the image source and every fitting setting), so every run, worker
and resumed run tokenizes identically.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from models.vit import patchify
from pretrain.data import pipeline

DISTANCE_CHUNK = 8192  # patch vectors per block of the nearest-code search (bounds memory)


def patch_vectors(images: np.ndarray, patch: tuple[int, int]) -> np.ndarray:
  """(N, H, W, C) float images -> (N, G, ph * pw * C) patch vectors in row-major grid
  order (the ViT's patchify, run on NumPy arrays)."""
  return np.asarray(patchify(np.asarray(images, np.float32), tuple(patch)))


def nearest_code(vectors: np.ndarray, codebook: np.ndarray) -> np.ndarray:
  """(..., P) vectors -> (...) int32 id of the code at the least squared distance (ties
  to the lowest id)."""
  flat = vectors.reshape(-1, vectors.shape[-1]).astype(np.float32)
  sq_codes = (codebook.astype(np.float32) ** 2).sum(-1)
  ids = np.empty(len(flat), np.int32)
  for start in range(0, len(flat), DISTANCE_CHUNK):
    block = flat[start:start + DISTANCE_CHUNK]
    # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 is the same for every code.
    ids[start:start + DISTANCE_CHUNK] = np.argmin(sq_codes - 2 * block @ codebook.T, axis=1)
  return ids.reshape(vectors.shape[:-1])


def kmeans(points: np.ndarray, k: int, iters: int, seed: int) -> np.ndarray:
  """Lloyd's k-means from k-means++ seeds (Arthur & Vassilvitskii 2007) -> (k, P) float32.
  A centroid left without points moves to the point farthest from its own centroid."""
  rng = np.random.default_rng(seed)
  points = points.astype(np.float32)
  centroids = [points[rng.integers(len(points))]]
  d2 = np.square(points - centroids[0]).sum(1)
  for _ in range(1, k):
    # Fewer distinct points than k: every distance is 0, any point will do.
    probs = d2 / d2.sum() if d2.sum() > 0 else None
    centroids.append(points[rng.choice(len(points), p=probs)])
    d2 = np.minimum(d2, np.square(points - centroids[-1]).sum(1))
  centroids = np.stack(centroids)
  for _ in range(iters):
    ids = nearest_code(points, centroids)
    counts = np.bincount(ids, minlength=k)
    sums = np.zeros_like(centroids)
    np.add.at(sums, ids, points)
    empty = counts == 0
    centroids[~empty] = sums[~empty] / counts[~empty, None]
    if empty.any():
      error = np.square(points - centroids[ids]).sum(1)
      centroids[empty] = points[np.argsort(-error)[:empty.sum()]]
  return centroids


def reconstruction_error(vectors: np.ndarray, codebook: np.ndarray) -> float:
  """Mean squared error of replacing each vector by its nearest code."""
  decoded = codebook[nearest_code(vectors, codebook)]
  return float(np.mean((decoded - vectors) ** 2))


def fit_codebook(data_cfg, *, patch: tuple[int, int], num_codes: int, iters: int,
                 num_images: int, seed: int) -> np.ndarray:
  """The codebook for `data_cfg`'s training images, from the cache or fitted (and cached)
  now on the patches of `num_images` training images drawn with `seed`."""
  key = dict(source=data_cfg.source, path=data_cfg.path, tfds_name=data_cfg.tfds_name,
             patch=list(patch), num_codes=num_codes, iters=iters, num_images=num_images,
             seed=seed)
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  path = os.path.join(pipeline.cache_dir(data_cfg), "visual_tokens", f"kmeans-{digest}.npy")
  if os.path.exists(path):
    return np.load(path, allow_pickle=False)
  source = pipeline.build_image_dataset(data_cfg, "train")
  rng = np.random.default_rng(seed)
  chosen = np.sort(rng.choice(len(source), min(num_images, len(source)), replace=False))
  images = np.stack([source[int(i)]["image"] for i in chosen])
  vectors = patch_vectors(images, patch).reshape(-1, images.shape[-1] * patch[0] * patch[1])
  codebook = kmeans(vectors, num_codes, iters, seed)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}.npy"  # np.save appends .npy to names without it
  np.save(tmp, codebook)
  os.replace(tmp, path)
  return codebook
