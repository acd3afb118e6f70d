"""ContraBERT: MLM plus contrastive learning between Python functions and their
semantics-preserving variants (Liu et al. 2023, "ContraBERT: Enhancing Code Pre-trained
Models via Contrastive Learning"; objectives/contrabert.py, pretrain/data/code_augment.py).

  python -m pretrain.main --config=configs/contrabert.py:tiny --workdir=runs/contrabert_tiny

Variants: tiny (CPU test size) and base (ContraBERT continues CodeBERT / GraphCodeBERT: the
RoBERTa-base shape, 125M parameters). Model, tokenizer, data source and optimizer are
configs/graphcodebert.py's.
"""
from __future__ import annotations

from configs import graphcodebert

# Not implemented: the MoCo momentum encoder and queue of negatives (in-batch negatives
# here, over the global batch), the NL operators and the PL operators other than variable
# renaming, dead-code insertion and statement permutation, continued training from the
# CodeBERT / GraphCodeBERT checkpoints, the CodeSearchNet corpus (stdlib functions here),
# and dropout.
NOT_IMPLEMENTED = ("moco_momentum_encoder_and_queue", "nl_operators", "other_pl_operators",
                   "init_from_codebert", "codesearchnet_data", "dropout")


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in ("tiny", "base"):
    raise ValueError(f"configs/contrabert.py variant {variant!r}; valid: tiny, base")
  c = graphcodebert.get_config(variant)
  del c.objective["node_sample_rate"], c.objective["max_nodes"]
  c.objective.name = "contrabert"
  c.objective.whole_word = False
  # MLM as CodeBERT (15%, 80/10/10, from graphcodebert); the contrastive temperature and
  # weight are ours: MoCo's default 0.07 and a plain sum with MLM.
  c.objective.contrastive_temperature = 0.07
  c.objective.contrastive_weight = 1.0
  return c
