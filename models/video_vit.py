"""Video ViTs built from `models.vit`: VideoMAE V2's dual-masked autoencoder and ViTok.

A video (B, T, H, W, C) is cut into tubes of (t, p, p) pixels by `patchify` with a 3D
patch, so the tube embedding is the ViT's patch embedding and the video ViT is the same
encoder over T/t * (H/p) * (W/p) tokens, with `PatchPositions`' per-axis sin-cos over the
(T/t, H/p, W/p) grid. Images are the same code with a 2D patch.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import Dense
from models.partitioning import constrain
from models.transformer import ACT, TransformerStack, stack_flops_per_token
from models.vit import MAE, PatchPositions, ViT, ViTConfig, vit_encoder_flops_per_image


class VideoMAE(MAE):
  """VideoMAE V2 (Wang et al. 2023): the MAE encoder on the visible tubes, and a decoder
  that sees the visible latents plus mask tokens at a chosen subset of the hidden tubes
  only (dual masking), not at every hidden tube. No new params over `MAE`."""

  def decode_subset(self, latent: jax.Array, keep_idx: jax.Array,
                    target_idx: jax.Array) -> jax.Array:
    """latent (B, prefix + Nk, D) of the tokens keep_idx (B, Nk); target_idx (B, K) the
    hidden tokens to reconstruct -> their predicted patches (B, K, P) float32."""
    x = self.dec_embed(latent)  # (B, prefix + Nk, Dd)
    prefix, visible = x[:, :self.cfg.num_prefix], x[:, self.cfg.num_prefix:]
    visible = visible + self.dec_pos(keep_idx).astype(x.dtype)
    b, k = target_idx.shape
    queries = jnp.broadcast_to(self.mask_token[...].astype(x.dtype), (b, k, x.shape[2]))
    queries = queries + self.dec_pos(target_idx).astype(x.dtype)  # (B, K, Dd)
    x = constrain(jnp.concatenate([prefix, visible, queries], axis=1), ACT)
    return self.dec_pred(self.decoder(x, mask=None)[:, -k:])


def videomae_flops_per_example(cfg: ViTConfig, num_visible: int, num_targets: int) -> float:
  """Forward FLOPs: the encoder on the visible tubes, the decoder (embed, stack, pixel head)
  on the visible latents plus the `num_targets` mask tokens."""
  dec = cfg.decoder_block
  tokens = cfg.num_prefix + num_visible + num_targets
  dec_embed = (cfg.num_prefix + num_visible) * 2 * cfg.d_model * dec.d_model
  decoder = tokens * stack_flops_per_token(dec, cfg.dec_layers, tokens)
  pred = num_targets * 2 * dec.d_model * cfg.patch_dim
  return vit_encoder_flops_per_image(cfg, num_visible) + dec_embed + decoder + pred


@dataclasses.dataclass(frozen=True)
class ViTokConfig(ViTConfig):
  """ViTok: the ViT encoder (d_model, num_layers, ...), a linear bottleneck to
  `latent_channels` per token, and a ViT decoder (the dec_* fields)."""
  latent_channels: int = 16

  def validate(self) -> None:
    super().validate()
    if self.latent_channels < 1:
      raise ValueError(f"latent_channels={self.latent_channels}: must be >= 1")

  @property
  def latent_floats(self) -> int:
    """E, the floats of one example's code (tokens x channels): the bottleneck ViTok
    scales."""
    return self.num_patches * self.latent_channels


class ViTok(nnx.Module):
  """ViTok (Hansen-Estruch et al. 2025): patches or tubes -> ViT encoder -> linear
  bottleneck to (N, latent_channels) -> linear up -> ViT decoder -> pixels per patch."""

  def __init__(self, cfg: ViTokConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    dec, std = cfg.decoder_block, cfg.init_std
    self.encoder = ViT(cfg, rngs=rngs)
    self.to_latent = Dense(cfg.d_model, cfg.latent_channels, ("embed", None), dtype=cfg.dtype,
                           init_std=std, rngs=rngs)
    self.from_latent = Dense(cfg.latent_channels, dec.d_model, (None, "embed"),
                             dtype=cfg.dtype, init_std=std, rngs=rngs)
    self.dec_pos = PatchPositions(cfg, dec.d_model, rngs=rngs)
    self.decoder = TransformerStack(dec, cfg.dec_layers, rngs=rngs)
    self.dec_pred = Dense(dec.d_model, cfg.patch_dim, ("embed", "patch"), dtype=cfg.dtype,
                          init_std=std, rngs=rngs, out_dtype=jnp.float32)

  def _every(self, x: jax.Array) -> jax.Array:
    return jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])

  def encode_tokens(self, patches: jax.Array) -> jax.Array:
    """patches (B, N, P) -> encoder tokens (B, N, D) (any cls token dropped)."""
    tokens = self.encoder.encode(self.encoder.embed(patches, self._every(patches)))
    return tokens[:, self.cfg.num_prefix:]

  def encode(self, patches: jax.Array) -> jax.Array:
    """patches (B, N, P) -> the code (B, N, latent_channels)."""
    return self.to_latent(self.encode_tokens(patches))

  def decode(self, latent: jax.Array) -> jax.Array:
    """The code (B, N, latent_channels) -> predicted patches (B, N, P) float32."""
    x = self.from_latent(latent) + self.dec_pos(self._every(latent)).astype(self.cfg.dtype)
    return self.dec_pred(self.decoder(constrain(x, ACT), mask=None))

  def __call__(self, patches: jax.Array) -> jax.Array:
    return self.decode(self.encode(patches))


def vitok_flops_per_example(cfg: ViTokConfig) -> float:
  """Forward FLOPs: encoder on every patch, bottleneck down and up, decoder, pixel head."""
  n, dec = cfg.num_patches, cfg.decoder_block
  bottleneck = n * 2 * cfg.latent_channels * (cfg.d_model + dec.d_model)
  decoder = n * stack_flops_per_token(dec, cfg.dec_layers, n)
  return (vit_encoder_flops_per_image(cfg, n) + bottleneck + decoder
          + n * 2 * dec.d_model * cfg.patch_dim)
