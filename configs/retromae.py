"""RetroMAE v2 / DupMAE retrieval-oriented pretraining (Liu & Shao 2022, "RetroMAE v2:
Duplex Masked Auto-Encoder For Pre-Training Retrieval-Oriented Language Models"): encoder
MLM, [CLS] decoding by a one-layer decoder, bag-of-words loss (objectives/retromae.py).

  python -m pretrain.main --config=configs/retromae.py:tiny --workdir=runs/retromae_tiny

Variants: tiny (CPU test size) and base (BERT-base encoder, 110M parameters, Devlin et al.
2018 §3, plus the pretraining-only one-block decoder, dropped after pretraining). The
encoder and optimizer are configs/bert.py's; the model is `multi_token` with one head,
which is the decoder.
"""
from __future__ import annotations

from configs import bert

# Not implemented: RetroMAE's enhanced decoding (two-stream attention with position-specific
# random masks; our decoder is one bidirectional block over [CLS state; masked copy]),
# DupMAE's dimension reduction of the unified embedding (we concatenate the full [CLS] state
# and the full bag-of-words vector), a per-document bag of words in packed rows (ours is per
# row), the paper's corpora (Wikipedia, BookCorpus, MS MARCO; Shakespeare here), retrieval
# fine-tuning, and what configs/bert.py lists.
NOT_IMPLEMENTED = ("enhanced_decoding", "embedding_dimension_reduction", "per_document_bow",
                   "paper_corpora", "retrieval_finetuning", *bert.NOT_IMPLEMENTED)


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in ("tiny", "base"):
    raise ValueError(f"configs/retromae.py variant {variant!r}; valid: tiny, base")
  c = bert.get_config(variant)
  c.objective.name = "retromae"
  # RetroMAE (Xiao et al. 2022, abstract): "15~30%" of the encoder's input masked and
  # "50~70%" of the decoder's; we take 30% and 50%. The three losses are summed (DupMAE).
  c.objective.mask_rate = 0.3
  c.objective.decoder_mask_rate = 0.5
  c.objective.decoder_weight = 1.0
  c.objective.bow_weight = 1.0
  c.model.name = "multi_token"
  c.model.num_future = 1  # the one-block decoder
  if variant == "tiny":
    c.data.vocab_size = 2000  # not a multiple of 128: [CLS] lives in the table's padding
  return c
