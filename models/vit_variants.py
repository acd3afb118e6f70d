"""MAE variants: a decoder that reads a second view, and a latent regressor.

`SiameseMAE` (CropMAE, Eymaël et al. 2024, "Efficient Image Pre-Training with Siamese
Cropped Masked Autoencoders", after SiamMAE, Gupta et al. 2023): one shared ViT encodes a
fully visible view and a heavily masked view; the decoder rebuilds the masked view from its
few visible latents plus mask tokens, each block self-attending within the masked view and
cross-attending to the visible view's tokens. Everything but the decoder blocks is MAE's,
so this is `MAE` with `build_decoder` swapped.

`ContextAutoencoder` (CAE, Chen et al. 2022, "Context Autoencoder for Self-Supervised
Representation Learning"): encoder on the visible patches; a latent regressor of
cross-attention blocks whose queries (a mask query plus each hidden patch's position) read
the visible latents and predict the hidden patches' latents; a decoder of self-attention
blocks over those predicted latents alone rebuilds the hidden patches. The decoder never
sees the visible latents, so the reconstruction has to go through the regressor's
predictions, which the objective also aligns with the encoder's own latents of the hidden
patches: the encoder alone carries the representation.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from models.encoder_decoder import CrossAttention, DecoderBlock
from models.layers import Dense, Mlp, normal_param
from models.partitioning import constrain
from models.transformer import (ACT, BlockConfig, TransformerStack, make_norm,
                                stack_flops_per_token)
from models.vit import MAE, PatchPositions, ViT, ViTConfig, vit_encoder_flops_per_image


class CrossDecoder(nnx.Module):
  """`num_layers` blocks of self-attention, cross-attention to a context, MLP (pre-LN with
  a final norm, like the encoder). CropMAE's blocks are post-LN cross -> MLP -> self; the
  order here is the encoder-decoder's, with the same parameters per block."""

  def __init__(self, cfg: BlockConfig, num_layers: int, *, rngs: nnx.Rngs):
    cfg.validate()
    if cfg.scan_layers or cfg.remat != "none":
      raise ValueError("the cross-attending decoder does not support scan_layers or remat")
    self.blocks = nnx.List([DecoderBlock(cfg, rngs=rngs) for _ in range(num_layers)])
    self.final_norm = make_norm(cfg) if cfg.norm == "pre" else None

  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    """x (B, L, D) attends itself and context (B, Lc, D), both without masks."""
    for block in self.blocks:
      x = block(x, context, mask=None, cross_mask=None, positions=None)
    return x if self.final_norm is None else constrain(self.final_norm(x), ACT)


class SiameseMAE(MAE):
  """Shared encoder for both views; the decoder of the masked view cross-attends to the
  visible view's (decoder-embedded) tokens."""

  def build_decoder(self, dec: BlockConfig, rngs: nnx.Rngs) -> nnx.Module:
    return CrossDecoder(dec, self.cfg.dec_layers, rngs=rngs)

  def decode(self, latent: jax.Array, keep_idx: jax.Array, num_patches: int, *,
             context: jax.Array) -> jax.Array:
    """latent (B, 1 + Nk, D) of the masked view, context (B, 1 + N, D): the visible view
    encoded -> predicted patches (B, N, P) float32 of the masked view."""
    x = self.decoder(self.decoder_inputs(latent, keep_idx, num_patches),
                     self.dec_embed(context))
    return self.dec_pred(x[:, self.cfg.num_prefix:])


def siamese_mae_flops_per_image(cfg: ViTConfig, keep: int) -> float:
  """Forward matmul FLOPs: the encoder on the whole visible view and on `keep` patches of
  the masked one, both embedded into the decoder, and the decoder on every patch of the
  masked view (self-attention as in `stack_flops_per_token`, plus per layer the cross
  attention's q/out projections, its k/v over the context and its scores)."""
  n, prefix = cfg.num_patches, cfg.num_prefix
  dec, tokens = cfg.decoder_block, n + prefix
  d = dec.d_model
  encoders = vit_encoder_flops_per_image(cfg, n) + vit_encoder_flops_per_image(cfg, keep)
  dec_embed = (tokens + keep + prefix) * 2 * cfg.d_model * d
  cross = cfg.dec_layers * (tokens * (4 * d * d + 4 * tokens * d) + tokens * 4 * d * d)
  decoder = tokens * stack_flops_per_token(dec, cfg.dec_layers, tokens) + cross
  return encoders + dec_embed + decoder + n * 2 * d * cfg.patch_dim


@dataclasses.dataclass(frozen=True)
class CAEConfig(ViTConfig):
  """ViT + CAE's regressor depth; the regressor and decoder are as wide as the encoder
  (they work in its latent space), with the decoder's heads and MLP width."""
  reg_layers: int = 4  # CAE §3 / Table 1 setting: 4 regressor and 4 decoder blocks

  def validate(self) -> None:
    super().validate()
    if self.dec_d_model != self.d_model:
      raise ValueError(f"CAE decodes in the encoder's latent space: dec_d_model="
                       f"{self.dec_d_model} must equal d_model={self.d_model}")
    if self.reg_layers < 1:
      raise ValueError(f"reg_layers={self.reg_layers}: must be >= 1")


class RegressorBlock(nnx.Module):
  """Pre-LN cross-attention from the mask queries to [visible latents; queries], then an
  MLP: the queries see the context and each other, the visible latents stay fixed."""

  def __init__(self, cfg: BlockConfig, *, rngs: nnx.Rngs):
    self.query_norm, self.context_norm, self.mlp_norm = (make_norm(cfg) for _ in range(3))
    self.attn = CrossAttention(cfg.d_model, cfg.num_heads, dtype=cfg.dtype,
                               init_std=cfg.init_std, rngs=rngs)
    self.mlp = Mlp(cfg.d_model, cfg.d_ff, cfg.activation, dtype=cfg.dtype,
                   init_std=cfg.init_std, rngs=rngs)

  def __call__(self, queries: jax.Array, visible: jax.Array) -> jax.Array:
    context = self.context_norm(jnp.concatenate([visible, queries], axis=1))
    x = queries + self.attn(self.query_norm(queries), context, mask=None)
    return constrain(x + self.mlp(self.mlp_norm(x)), ACT)


class ContextAutoencoder(nnx.Module):
  """Encoder, latent regressor and pixel decoder of CAE; masking is the caller's."""

  def __init__(self, cfg: CAEConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.encoder = ViT(cfg, rngs=rngs)
    block = cfg.encoder_block
    self.mask_query = normal_param(rngs, (1, 1, cfg.d_model), (None, None, "embed"),
                                   cfg.init_std)
    self.regressor = nnx.List([RegressorBlock(block, rngs=rngs)
                               for _ in range(cfg.reg_layers)])
    self.reg_norm = make_norm(block)
    self.dec_pos = PatchPositions(cfg, cfg.d_model, rngs=rngs)
    self.decoder = TransformerStack(cfg.decoder_block, cfg.dec_layers, rngs=rngs)
    self.dec_pred = Dense(cfg.d_model, cfg.patch_dim, ("embed", "patch"), dtype=cfg.dtype,
                          init_std=cfg.init_std, rngs=rngs, out_dtype=jnp.float32)

  def encode(self, patches: jax.Array, idx: jax.Array) -> jax.Array:
    """The patches at grid indices idx (B, n) -> latent (B, prefix + n, D)."""
    chosen = jnp.take_along_axis(patches, idx[..., None], axis=1)  # (B, n, P)
    return self.encoder.encode(self.encoder.embed(chosen, idx))

  def regress(self, latent: jax.Array, hidden_idx: jax.Array) -> jax.Array:
    """Visible latent (B, prefix + Nk, D) -> predicted latents (B, Nh, D) of the patches
    at hidden_idx (B, Nh)."""
    query = self.mask_query[...].astype(latent.dtype)
    x = query + self.encoder.pos(hidden_idx).astype(latent.dtype)  # (B, Nh, D)
    for block in self.regressor:
      x = block(x, latent)
    return constrain(self.reg_norm(x), ACT)

  def decode(self, predicted: jax.Array, hidden_idx: jax.Array) -> jax.Array:
    """Predicted latents (B, Nh, D) -> pixels (B, Nh, P) float32 of those patches."""
    x = predicted + self.dec_pos(hidden_idx).astype(predicted.dtype)
    return self.dec_pred(self.decoder(constrain(x, ACT), mask=None))


def cae_flops_per_image(cfg: CAEConfig, keep: int) -> float:
  """Forward matmul FLOPs: the encoder on the `keep` visible patches and (for the
  alignment target) on the N - keep hidden ones; per regressor layer the queries'
  q/out projections, k/v over [visible; queries], scores, MLP; the decoder and pixel head
  on the hidden patches."""
  n, d, prefix = cfg.num_patches, cfg.d_model, cfg.num_prefix
  hidden, context = n - keep, keep + prefix + n - keep
  encoders = vit_encoder_flops_per_image(cfg, keep) + vit_encoder_flops_per_image(cfg, hidden)
  per_layer = (hidden * (4 * d * d + 4 * context * d + 4 * d * cfg.d_ff)
               + context * 4 * d * d)
  decoder = hidden * stack_flops_per_token(cfg.decoder_block, cfg.dec_layers, hidden)
  return encoders + cfg.reg_layers * per_layer + decoder + hidden * 2 * d * cfg.patch_dim
