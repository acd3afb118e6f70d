"""DrBERT / BPDec (Liang & Liang 2024, "DrBERT: Unveiling the Potential of Masked Language
Modeling Decoder in BERT pretraining"): a BERT encoder whose masked-LM head gets a stronger
decoder, transformer blocks between the encoder and the output layer, used only in
pretraining.

The encoder is an unchanged `TextTransformer`, under params "encoder"; the decoder blocks are
a separate `TransformerStack` under "mlm_decoder". `encoder_params` is the export: a plain
BERT param tree that fine-tuning and serving load as they would any BERT, so the decoder
costs nothing after pretraining.
"""
from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from models.transformer import TextTransformer, TransformerConfig, TransformerStack


@dataclasses.dataclass(frozen=True)
class DrBertConfig(TransformerConfig):
  mlm_decoder_layers: int = 2  # blocks of the pretraining-only MLM decoder

  def validate(self) -> None:
    super().validate()
    if self.mlm_decoder_layers < 1:
      raise ValueError(f"mlm_decoder_layers={self.mlm_decoder_layers} must be >= 1")

  @property
  def encoder(self) -> TransformerConfig:
    """The exported encoder's config: this one without the decoder."""
    fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(TransformerConfig)}
    return TransformerConfig(**fields)


class DrBert(nnx.Module):
  """BERT encoder + MLM decoder blocks (same width, mask and block config as the encoder)."""

  def __init__(self, cfg: DrBertConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.encoder = TextTransformer(cfg.encoder, rngs=rngs)
    self.mlm_decoder = TransformerStack(cfg.block, cfg.mlm_decoder_layers, rngs=rngs)

  def __call__(self, tokens: jax.Array, *, mask: jax.Array | None,
               positions: jax.Array | None = None) -> jax.Array:
    """The pretraining forward: encoder states (B, L, D) refined by the MLM decoder, which
    attends over all positions with the encoder's mask."""
    hidden = self.encoder(tokens, mask=mask, positions=positions)
    return self.mlm_decoder(hidden, mask=mask, positions=positions)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """BERT's MLM output layer (head transform + tied embedding) on decoder states."""
    return self.encoder.logits(hidden)


def encoder_params(params: dict) -> dict:
  """The encoder-only param tree to export: a `TextTransformer(cfg.encoder)`'s params."""
  return params["encoder"]
