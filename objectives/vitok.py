"""ViTok (Hansen-Estruch et al. 2025, "Learnings from Scaling Visual Tokenizers for
Reconstruction and Generation"): a ViT auto-encoder trained to reconstruct its input, the
visual tokenizer a latent diffusion model would then generate in.

Images are cut into p x p patches, videos into t x p x p tubelets (the same tube embedding
as VideoMAE's); a ViT encoder reads every patch, a linear bottleneck maps each token to
`model.latent_channels` floats (the code: N tokens x c channels, E = N * c floats, the
bottleneck the paper finds governs reconstruction: its Finding 1 sweeps p and c), a
linear map lifts the code to the decoder's width, and a larger ViT decoder predicts every
patch's pixels. Loss: `objective.recon_loss`, L1 or L2 between predicted and true pixels
(the paper's stage 1 without its perceptual term).

Two registrations, one per modality: `vitok` on images (batch["image"], float [0, 1]) and
`vitok_video` on videos (batch["video"], uint8).
"""
from __future__ import annotations

import jax.numpy as jnp

from models.video_vit import vitok_flops_per_example
from models.vit import patchify, unpatchify
from objectives import base
from objectives.mae import image_grid
from objectives.videomae import video_grid, video_pixels

RECON_LOSSES = ("l1", "l2")


def reconstruction_loss(pred: jnp.ndarray, target: jnp.ndarray, kind: str) -> jnp.ndarray:
  """Mean over every pixel of |pred - target| (l1) or (pred - target)^2 (l2)."""
  diff = pred.astype(jnp.float32) - target
  return jnp.mean(jnp.abs(diff) if kind == "l1" else jnp.square(diff))


@base.register("vitok")
class ViTokObjective(base.Objective):
  models = ("vitok",)
  modality = "image"
  unit = "images"

  def pixels(self, batch) -> jnp.ndarray:
    """The batch's inputs as float32 in [0, 1], (B, *spatial, C)."""
    return batch["image"]

  def validate(self, config):
    kind = config.objective.recon_loss
    if kind not in RECON_LOSSES:
      raise ValueError(f"objective.recon_loss={kind!r}; valid: {', '.join(RECON_LOSSES)}")

  def _reconstruct(self, net, batch):
    """(input (B, *S, C), its patches (B, N, P), predicted patches (B, N, P))."""
    x = self.pixels(batch)
    patches = patchify(x, net.cfg.patch_size)
    return x, patches, net(patches)

  def loss_fn(self, params, batch, rng, *, model, config):
    _, patches, pred = self._reconstruct(model.bind(params), batch)
    return reconstruction_loss(pred, patches, config.objective.recon_loss), {}

  def reconstructions(self, params, batch, rng, *, model, config):
    """Per example: the input, then its reconstruction through the code."""
    net = model.bind(params)
    x, _, pred = self._reconstruct(net, batch)
    rebuilt = unpatchify(pred, net.cfg.patch_size, x.shape[1:-1], x.shape[-1])
    return {"reconstructions": self.grid([x, rebuilt])}

  def grid(self, pictures):
    return image_grid(pictures)

  def features(self, params, batch, *, model, config):
    """The encoder's tokens (before the bottleneck), mean-pooled."""
    net = model.bind(params)
    tokens = net.encode_tokens(patchify(self.pixels(batch), net.cfg.patch_size))
    return base.mean_pool(tokens, jnp.ones(tokens.shape[:2], bool))

  def units_per_example(self, config, info):
    return 1

  def forward_flops_per_example(self, config, info, model_cfg):
    return vitok_flops_per_example(model_cfg)


@base.register("vitok_video")
class ViTokVideo(ViTokObjective):
  modality = "video"
  unit = "videos"

  def pixels(self, batch):
    return video_pixels(batch)

  def grid(self, pictures):
    return video_grid(pictures)
