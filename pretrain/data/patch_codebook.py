"""Video frames as tokens: a k-means codebook over square pixel patches.

Next-block prediction (Ren et al. 2025) models the discrete tokens of a learned 3D video
tokenizer; training one is another project. The smallest honest stand-in is vector
quantisation with a codebook fitted by k-means (Lloyd's algorithm, k-means++ seeding) on
the patches of training clips: each `patch x patch` pixel patch of a frame becomes the id
of its nearest centroid, so a frame is (frame_size / patch)^2 tokens and the token vocabulary
is the codebook. Fitting reads `FIT_CLIPS` training clips spread evenly over the split and
is cached (in memory and as .npy under `<cache>/patch_codebook/`), keyed by everything it
depends on.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable

import numpy as np

from models.vit import patchify
from pretrain.data.cache import cache_dir
from pretrain.data.visual_tokens import kmeans

FIT_CLIPS = 256  # training clips whose patches the codebook is fitted on
KMEANS_ITERS = 20
CODEBOOK_FORMAT = 1  # part of the cache key: bump it when fitting changes
_FITTED: dict[str, np.ndarray] = {}


def frame_patches(video: np.ndarray, patch: int) -> np.ndarray:
  """uint8 (T, H, W, C) -> float32 (T N, patch^2 C) in [0, 1]: frame by frame, each frame's
  patches in row-major order (`models.vit.patchify`'s layout)."""
  return patchify(video[None].astype(np.float32) / 255.0, (1, patch, patch))[0]


def fitted_codebook(config, read_train_source: Callable[[], Any]) -> np.ndarray:
  """The (model.codebook_size, patch^2 C) codebook of this run's data; `read_train_source()`
  gives the training clips, only called when no fitted codebook is cached."""
  d, patch = config.data, int(config.model.patch_size[0])
  key = json.dumps([d.source, d.num_frames, d.frame_size, d.frame_stride, patch,
                    config.model.codebook_size, FIT_CLIPS, KMEANS_ITERS, config.seed,
                    CODEBOOK_FORMAT])
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  if digest in _FITTED:
    return _FITTED[digest]
  path = os.path.join(cache_dir(d), "patch_codebook", f"{digest}.npy")
  if os.path.exists(path):
    codebook = np.load(path, allow_pickle=False)
  else:
    source = read_train_source()
    picks = np.unique(np.linspace(0, len(source) - 1, FIT_CLIPS).astype(np.int64))
    points = np.concatenate([frame_patches(source[int(i)]["video"], patch) for i in picks])
    codebook = kmeans(points, config.model.codebook_size, KMEANS_ITERS, config.seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
      np.save(f, codebook)
    os.replace(tmp, path)  # atomic: a concurrent run never reads half a file
  _FITTED[digest] = codebook
  return codebook
