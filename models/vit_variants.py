"""MAE variants whose decoder reads a second token sequence.

`SiameseMAE` (CropMAE, Eymaël et al. 2024, "Efficient Image Pre-Training with Siamese
Cropped Masked Autoencoders", after SiamMAE, Gupta et al. 2023): one shared ViT encodes a
fully visible view and a heavily masked view; the decoder rebuilds the masked view from its
few visible latents plus mask tokens, each block self-attending within the masked view and
cross-attending to the visible view's tokens. Everything but the decoder blocks is MAE's,
so this is `MAE` with `build_decoder` swapped.
"""
from __future__ import annotations

import jax
from flax import nnx

from models.encoder_decoder import DecoderBlock
from models.partitioning import constrain
from models.transformer import ACT, BlockConfig, make_norm, stack_flops_per_token
from models.vit import MAE, ViTConfig, vit_encoder_flops_per_image


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
