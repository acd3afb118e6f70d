"""GraphCodeBERT pretraining on Python functions with their data flow (Guo et al. 2021,
"GraphCodeBERT: Pre-training Code Representations with Data Flow").

  python -m pretrain.main --config=configs/graphcodebert.py:tiny --workdir=runs/gcb_tiny

Variants: tiny (CPU test size) and base (RoBERTa-base shape, 125M params, §4.1).
"""
from __future__ import annotations

from configs.base import base_config, tiny_schedule

# Left out: initialisation from CodeBERT (§4.1; `init_from.path` can load a checkpoint),
# the CodeSearchNet corpus of six languages (we train on this interpreter's stdlib
# functions), the paper's tree-sitter data-flow extractor (ours is a simpler `ast` walk,
# see pretrain/data/code.py), dropout (the models have none), and the unscaled dot product
# of the edge / alignment predictors (ours divides by sqrt(d_model), see pair_logits).
NOT_IMPLEMENTED = ("init_from_codebert", "codesearchnet_data", "tree_sitter_data_flow",
                   "dropout", "unscaled_pair_dot_product")


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  c = base_config()
  c.objective.name = "graphcodebert"
  # §3.3: MLM as BERT (15%, 80/10/10); 20% of nodes sampled for edge prediction and,
  # separately, 20% for node alignment.
  c.objective.mask_rate = 0.15
  c.objective.replace_mask = 0.8
  c.objective.replace_random = 0.1
  c.objective.node_sample_rate = 0.2
  c.objective.max_nodes = 128     # §4.1: max length 512 for code, 128 for data-flow nodes
  # RoBERTa-base shape (12 x 768, post-LN, embedding LayerNorm, MLM head transform).
  c.model.name = "transformer"
  c.model.variant = "bert:base"
  c.model.num_layers = c.model.d_model = c.model.num_heads = c.model.d_ff = 0
  c.model.max_len = 514           # RoBERTa's 514 learned positions
  c.model.pos_emb = "learned"
  c.model.norm = "post"
  c.model.activation = "gelu_exact"
  c.model.tie_embeddings = True
  c.model.head_transform = True
  c.model.embed_norm = True
  c.model.ln_eps = 1e-5
  c.model.dtype = "float32"
  c.data.source = "python_stdlib"
  c.data.tokenizer = "bpe"
  c.data.vocab_size = 50_265      # RoBERTa / CodeBERT byte-level BPE
  c.data.seq_len = 512
  # §4.1: Adam, lr 2e-4, batch 1,024, 200K steps on 32 V100s.
  c.train.steps = 200_000
  c.train.global_batch = 1024
  c.optim.lr = 2e-4
  c.optim.schedule = "linear"
  c.optim.warmup_steps = 10_000   # ours: the paper does not say
  c.optim.weight_decay = 0.01
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.999, 1e-6
  if variant == "tiny":
    c.model.variant = "bert:tiny"
    c.model.max_len = 65
    c.data.vocab_size = 2048
    c.data.seq_len = 64
    c.objective.max_nodes = 16
    tiny_schedule(c, global_batch=16, lr=2e-3)
  elif variant == "base":
    c.topology = "v5p-32"  # 16 chips for 32 V100s' worth of 640-position sequences
  else:
    raise ValueError(f"configs/graphcodebert.py variant {variant!r}; valid: tiny, base")
  return c
