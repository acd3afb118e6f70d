"""Causal decoders that predict several future tokens at every position.

`MultiTokenLM` (Gloeckle et al. 2024, "Better & Faster Large Language Models via
Multi-token Prediction", §2): a shared causal trunk, then N independent heads, each one
transformer block, all projected by the one shared unembedding; head k predicts token t+k.
The trunk is `TextTransformer`'s own stack and each head a one-block `TransformerStack`
(pre-LN: with its own final norm), so a head is exactly one more layer of the trunk.

`FutureTokenLM` (Walker 2024, "Future Token Prediction -- Causal Language Modelling with
Per-Token Semantic State Vector for Multi-Token Prediction"): a causal transformer encoder
whose top state h_t, instead of feeding a language head, is linearly and expansively
projected to a pseudo-sequence of N vectors; a small decoder (T5-style `DecoderBlock`s:
causal self-attention, cross-attention, MLP) cross-attends only to that pseudo-sequence and,
teacher-forced on tokens t..t+N-1, predicts t+1..t+N. The decoder thus runs on B x L
independent length-N sequences: h_t is the decoder's only view of the past, which is what
forces it to summarise the coming text.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from models.attention import attention_mask
from models.encoder_decoder import DecoderBlock, EncoderDecoderConfig
from models.layers import Dense, LearnedPositions
from models.partitioning import constrain
from models.transformer import (ACT, TextTransformer, TransformerConfig, TransformerStack,
                                make_norm)


def _check_num_future(num_future: int) -> None:
  if num_future < 1:
    raise ValueError(f"num_future={num_future} must be >= 1")


@dataclasses.dataclass(frozen=True)
class MultiTokenConfig(TransformerConfig):
  """`num_layers` trunk blocks plus `num_future` one-block heads."""
  num_future: int = 0

  def validate(self) -> None:
    super().validate()
    _check_num_future(self.num_future)


class MultiTokenLM(TextTransformer):
  """`__call__` gives the trunk's states; `future_hidden` the heads' (N, B, L, D)."""

  def __init__(self, cfg: MultiTokenConfig, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    self.heads = nnx.List([TransformerStack(cfg.block, 1, rngs=rngs)
                           for _ in range(cfg.num_future)])

  def future_hidden(self, trunk: jax.Array, *, mask: jax.Array,
                    positions: jax.Array) -> jax.Array:
    """trunk (B, L, D) -> (N, B, L, D): head k-1's states, which predict token t+k."""
    return jnp.stack([head(trunk, mask=mask, positions=positions) for head in self.heads])


@dataclasses.dataclass(frozen=True)
class FutureTokenConfig(EncoderDecoderConfig):
  """`num_layers` encoder blocks, `dec_layers` decoder blocks, `num_future` = N."""
  num_future: int = 0

  def validate(self) -> None:
    super().validate()
    _check_num_future(self.num_future)


class FutureTokenLM(TextTransformer):
  """`__call__` gives the encoder's per-token states; `decode` the decoder's."""

  def __init__(self, cfg: FutureTokenConfig, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    n, d = cfg.num_future, cfg.d_model
    self.to_pseudo = Dense(d, (n, d), ("embed", None, "mlp"), dtype=cfg.dtype,
                           init_std=cfg.init_std, rngs=rngs)
    self.dec_pos_embed = LearnedPositions(n, d, init_std=cfg.init_std, rngs=rngs)
    self.dec_blocks = nnx.List([DecoderBlock(cfg.block, rngs=rngs)
                                for _ in range(cfg.dec_layers)])
    self.dec_norm = make_norm(cfg.block) if cfg.norm == "pre" else None

  def decode(self, hidden: jax.Array, dec_tokens: jax.Array) -> jax.Array:
    """hidden (B, L, D) encoder states, dec_tokens (B, L, N) the teacher-forced inputs
    (tokens t..t+N-1) -> (B, L, N, D) decoder states predicting tokens t+1..t+N."""
    b, length, n = dec_tokens.shape
    context = self.to_pseudo(hidden).reshape(b * length, n, -1)  # (B*L, N, D) pseudo-sequence
    steps = jnp.broadcast_to(jnp.arange(n), (b * length, n))
    x = self.embed(dec_tokens.reshape(b * length, n)) + self.dec_pos_embed(steps)
    x = constrain(x.astype(self.cfg.dtype), ACT)  # (B*L, N, D)
    mask = attention_mask("causal", length=n)  # (1, 1, N, N); every row is one position t
    for block in self.dec_blocks:
      x = block(x, context, mask=mask, cross_mask=None, positions=steps)
    if self.dec_norm is not None:
      x = self.dec_norm(x)
    return x.reshape(b, length, n, -1)
