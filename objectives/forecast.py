"""Forecasting pretraining (Tiny Time Mixers, Ekambaram et al. 2024): from a standardised
context window, predict the next `horizon` standardised values; the loss is their MSE.

The windows come standardised by their context's statistics (pretrain/data/series.py), so
series of any scale weigh alike and the loss is comparable to the naive forecast's, which
repeats the last context value: `naive_mse` is logged beside the loss as the bar a model
has to clear (TTM's pretraining loss is the MSE of scaled values too).
"""
from __future__ import annotations

import jax.numpy as jnp

from models.tsmixer import ttm_flops_per_example
from objectives import base


def mse(prediction, target):
  return jnp.mean(jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32)))


def naive_forecast(context, horizon: int):
  """The last context value repeated over the horizon: (B, L) -> (B, horizon)."""
  return jnp.repeat(context[:, -1:], horizon, axis=1)


@base.register("forecast")
class Forecast(base.Objective):
  models = ("ttm",)
  modality = "series"
  unit = "windows"

  def validate(self, config):
    d = config.data
    for key in ("context_len", "horizon"):
      if d[key] <= 0:
        raise ValueError(f"data.{key}={d[key]}: must be > 0")
    if config.model.patch_len > d.context_len:
      raise ValueError(f"model.patch_len={config.model.patch_len} exceeds data.context_len="
                       f"{d.context_len}: a window needs at least one patch")

  def loss_fn(self, params, batch, rng, *, model, config):
    context, target = batch["context"], batch["target"]
    prediction = model.bind(params)(context, batch["resolution"])
    naive = naive_forecast(context, target.shape[-1])
    return mse(prediction, target), {"naive_mse": mse(naive, target)}

  def units_per_example(self, config, info):
    return 1

  def forward_flops_per_example(self, config, info, model_cfg):
    return ttm_flops_per_example(model_cfg)
