"""Starbucks masked-autoencoding pretraining for 2D Matryoshka embeddings (Zhuang et al.
2024, "Starbucks: Improved Training for 2D Matryoshka Embeddings"): MLM on a fixed list of
(sub-layer, sub-dimension) slices of one encoder (objectives/starbucks.py).

  python -m pretrain.main --config=configs/starbucks.py:tiny --workdir=runs/starbucks_tiny

Variants: tiny (CPU test size) and base (BERT-base, 110M parameters, Devlin et al. 2018 §3;
the paper starts from BERT-base). Masking, model and optimizer are configs/bert.py's.
"""
from __future__ import annotations

from configs import bert

# Not implemented: the MAE decoder the paper's pretraining adds on each slice (here only the
# MLM head reads each slice), the fine-tuning stage (contrastive 2D Matryoshka loss on query
# / passage pairs with a KL term between slices: no pairs here), the paper's corpora, and
# what configs/bert.py lists.
NOT_IMPLEMENTED = ("mae_decoder_per_slice", "matryoshka_contrastive_finetuning",
                   "paper_corpora", *bert.NOT_IMPLEMENTED)

# The paper's fixed list of (layers, embedding dims), small to large, for BERT-base.
BASE_LAYER_DIMS = ((2, 32), (4, 64), (6, 128), (8, 256), (10, 512), (12, 768))


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in ("tiny", "base"):
    raise ValueError(f"configs/starbucks.py variant {variant!r}; valid: tiny, base")
  c = bert.get_config(variant)
  c.objective.name = "starbucks"
  c.objective.layer_dims = (BASE_LAYER_DIMS if variant == "base"
                            else ((1, 32), (1, 64), (2, 128)))  # bert:tiny is L=2, H=128
  return c
