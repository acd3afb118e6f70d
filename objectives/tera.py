"""TERA (Liu, Li and Lee 2021, "TERA: Self-Supervised Learning of Transformer Encoder
Representation for Speech", IEEE/ACM TASLP).

A transformer over log-mel frames (`models.audio.FrameTransformer`) rebuilds the clean
frames of a clip from an altered copy. Three alterations, drawn per clip on device from the
step rng (fresh every step, static shapes):

  time: floor(objective.time_mask_proportion * frames / objective.time_mask_width) blocks
    of `time_mask_width` consecutive frames at uniform random starts (they may overlap);
    per clip, like BERT, the blocks are zeroed with probability 0.8, replaced by the frames
    of another place of the same clip (a random cyclic shift) with 0.1, left as they are
    with 0.1.
  frequency: one band of consecutive mel bins, width uniform in
    [0, objective.freq_mask_max_width], at a uniform random start, zeroed in every frame.
  magnitude: with probability objective.noise_proportion, Gaussian noise of std
    objective.noise_std added to every value of the clip.

(Zero is the feature mean: the clips are standardised.) The loss is TERA's L1 between the
predicted and clean frames on the altered positions only: the time blocks' frames (all
bins, whatever their 80/10/10 fate), the frequency band (all frames), and every position of
a noised clip.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from models.audio import frame_transformer_flops_per_example
from objectives import base
from pretrain.data import audio
from objectives.ssast import spectrogram_columns

ZERO, REPLACE = 0.8, 0.1  # fates of the time blocks; the rest stay unchanged


def num_time_blocks(frames: int, proportion: float, width: int) -> int:
  return int(proportion * frames / width)


def alter(rng: jax.Array, spec: jax.Array, obj) -> tuple[jax.Array, jax.Array]:
  """spec (B, T, F) -> (altered spec (B, T, F), altered positions (B, T, F) bool)."""
  b, t, f = spec.shape
  k_start, k_fate, k_shift, k_width, k_band, k_noisy, k_noise = jax.random.split(rng, 7)
  width = obj.time_mask_width
  blocks = num_time_blocks(t, obj.time_mask_proportion, width)
  frame = jnp.arange(t)
  starts = jax.random.randint(k_start, (b, blocks, 1), 0, t - width + 1)
  in_block = ((frame >= starts) & (frame < starts + width)).any(1)  # (B, T)
  fate = jax.random.uniform(k_fate, (b, 1))
  shift = jax.random.randint(k_shift, (b, 1), 1, t)
  elsewhere = jnp.take_along_axis(spec, ((frame + shift) % t)[..., None], axis=1)
  x = jnp.where((in_block & (fate < ZERO))[..., None], 0.0, spec)
  x = jnp.where((in_block & (fate >= ZERO) & (fate < ZERO + REPLACE))[..., None], elsewhere, x)
  band_width = jax.random.randint(k_width, (b, 1), 0, obj.freq_mask_max_width + 1)
  band_start = jax.random.randint(k_band, (b, 1), 0, f - band_width + 1)
  mel = jnp.arange(f)
  in_band = (mel >= band_start) & (mel < band_start + band_width)  # (B, F)
  x = jnp.where(in_band[:, None, :], 0.0, x)
  noisy = jax.random.uniform(k_noisy, (b, 1, 1)) < obj.noise_proportion
  x = x + jnp.where(noisy, obj.noise_std * jax.random.normal(k_noise, spec.shape), 0.0)
  altered = in_block[:, :, None] | in_band[:, None, :] | noisy
  return x.astype(spec.dtype), altered


def masked_l1(pred: jax.Array, target: jax.Array, altered: jax.Array) -> jax.Array:
  """Mean |pred - target| over the altered positions."""
  error = jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32))
  return base.weighted_mean(error, altered.astype(jnp.float32))


@base.register("tera")
class TERA(base.Objective):
  models = ("frame_transformer",)
  modality = "audio"
  unit = "clips"

  def validate(self, config):
    audio.validate(config.data)
    obj, frames, bins = config.objective, config.data.clip_frames, config.data.mel_bins
    if not 1 <= obj.time_mask_width <= frames:
      raise ValueError(f"objective.time_mask_width={obj.time_mask_width}: must be in "
                       f"[1, data.clip_frames={frames}]")
    if not 0 <= obj.time_mask_proportion <= 1:
      raise ValueError(f"objective.time_mask_proportion={obj.time_mask_proportion}: must be "
                       "in [0, 1]")
    if not 0 <= obj.freq_mask_max_width < bins:
      raise ValueError(f"objective.freq_mask_max_width={obj.freq_mask_max_width}: must be "
                       f"in [0, data.mel_bins={bins})")
    if not 0 <= obj.noise_proportion <= 1:
      raise ValueError(f"objective.noise_proportion={obj.noise_proportion}: must be in [0, 1]")
    if obj.noise_std < 0:
      raise ValueError(f"objective.noise_std={obj.noise_std}: must be >= 0")

  def _forward(self, net, spec, rng, config):
    altered, where = alter(jax.random.wrap_key_data(rng), spec, config.objective)
    return altered, where, net.reconstruct(net(altered))

  def loss_fn(self, params, batch, rng, *, model, config):
    spec = batch["spectrogram"]
    _, where, pred = self._forward(model.bind(params), spec, rng, config)
    return masked_l1(pred, spec, where), {
        "altered_fraction": where.astype(jnp.float32).mean()}

  def reconstructions(self, params, batch, rng, *, model, config):
    """Per clip: the clean spectrogram, it altered, the model's frames."""
    spec = batch["spectrogram"]
    altered, _, pred = self._forward(model.bind(params), spec, rng, config)
    return {"reconstructions": spectrogram_columns([spec, altered, pred], spec)}

  def features(self, params, batch, *, model, config):
    """The encoder on the clean clip, mean-pooled over frames."""
    hidden = model.bind(params)(batch["spectrogram"])
    return base.mean_pool(hidden, jnp.ones(hidden.shape[:2], bool))

  def units_per_example(self, config, info):
    return 1

  def forward_flops_per_example(self, config, info, model_cfg):
    return frame_transformer_flops_per_example(model_cfg, info.audio_shape[0])
