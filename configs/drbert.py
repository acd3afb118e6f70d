"""DrBERT / BPDec pretraining (Liang & Liang 2024, "DrBERT: Unveiling the Potential of Masked
Language Modeling Decoder in BERT pretraining"): BERT's MLM with transformer blocks added
between the encoder and the MLM output layer during pretraining only.

  python -m pretrain.main --config=configs/drbert.py:tiny --workdir=runs/drbert_tiny

Variants: tiny (CPU test size), base (BERT-base encoder, 110M, + 2 decoder blocks: 14.2M
more params in pretraining only). Everything else is the BERT recipe (configs/bert.py).
`models.drbert.encoder_params` exports the plain BERT encoder.
"""
from __future__ import annotations

from configs import bert

# Not implemented: the paper's Gradual Unmasking Attention (decoder layers that progressively
# let queries attend to the masked positions) and its random mixing of encoder and decoder
# outputs before the output layer; the decoder depth the paper settles on (we use 2, our
# choice); and what configs/bert.py lists.
NOT_IMPLEMENTED = ("gradual_unmasking_attention", "encoder_decoder_output_mixing",
                   "paper_decoder_depth", *bert.NOT_IMPLEMENTED)


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in ("tiny", "base"):
    raise ValueError(f"configs/drbert.py variant {variant!r}; valid: tiny, base")
  c = bert.get_config(variant)
  c.objective.name = "drbert"
  c.model.name = "drbert"
  c.model.mlm_decoder_layers = 2  # BERT-base blocks (width, heads, d_ff as the encoder's)
  return c
