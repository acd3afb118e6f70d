"""Encoder-decoder transformer (T5, Raffel et al. 2020 §3.1.1).

The encoder is `TextTransformer`'s own embedding + `TransformerStack` (bidirectional within
each packed segment); the decoder blocks add cross-attention to the encoder output between
causal self-attention and the MLP. One token table embeds both sides and (tied) projects
the decoder output. Packed segment k of the decoder attends only to segment k of the encoder.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from models.attention import attention_mask, dot_product_attention
from models.layers import Dense, LearnedPositions, MultiHeadAttention
from models.partitioning import constrain
from models.transformer import (ACT, Block, BlockConfig, TextTransformer, TransformerConfig,
                                logits_flops_per_token, make_norm, relative_bias,
                                stack_flops_per_token)

HEADS = ("batch", "length", "act_heads", "act_kv")


@dataclasses.dataclass(frozen=True)
class EncoderDecoderConfig(TransformerConfig):
  """`num_layers` encoder blocks and `dec_layers` decoder blocks of the same width;
  `dec_embeddings`: the decoder has its own learned position table and embedding norm (as
  BART), else it shares the encoder's (T5)."""
  dec_layers: int = 0
  dec_embeddings: bool = False

  def validate(self) -> None:
    super().validate()
    if self.dec_layers <= 0:
      raise ValueError(f"dec_layers={self.dec_layers} must be positive")
    if self.scan_layers or self.remat != "none":
      # TransformerStack builds only `Block`s, so the decoder is a plain list for now.
      raise ValueError("the encoder-decoder does not support scan_layers or remat yet")
    if self.dec_embeddings and self.pos_emb != "learned":
      raise ValueError(f"dec_embeddings needs pos_emb='learned', got {self.pos_emb!r}")


class CrossAttention(MultiHeadAttention):
  """Queries from the decoder, keys/values from the encoder (separate q/k/v projections,
  no rotary: the two sides' positions are not comparable)."""

  def __call__(self, x: jax.Array, context: jax.Array, *, mask: jax.Array) -> jax.Array:
    q = constrain(self.query(x), HEADS)  # (B, Lq, H, D)
    k, v = (constrain(t, HEADS) for t in (self.key(context), self.value(context)))  # (B, Lk, H, D)
    return self.out(constrain(dot_product_attention(q, k, v, mask), HEADS))  # (B, Lq, D)


class DecoderBlock(Block):
  """Block with cross-attention between self-attention and the MLP (same pre/post-LN)."""

  def __init__(self, cfg: BlockConfig, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    self.cross_norm = make_norm(cfg)
    self.cross_attn = CrossAttention(cfg.d_model, cfg.num_heads, dtype=cfg.dtype,
                                     init_std=cfg.init_std, rngs=rngs, use_bias=cfg.use_bias)

  def __call__(self, x: jax.Array, context: jax.Array, *, mask, cross_mask,
               positions, bias=None) -> jax.Array:
    """bias: the self-attention's relative position bias (cross-attention has none, as
    in T5)."""
    x = constrain(x, ACT)  # (B, L, D)
    x = self._residual(x, self.attn_norm,
                       lambda h: self.attn(h, mask=mask, positions=positions, bias=bias))
    x = self._residual(x, self.cross_norm,
                       lambda h: self.cross_attn(h, context, mask=cross_mask))
    return constrain(self._residual(x, self.mlp_norm, self.mlp), ACT)

  def _residual(self, x, norm, branch):
    return norm(x + branch(x)) if self.post_norm else x + branch(norm(x))


class DecoderEmbeddings(nnx.Module):
  """The decoder's own position table (and embedding norm); the token table stays shared."""

  def __init__(self, cfg: EncoderDecoderConfig, *, rngs: nnx.Rngs):
    self.pos_embed = LearnedPositions(cfg.max_len, cfg.d_model, init_std=cfg.init_std,
                                      rngs=rngs)
    self.embed_norm = make_norm(cfg.block) if cfg.embed_norm else None

  def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
    """Token embeddings (B, L, D) float32 -> plus positions, normalised when embed_norm."""
    x = x + self.pos_embed(positions)
    return x if self.embed_norm is None else self.embed_norm(x)


class EncoderDecoder(TextTransformer):
  """`stack` is the encoder (so `init_from.subtree=stack` can load a BERT-style encoder)."""

  def __init__(self, cfg: EncoderDecoderConfig, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    self.dec_blocks = nnx.List([DecoderBlock(cfg.block, rngs=rngs)
                                for _ in range(cfg.dec_layers)])
    self.dec_norm = make_norm(cfg.block) if cfg.norm == "pre" else None
    self.dec_embeddings = DecoderEmbeddings(cfg, rngs=rngs) if cfg.dec_embeddings else None
    self.dec_rel_bias = relative_bias(cfg.block, False, rngs)  # T5: causal buckets

  def __call__(self, enc_tokens: jax.Array, dec_tokens: jax.Array, *,
               enc_segment_ids: jax.Array, dec_segment_ids: jax.Array,
               enc_positions: jax.Array, dec_positions: jax.Array) -> jax.Array:
    """enc_* (B, Le), dec_* (B, Ld); segment ids 0 = padding, and the same id on both sides
    names the same packed example -> decoder hidden (B, Ld, D)."""
    context = self.encode(enc_tokens, segment_ids=enc_segment_ids, positions=enc_positions)
    return self.decode(dec_tokens, context, segment_ids=dec_segment_ids,
                       positions=dec_positions, enc_segment_ids=enc_segment_ids)

  def encode(self, tokens: jax.Array, *, segment_ids: jax.Array,
             positions: jax.Array) -> jax.Array:
    """Encoder states (B, Le, D), bidirectional within each packed segment (E2S2 puts its
    encoder-side losses on them)."""
    mask = attention_mask("bidirectional", segment_ids=segment_ids)
    return self.stack(self.embed_tokens(tokens, positions), mask=mask, positions=positions)

  def decode(self, tokens: jax.Array, context: jax.Array, *, segment_ids: jax.Array,
             positions: jax.Array, enc_segment_ids: jax.Array) -> jax.Array:
    """Decoder states (B, Ld, D): causal self-attention, cross-attention to `context`."""
    self_mask = attention_mask("causal", segment_ids=segment_ids)
    cross_mask = attention_mask("bidirectional", segment_ids=segment_ids,
                                kv_segment_ids=enc_segment_ids)  # (B, 1, Ld, Le)
    if self.dec_embeddings is None:
      x = self.embed_tokens(tokens, positions)
    else:
      x = constrain(self.dec_embeddings(self.embed(tokens), positions).astype(self.cfg.dtype),
                    ACT)
    bias = None if self.dec_rel_bias is None else self.dec_rel_bias(positions, positions)
    for block in self.dec_blocks:
      x = block(x, context, mask=self_mask, cross_mask=cross_mask, positions=positions,
                bias=bias)
    return x if self.dec_norm is None else constrain(self.dec_norm(x), ACT)


def encoder_decoder_flops(cfg: EncoderDecoderConfig, *, enc_len: int, dec_len: int,
                          enc_attended: float, dec_attended: float) -> float:
  """Forward matmul FLOPs of one example with logits at every decoder position.

  Encoder and decoder self-attention + MLP as in `stack_flops_per_token`; cross-attention
  per decoder layer projects q and the output per decoder token (2 * 2 * D * D), k and v
  per encoder token (2 * 2 * D * D), and scores + mixing over the `enc_attended` keys
  (2 * 2 * A * D).
  """
  d = cfg.d_model
  cross = enc_len * 4 * d * d + dec_len * (4 * d * d + 4 * enc_attended * d)
  return (enc_len * stack_flops_per_token(cfg.block, cfg.num_layers, enc_attended)
          + dec_len * stack_flops_per_token(cfg.block, cfg.dec_layers, dec_attended)
          + cfg.dec_layers * cross + dec_len * logits_flops_per_token(cfg))


class TaggingEncoderDecoder(EncoderDecoder):
  """`EncoderDecoder` plus a per-token binary head on the encoder output (CodeT5's
  identifier tagging, Wang et al. 2021 §3.1: d_model + 1 params)."""

  def __init__(self, cfg: EncoderDecoderConfig, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    self.tag_head = Dense(cfg.d_model, 1, ("embed", None), dtype=cfg.dtype,
                          init_std=cfg.init_std, rngs=rngs, out_dtype=jnp.float32)

  def tag_logits(self, context: jax.Array) -> jax.Array:
    """Encoder hidden (B, Le, D) -> tagging logits (B, Le) float32."""
    return self.tag_head(context)[..., 0]
