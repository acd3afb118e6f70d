"""VideoMAE V2 (Wang et al. 2023, "VideoMAE V2: Scaling Video Masked Autoencoders with
Dual Masking").

A video is cut into (t, p, p) tubes. Tube masking (VideoMAE, Tong et al. 2022): one random
set of spatial positions is hidden in every time slice (`objective.mask_ratio`, 90%), so a
hidden tube cannot be copied from the same place in a neighbouring frame. Dual masking
(V2 §3.2): the decoder does not rebuild every hidden tube, only `1 - decoder_mask_ratio` of
them; it sees the visible latents plus mask tokens at those, and the loss is the MSE on
them alone, against per-patch normalised pixels (each tube's pixels standardised per
channel, VideoMAE's target). That cuts the decoder's cost about in half at 50%.

Which hidden tubes the decoder gets (`objective.decoder_masking`):
  running_cell  V2's choice (Table 1): a 2x2 cell of spatial positions, of which
                `4 * (1 - decoder_mask_ratio)` are decoder-visible, the pattern shifted by
                one position per time slice from a random start (MAR's running cell), so
                every position is rebuilt in some slices and the kept tokens cover the
                video evenly. The decoder targets are the hidden tubes the cell shows.
  random        a uniform random subset of the hidden tubes.
The number of targets is static, K = M - int(decoder_mask_ratio * M) of the M hidden
tubes. With the paper's setting (50%, and a multiple of 4 time slices: 16 frames in
tubelets of 2) the running cell shows exactly K hidden tubes and they are the targets;
otherwise the cell's hidden tubes come first and the set is completed (or cut) at random
to K, so shapes never depend on the draw.

Masking happens on device from the step rng, like MAE's.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from models.video_vit import videomae_flops_per_example
from models.vit import patchify, unpatchify
from objectives import base
from objectives.mae import HIDDEN_GREY, denormalize_patches, image_grid, normalize_patches

DECODER_MASKINGS = ("running_cell", "random")
PICTURE_FRAMES = 4  # frames of each video shown in the reconstruction pictures


def video_pixels(batch) -> jax.Array:
  """uint8 videos (B, T, H, W, C) -> float32 in [0, 1]."""
  return batch["video"].astype(jnp.float32) / 255.0


def tube_keep(rng: jax.Array, batch: int, grid: tuple[int, ...], mask_ratio: float):
  """(keep_idx (B, T' * Sk), hidden (B, N) with 1 = hidden): per video one random set of
  Sk = S - int(mask_ratio * S) of the S spatial positions is kept in all T' time slices
  (VideoMAE's TubeMaskingGenerator count). Token n is (slice n // S, position n % S), the
  row-major order of `patchify` over the (T', H', W') grid."""
  slices, spatial = grid[0], math.prod(grid[1:])
  keep = spatial - int(mask_ratio * spatial)
  kept = jnp.argsort(jax.random.uniform(rng, (batch, spatial)), axis=1)[:, :keep]
  keep_idx = (jnp.arange(slices)[None, :, None] * spatial + kept[:, None, :])
  keep_idx = keep_idx.reshape(batch, slices * keep)
  hidden = jnp.ones((batch, slices * spatial)).at[jnp.arange(batch)[:, None], keep_idx].set(0.0)
  return keep_idx, hidden


def running_cell(offset: jax.Array, grid: tuple[int, ...], decoder_mask_ratio: float
                 ) -> jax.Array:
  """(B, N) bool: the tokens the running cell shows the decoder. Spatial position (h, w)
  sits at j = 2 (h mod 2) + (w mod 2) of its 2x2 cell; at time slice s it is shown when
  (j + offset + s) mod 4 >= 4 * decoder_mask_ratio, offset (B,) in [0, 4)."""
  slices, height, width = grid
  s, h, w = np.meshgrid(np.arange(slices), np.arange(height), np.arange(width), indexing="ij")
  j = (2 * (h % 2) + (w % 2) + s).reshape(-1)  # (N,)
  hidden_per_cell = int(round(4 * decoder_mask_ratio))
  return (j[None, :] + offset[:, None]) % 4 >= hidden_per_cell


def num_targets(num_hidden: int, decoder_mask_ratio: float) -> int:
  """K, the hidden tubes the decoder rebuilds (all of them at decoder_mask_ratio 0)."""
  return num_hidden - int(decoder_mask_ratio * num_hidden)


def decoder_targets(rng: jax.Array, hidden: jax.Array, grid: tuple[int, ...],
                    decoder_mask_ratio: float, kind: str) -> jax.Array:
  """(B, N) token indices, the decoder's targets first: take the first K (<= hidden
  count). Ranked by a score: hidden tokens the running cell shows in [0, 1), other hidden
  tokens in [1, 2), visible tokens in [2, 3), uniformly random within each band."""
  noise_rng, offset_rng = jax.random.split(rng)
  score = jax.random.uniform(noise_rng, hidden.shape) + 2.0 * (1.0 - hidden)
  if kind == "running_cell":
    offset = jax.random.randint(offset_rng, hidden.shape[:1], 0, 4)
    score = score + 1.0 - running_cell(offset, grid, decoder_mask_ratio)
  return jnp.argsort(score, axis=1)


def _per_channel(fn, patches: jax.Array, channels: int, *args) -> jax.Array:
  """Applies a per-patch statistic function (last axis) to each channel of (B, K, P)
  patches flattened as (*tube, C), as VideoMAE's target standardises each channel."""
  b, k, p = patches.shape
  split = lambda x: x.reshape(b, k, p // channels, channels).swapaxes(-1, -2)
  out = fn(split(patches), *(split(a) for a in args))
  return out.swapaxes(-1, -2).reshape(b, k, p)


def gather_tokens(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x (B, N, ...) at idx (B, K) -> (B, K, ...)."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def sizes(grid: tuple[int, ...], mask_ratio: float, decoder_mask_ratio: float
          ) -> tuple[int, int]:
  """(visible tubes, decoder targets) per video."""
  spatial = math.prod(grid[1:])
  visible = grid[0] * (spatial - int(mask_ratio * spatial))
  return visible, num_targets(math.prod(grid) - visible, decoder_mask_ratio)


@base.register("videomae")
class VideoMAEV2(base.Objective):
  models = ("videomae",)
  modality = "video"
  unit = "videos"

  def validate(self, config):
    o = config.objective
    if not 0 < o.mask_ratio < 1:
      raise ValueError(f"objective.mask_ratio={o.mask_ratio}: must be in (0, 1)")
    if o.decoder_masking not in DECODER_MASKINGS:
      raise ValueError(f"objective.decoder_masking={o.decoder_masking!r}; valid: "
                       f"{', '.join(DECODER_MASKINGS)}")
    if not 0 <= o.decoder_mask_ratio < 1:
      raise ValueError(f"objective.decoder_mask_ratio={o.decoder_mask_ratio}: must be in "
                       "[0, 1) (0 = the decoder rebuilds every hidden tube, VideoMAE v1)")
    if o.decoder_masking == "running_cell" and (4 * o.decoder_mask_ratio) % 1:
      raise ValueError(f"objective.decoder_mask_ratio={o.decoder_mask_ratio}: the running "
                       "cell hides whole positions of a 2x2 cell; valid: 0, 0.25, 0.5, 0.75")

  def _forward(self, net, batch, rng, config, *, every_hidden: bool = False):
    """(video (B, T, H, W, C), tubes (B, N, P), hidden (B, N), target_idx (B, K),
    predicted target tubes (B, K, P)); `every_hidden`: K = all hidden tubes."""
    o, cfg = config.objective, net.cfg
    video = video_pixels(batch)
    patches = patchify(video, cfg.patch_size)
    mask_rng, decoder_rng = jax.random.split(jax.random.wrap_key_data(rng))
    keep_idx, hidden = tube_keep(mask_rng, video.shape[0], cfg.grid, o.mask_ratio)
    visible, k = sizes(cfg.grid, o.mask_ratio, o.decoder_mask_ratio)
    k = cfg.num_patches - visible if every_hidden else k
    target_idx = decoder_targets(decoder_rng, hidden, cfg.grid, o.decoder_mask_ratio,
                                 o.decoder_masking)[:, :k]
    pred = net.decode_subset(net.encode(patches, keep_idx), keep_idx, target_idx)
    return video, patches, hidden, target_idx, pred

  def loss_fn(self, params, batch, rng, *, model, config):
    net = model.bind(params)
    _, patches, _, target_idx, pred = self._forward(net, batch, rng, config)
    target = gather_tokens(patches, target_idx)
    if config.objective.norm_pix_loss:
      target = _per_channel(normalize_patches, target, net.cfg.channels)
    return jnp.mean(jnp.square(pred - target)), {}

  def reconstructions(self, params, batch, rng, *, model, config):
    """Per video, a few frames: the original, it tube-masked (hidden tubes grey), and the
    visible tubes with every hidden tube as the decoder rebuilds it."""
    net = model.bind(params)
    cfg = net.cfg
    video, patches, hidden, target_idx, pred = self._forward(net, batch, rng, config,
                                                             every_hidden=True)
    if config.objective.norm_pix_loss:
      pred = _per_channel(denormalize_patches, pred, cfg.channels,
                          gather_tokens(patches, target_idx))
    rows = jnp.arange(patches.shape[0])[:, None]
    rebuilt = patches.at[rows, target_idx].set(pred)
    masked = jnp.where(hidden[..., None] > 0, HIDDEN_GREY, patches)
    return {"reconstructions": video_grid(
        [video, *(unpatchify(x, cfg.patch_size, video.shape[1:-1], cfg.channels)
                  for x in (masked, rebuilt))])}

  def features(self, params, batch, *, model, config):
    """The encoder on every tube (no masking), mean-pooled."""
    net = model.bind(params)
    patches = patchify(video_pixels(batch), net.cfg.patch_size)
    every = jnp.broadcast_to(jnp.arange(patches.shape[1]), patches.shape[:2])
    tokens = net.encode(patches, every)[:, net.cfg.num_prefix:]
    return base.mean_pool(tokens, jnp.ones(tokens.shape[:2], bool))

  def units_per_example(self, config, info):
    return 1

  def forward_flops_per_example(self, config, info, model_cfg):
    o = config.objective
    return videomae_flops_per_example(
        model_cfg, *sizes(model_cfg.grid, o.mask_ratio, o.decoder_mask_ratio))


def video_grid(videos: list[jax.Array]) -> jax.Array:
  """Videos (B, T, H, W, C) in [0, 1] -> one uint8 picture: row i is example i, and each
  video contributes up to PICTURE_FRAMES evenly spaced frames, side by side."""
  frames = videos[0].shape[1]
  picked = np.unique(np.linspace(0, frames - 1, min(frames, PICTURE_FRAMES)).round()).astype(int)
  return image_grid([v[:, t] for v in videos for t in picked])
