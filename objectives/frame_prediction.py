"""Future-frame prediction (PredFormer, Tang et al. 2024, "PredFormer: Transformers Are
Effective Spatial-Temporal Predictive Learners").

A clip of `data.num_frames` frames is split in time: the first `objective.input_frames`
are the model's input, the rest the target. Pixels are scaled to [0, 1] and the loss is the
mean squared error over every pixel of the predicted future frames (the paper's training
loss; its reported MSE is the same error summed over a frame's pixels). PredFormer maps T
input frames to the T frames that follow, token (t, n) -> patch n of frame T + t; with fewer
target frames than input frames the first ones are scored. `copy_last_mse`, the error of
repeating the last input frame, is logged beside the loss: the bar a model has to clear.
"""
from __future__ import annotations

import jax.numpy as jnp

from models.predformer import predformer_flops_per_clip
from objectives import base
from objectives.forecast import mse
from objectives.mae import image_grid


def split_clip(video: jnp.ndarray, input_frames: int):
  """uint8 (B, T, H, W, C) -> (input, future) float32 in [0, 1], split at input_frames."""
  frames = video.astype(jnp.float32) / 255.0
  return frames[:, :input_frames], frames[:, input_frames:]


def clip_strips(rows: list[jnp.ndarray]) -> jnp.ndarray:
  """Per example, one strip of frames per entry of `rows` ((B, T_k, H, W, C) in [0, 1]),
  strips shorter than the longest padded with white -> one uint8 picture."""
  width = max(r.shape[1] for r in rows)
  padded = [jnp.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0), (0, 0), (0, 0)),
                    constant_values=1.0) for r in rows]
  stacked = jnp.stack(padded, 1)  # (B, K, width, H, W, C)
  strips = stacked.reshape(-1, *stacked.shape[2:])  # (B K, width, H, W, C)
  return image_grid([strips[:, k] for k in range(width)])


@base.register("frame_prediction")
class FramePrediction(base.Objective):
  models = ("predformer",)
  modality = "video"
  unit = "clips"

  def validate(self, config):
    t_in, total = config.objective.input_frames, config.data.num_frames
    if not (1 <= t_in < total and total - t_in <= t_in):
      raise ValueError(f"objective.input_frames={t_in}: must leave data.num_frames={total} - "
                       f"input_frames future frames, between 1 and input_frames (the model "
                       f"predicts as many frames as it sees)")
    patch, size = tuple(config.model.patch_size), config.data.frame_size
    if any(p < 1 or size % p for p in patch):
      raise ValueError(f"model.patch_size={patch} does not divide data.frame_size={size}")

  def predict(self, params, batch, *, model, config):
    """(input frames, true future frames, predicted future frames), float32 in [0, 1]
    scale, (B, T_k, H, W, C) each."""
    context, future = split_clip(batch["video"], config.objective.input_frames)
    pred = model.bind(params)(context)[:, :future.shape[1]]
    return context, future, pred

  def loss_fn(self, params, batch, rng, *, model, config):
    del rng
    context, future, pred = self.predict(params, batch, model=model, config=config)
    return mse(pred, future), {"copy_last_mse": mse(context[:, -1:], future)}

  def reconstructions(self, params, batch, rng, *, model, config):
    """Three strips per clip: input frames, true future, predicted future."""
    del rng
    context, future, pred = self.predict(params, batch, model=model, config=config)
    return {"reconstructions": clip_strips([context, future, pred])}

  def units_per_example(self, config, info):
    return 1

  def forward_flops_per_example(self, config, info, model_cfg):
    return predformer_flops_per_clip(model_cfg, config.objective.input_frames)
