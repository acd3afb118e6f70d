"""PubMedBERT: BERT-base pretrained from scratch on in-domain text with an in-domain
vocabulary (Gu et al. 2021, "Domain-Specific Language Model Pretraining for Biomedical
Natural Language Processing").

  python -m pretrain.main --config=configs/pubmedbert.py:tiny --workdir=runs/pubmedbert_tiny

Variants: tiny (CPU test size), base. The paper's point is the data, not the model: the
WordPiece vocabulary is built from the pretraining corpus itself instead of reusing BERT's
general-domain one, and training starts from scratch. That is what `data.tokenizer` already
does for every recipe (pretrain/data/tokenizer.py trains it on `data.source`);
tests/test_domain.py measures the effect (fewer pieces per in-domain word). Everything else
is the BERT recipe (configs/bert.py).
"""
from __future__ import annotations

from configs import bert

# Not implemented: the PubMed corpus (no offline copy; `data.source` picks a built-in corpus
# or user files, e.g. data.source=text_files with PubMed abstracts), the paper's optimizer
# and sequence-length schedule (not checked offline: BERT's are kept), and what
# configs/bert.py lists.
NOT_IMPLEMENTED = ("pubmed_corpus", "paper_optimizer_schedule", *bert.NOT_IMPLEMENTED)

# Uncased WordPiece vocabulary generated from PubMed: 28,895 entries in the released
# microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract vocab (HF config vocab_size).
VOCAB_SIZE = 28895


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in ("tiny", "base"):
    raise ValueError(f"configs/pubmedbert.py variant {variant!r}; valid: tiny, base")
  c = bert.get_config(variant)
  c.data.tokenizer = "wordpiece"
  c.objective.whole_word = True  # Gu et al. mask whole words (WWM), not single pieces.
  if variant == "base":
    c.data.vocab_size = VOCAB_SIZE
  return c
