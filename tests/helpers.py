"""Small pieces many test files need: a model as the trainer holds it, and cross-entropy
computed independently in float64 NumPy."""
from __future__ import annotations

import numpy as np
from flax import nnx

from objectives.base import ModelDef


def build(cls, cfg, seed: int = 0):
  """(ModelDef, params as a pure nested dict) of `cls(cfg)`, the way the trainer holds a model."""
  with nnx.use_eager_sharding(False):
    graphdef, state = nnx.split(cls(cfg, rngs=nnx.Rngs(seed)), nnx.Param)
  return ModelDef(graphdef), nnx.to_pure_dict(state)


def np_cross_entropy(logits, targets) -> np.ndarray:
  """Per-position softmax cross-entropy in float64: logits (..., V), targets (...)."""
  logits = np.asarray(logits, np.float64)
  top = logits.max(-1, keepdims=True)
  logz = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
  return logz - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
