"""CodeT5's second pretraining stage: bimodal dual generation (Wang et al. 2021, §3.2),
NL->PL and PL->NL on (docstring, function) pairs of the Python stdlib.

  python -m pretrain.main --config=configs/codet5_bimodal.py:tiny --workdir=runs/ct5_bi \
      --config.init_from.path=runs/codet5_tiny

Variants as configs/codet5.py (whose model, data and optimizer settings it keeps); start
from a denoising run with `init_from.path` as the paper does.
"""
from __future__ import annotations

import ml_collections

from configs import codet5

# Left out: CodeSearchNet's six languages (stdlib Python only) and the language-id tokens of
# the paper's multi-lingual setting; everything configs/codet5.py leaves out.
NOT_IMPLEMENTED = ("multilingual_language_ids", *codet5.NOT_IMPLEMENTED)


def get_config(arg: str | None = None):
  c = codet5.get_config(arg)
  # Encoder: one side (data.seq_len tokens), decoder: the other (target_len tokens).
  c.objective = ml_collections.ConfigDict(
      {"name": "codet5_bimodal", "target_len": c.objective.target_len})
  return c
