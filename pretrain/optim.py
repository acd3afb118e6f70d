"""optax builders: AdamW with warmup + decay, clipping, and a weight-decay mask."""
from __future__ import annotations

import jax
import optax

SCHEDULES = ("cosine", "linear", "constant")
# Parameters whose path contains one of these names are not decayed: norm scales and
# biases (as in BERT/GPT-2/MAE recipes) and position tables.
NO_DECAY_NAMES = ("bias", "scale", "norm", "ln", "pos", "cls_token", "mask_token")


def learning_rate_schedule(optim_cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then cosine/linear decay to `end_lr_fraction * lr`."""
  if optim_cfg.schedule not in SCHEDULES:
    raise ValueError(f"optim.schedule={optim_cfg.schedule!r}; valid: {', '.join(SCHEDULES)}")
  peak, warmup = optim_cfg.lr, optim_cfg.warmup_steps
  end = peak * optim_cfg.end_lr_fraction
  decay_steps = max(total_steps - warmup, 1)
  if optim_cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=optim_cfg.end_lr_fraction)
  elif optim_cfg.schedule == "linear":
    decay = optax.linear_schedule(peak, end, decay_steps)
  else:
    decay = optax.constant_schedule(peak)
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params):
  """True for leaves that get weight decay: matrices not named like a norm/bias/position."""

  def decays(path, leaf) -> bool:
    names = [str(getattr(k, "key", getattr(k, "name", k))).lower() for k in path]
    if leaf.ndim < 2:
      return False
    return not any(tag in name for name in names for tag in NO_DECAY_NAMES)

  return jax.tree.map_with_path(decays, params)


def make_optimizer(optim_cfg, total_steps: int) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(optim_cfg, total_steps)
  parts = []
  if optim_cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.clip_norm))
  parts.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                           weight_decay=optim_cfg.weight_decay, mask=decay_mask))
  return optax.chain(*parts)
