"""Small pieces many test files need: a model as the trainer holds it, cross-entropy
computed independently in float64 NumPy, and the pieces of the Hugging Face parity tests."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
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


def with_params(cls, cfg, flat: dict | None = None, seed: int = 0):
  """`cls(cfg)` holding `flat` params ('/'-joined paths), or its init perturbed by
  N(0, 0.05^2): inits start biases and norms constant, which would hide a mapping that swaps
  two of them."""
  with nnx.use_eager_sharding(False):
    model = cls(cfg, rngs=nnx.Rngs(seed))
  state = nnx.state(model, nnx.Param)
  rng = np.random.default_rng(seed)
  pure = jax.tree_util.tree_map_with_path(
      lambda p, leaf: flat[jax.tree_util.keystr(p, simple=True, separator="/")] if flat else
      np.asarray(leaf) + 0.05 * rng.standard_normal(leaf.shape, np.float32),
      nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
  nnx.update(model, state)
  return model


def torch_and_transformers():
  """(torch, transformers), or the test is skipped without the hf extra."""
  torch = pytest.importorskip("torch", reason="parity tests need the hf extra (torch)")
  return torch, pytest.importorskip("transformers", reason="parity tests need the hf extra")


def save_perturbed(model, directory):
  """An HF model with every tensor perturbed like `with_params`, saved as safetensors."""
  torch, _ = torch_and_transformers()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.save_pretrained(str(directory), safe_serialization=True)
  return model.eval()


def encoder_decoder_logits(model, enc, dec) -> np.ndarray:
  """Our encoder-decoder's logits: one packed segment per row, positions 0.. on both sides."""
  ones = lambda x: jnp.ones(x.shape, jnp.int32)  # noqa: E731
  pos = lambda x: jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape)  # noqa: E731
  enc, dec = jnp.asarray(enc), jnp.asarray(dec)
  hidden = model(enc, dec, enc_segment_ids=ones(enc), dec_segment_ids=ones(dec),
                 enc_positions=pos(enc), dec_positions=pos(dec))
  return np.asarray(model.logits(hidden))


def hf_seq2seq_logits(model, enc, dec) -> np.ndarray:
  import torch
  with torch.no_grad():
    return model(input_ids=torch.tensor(enc), decoder_input_ids=torch.tensor(dec)).logits.numpy()


def random_model(cls, cfg, seed: int = 0, std: float = 0.3):
  """(ModelDef, params) of `cls(cfg)` with every param N(0, std^2) from NumPy: built
  abstractly, so no initializer is compiled (an eager init compiles one kernel per param
  shape; the losses under test hold for any params)."""
  with nnx.use_eager_sharding(False):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, std, x.shape), x.dtype),
                        nnx.to_pure_dict(state))
  return ModelDef(graphdef), params
