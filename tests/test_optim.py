"""Learning-rate schedules and the weight-decay mask against hand-computed values."""
from __future__ import annotations

import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from pretrain import optim


def optim_cfg(**overrides):
  base = dict(lr=1.0, schedule="cosine", warmup_steps=10, end_lr_fraction=0.1,
              weight_decay=0.1, b1=0.9, b2=0.999, eps=1e-8, clip_norm=1.0)
  return ml_collections.ConfigDict({**base, **overrides})


@pytest.mark.parametrize("schedule,step,expected", [
    ("cosine", 0, 0.0), ("cosine", 5, 0.5), ("cosine", 10, 1.0),
    ("cosine", 60, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))), ("cosine", 110, 0.1),
    ("linear", 60, 1.0 - 0.9 * 0.5), ("linear", 110, 0.1), ("constant", 80, 1.0),
])
def test_schedule_by_hand(schedule, step, expected):
  fn = optim.learning_rate_schedule(optim_cfg(schedule=schedule), total_steps=110)
  assert float(fn(step)) == pytest.approx(expected, abs=1e-6)


def test_decay_mask_skips_norms_biases_and_positions():
  params = {"embed": {"table": jnp.ones((8, 4))},
            "pos_embed": {"table": jnp.ones((8, 4))},
            "blocks": {"0": {"mlp": {"wi": {"kernel": jnp.ones((4, 8)), "bias": jnp.ones(8)}},
                             "attn_norm": {"scale": jnp.ones(4), "bias": jnp.ones(4)}}},
            "encoder": {"cls_token": jnp.ones((1, 1, 4))}}
  mask = optim.decay_mask(params)
  assert mask["embed"]["table"] and mask["blocks"]["0"]["mlp"]["wi"]["kernel"]
  assert not mask["pos_embed"]["table"]
  assert not mask["blocks"]["0"]["mlp"]["wi"]["bias"]
  assert not mask["blocks"]["0"]["attn_norm"]["scale"]
  assert not mask["encoder"]["cls_token"]


def test_adamw_decays_only_masked_leaves():
  """With zero gradients, only decayed leaves move (by lr * wd * value)."""
  tx = optim.make_optimizer(optim_cfg(schedule="constant", warmup_steps=0), total_steps=10)
  params = {"w": {"kernel": jnp.full((2, 2), 2.0)}, "norm": {"scale": jnp.full((2,), 2.0)}}
  grads = {"w": {"kernel": jnp.zeros((2, 2))}, "norm": {"scale": jnp.zeros((2,))}}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["w"]["kernel"], -1.0 * 0.1 * 2.0)
  np.testing.assert_allclose(updates["norm"]["scale"], 0.0)


def test_bad_schedule_names_valid_ones():
  with pytest.raises(ValueError, match="valid: cosine, linear, constant"):
    optim.learning_rate_schedule(optim_cfg(schedule="step"), total_steps=10)
