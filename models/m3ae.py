"""Multi-modal masked autoencoder (M3AE, Chen et al. 2022, "Multi-Modal Masked Autoencoders
for Medical Vision-and-Language Pre-Training", MICCAI 2022), single-stream.

One transformer reads the class token, the visible image patches and the (BERT-masked)
caption together, each modality with its own learned type embedding (image positions sin-cos
on the grid, text positions learned). M3AE's three designs:
  * per-modality masking: most patches are removed (MAE), a few tokens are [MASK]ed (BERT);
  * reconstruction from different depths: the image decoder reads the stream after
    `image_layer` blocks (the authors' mim_layer), the text head after the last block;
  * different decoders: a transformer (MAE's, inherited from `models.vit.MAE`) for pixels and
    an MLP (BERT's MLM head: dense, GELU, LayerNorm, tied output embedding) for tokens.
The stream is split at `image_layer` into two pre-LN stacks; the lower one's final norm is
the normed state both the image decoder and the upper stack read (as the authors' post-LN
fusion layers hand over normed states).

Single-stream (one stack over both modalities) replaces the paper's separate ViT and RoBERTa
encoders joined by co-attention layers: configs/m3ae.py lists it in NOT_IMPLEMENTED.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from models.attention import attention_mask
from models.layers import Dense, Embed, LearnedPositions, const_param, gelu, normal_param
from models.partitioning import constrain
from models.transformer import ACT, TransformerStack, make_norm, stack_flops_per_token
from models.vit import MAE, ViTConfig, mae_flops_per_image

IMAGE, TEXT = 0, 1  # rows of the type embedding


@dataclasses.dataclass(frozen=True)
class M3AEConfig(ViTConfig):
  vocab_size: int = 0  # padded
  text_len: int = 0
  image_layer: int = 0  # blocks before the image decoder reads the stream (1..num_layers)

  def validate(self) -> None:
    super().validate()
    if self.vocab_size <= 0 or self.text_len <= 0:
      raise ValueError(f"vocab_size={self.vocab_size}, text_len={self.text_len}: must be > 0")
    if not 1 <= self.image_layer <= self.num_layers:
      raise ValueError(f"image_layer={self.image_layer}: must be in [1, num_layers="
                       f"{self.num_layers}]")


class M3AE(MAE):
  """MAE (image decoder and the lower `image_layer` blocks as `encoder`) + caption
  embeddings, type embeddings, the upper blocks and the MLM head."""

  def __init__(self, cfg: M3AEConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    super().__init__(dataclasses.replace(cfg, num_layers=cfg.image_layer), rngs=rngs)
    self.cfg = cfg
    std, block = cfg.init_std, cfg.encoder_block
    self.text_embed = Embed(cfg.vocab_size, cfg.d_model, init_std=std, rngs=rngs)
    self.text_pos = LearnedPositions(cfg.text_len, cfg.d_model, init_std=std, rngs=rngs)
    self.type_embed = normal_param(rngs, (2, cfg.d_model), (None, "embed"), std)
    upper = cfg.num_layers - cfg.image_layer
    self.upper = TransformerStack(block, upper, rngs=rngs) if upper else None
    self.head_dense = Dense(cfg.d_model, cfg.d_model, ("embed", "mlp"), dtype=cfg.dtype,
                            init_std=std, rngs=rngs)
    self.head_norm = make_norm(block)
    self.head_bias = const_param(cfg.vocab_size, ("vocab",), 0.0)

  def encode_pair(self, patches: jax.Array, keep_idx: jax.Array, tokens: jax.Array):
    """patches (B, N, P), keep_idx (B, Nk), tokens (B, T) (masked, 0 = padding) ->
    (image latent (B, 1 + Nk, D) after `image_layer` blocks, text states (B, T, D) after all)."""
    types = self.type_embed[...].astype(self.cfg.dtype)
    visible = jnp.take_along_axis(patches, keep_idx[..., None], axis=1)
    image = self.encoder.embed(visible, keep_idx) + types[IMAGE]
    cls = jnp.broadcast_to(self.encoder.cls_token[...].astype(image.dtype),
                           (image.shape[0], 1, image.shape[2]))
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    text = (self.text_embed(tokens) + self.text_pos(positions)).astype(self.cfg.dtype)
    x = constrain(jnp.concatenate([cls, image, text + types[TEXT]], axis=1), ACT)
    prefix = 1 + keep_idx.shape[1]
    valid = jnp.concatenate([jnp.ones((tokens.shape[0], prefix), jnp.int32),
                             (tokens != 0).astype(jnp.int32)], axis=1)
    mask = attention_mask("bidirectional", segment_ids=valid)  # padding is never a key
    x = self.encoder.stack(x, mask=mask)
    text_states = x[:, prefix:] if self.upper is None else self.upper(x, mask=mask)[:, prefix:]
    return x[:, :prefix], text_states

  def text_logits(self, states: jax.Array) -> jax.Array:
    """The MLP head: (..., D) -> (..., vocab) float32, output embedding tied to the input."""
    h = self.head_norm(gelu(self.head_dense(states), self.cfg.activation))
    return self.text_embed.attend(h, self.cfg.dtype) + self.head_bias[...]


def m3ae_flops_per_example(cfg: M3AEConfig, image_mask_ratio: float,
                           text_predictions: int) -> float:
  """Forward matmul FLOPs: MAE's (encoder on the visible patches, decoder on all) with the
  caption's tokens added to every block's sequence, plus the MLM head at the predicted slots."""
  visible = int(cfg.num_patches * (1 - image_mask_ratio))
  tokens = 1 + visible + cfg.text_len
  lower = stack_flops_per_token(cfg.encoder_block, cfg.image_layer, tokens)
  upper = stack_flops_per_token(cfg.encoder_block, cfg.num_layers - cfg.image_layer, tokens)
  image_only = (1 + visible) * stack_flops_per_token(cfg.encoder_block, cfg.image_layer,
                                                     1 + visible)
  mae = mae_flops_per_image(dataclasses.replace(cfg, num_layers=cfg.image_layer),
                            image_mask_ratio)
  head = text_predictions * 2 * cfg.d_model * (cfg.d_model + cfg.vocab_size)
  return mae - image_only + tokens * (lower + upper) + head
