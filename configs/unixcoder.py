"""UniXcoder's encoder / decoder / encoder-decoder modes on Python source (Guo et al. 2022,
"UniXcoder: Unified Cross-Modal Pre-training for Code Representation").

  python -m pretrain.main --config=configs/unixcoder.py:tiny --workdir=runs/unixcoder_tiny

One RoBERTa-shaped transformer; each row draws a mode, whose token ([ENC], [DEC], [E2D],
ids reserved above the tokenizer's vocabulary) starts every packed segment and whose mask
and loss apply (objectives/unixcoder.py).

Variants: tiny (CPU test size), base (the paper's model: RoBERTa-base shape, 12 layers,
d_model 768, 12 heads, 125M parameters; vocabulary 51,416 and 1,026 positions as in the
released microsoft/unixcoder-base config).
"""
from __future__ import annotations

from configs.base import base_config, tiny_schedule

# Not implemented: dropout as the contrastive task's noise (two independent maskings of a
# row instead: our models have no dropout), its code-comment pairs and the cross-modal
# generation task, flattened ASTs and code comments as inputs (we feed plain source), the
# [E2D] denoising (span-corruption) target of the paper (here the prefix-LM form:
# predict the rest of a segment after a bidirectional prefix), the paper's corpora
# (CodeSearchNet, C4; we train on the Python standard library) and dropout.
NOT_IMPLEMENTED = ("dropout_contrastive_views", "code_comment_contrastive_pairs",
                   "cross_modal_generation", "ast_flattening",
                   "comment_inputs", "e2d_span_denoising", "paper_corpora", "dropout")

MODE_TOKENS = 3  # [ENC], [DEC], [E2D]


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  c = base_config()
  c.objective.name = "unixcoder"
  # [ENC] masks as BERT/RoBERTa: 15% of tokens, 80/10/10.
  c.objective.mask_rate = 0.15
  c.objective.replace_mask = 0.8
  c.objective.replace_random = 0.1
  c.objective.whole_word = False
  c.objective.mode_probs = (1 / 3, 1 / 3, 1 / 3)  # (enc, dec, e2d): uniform, our choice
  # §3.3 contrastive code representation, summed with the other losses; temperature 0.05
  # as in SimCSE, whose dropout-noise positives UniXcoder follows.
  c.objective.contrastive_weight = 1.0
  c.objective.contrastive_temperature = 0.05
  c.model.name = "transformer_extra_ids"
  c.model.extra_ids = MODE_TOKENS
  c.model.variant = "custom"
  c.model.pos_emb = "learned"
  c.model.norm = "post"           # RoBERTa is post-LN, with an embedding LayerNorm
  c.model.embed_norm = True
  c.model.activation = "gelu_exact"
  c.model.tie_embeddings = True
  c.model.head_transform = True   # RoBERTa's lm_head dense + LayerNorm
  c.model.ln_eps = 1e-5
  c.model.dtype = "float32"
  c.data.source = "python_stdlib"
  c.data.tokenizer = "bpe"
  # Training settings below are ours (RoBERTa-base-like), not the paper's.
  c.train.steps = 500_000
  c.train.global_batch = 1024
  c.optim.lr = 2e-4
  c.optim.schedule = "linear"
  c.optim.warmup_steps = 10_000
  c.optim.weight_decay = 0.01
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.98, 1e-6
  if variant == "tiny":
    c.model.update(num_layers=2, d_model=128, num_heads=4, d_ff=512, max_len=64)
    c.data.vocab_size = 2048
    c.data.seq_len = 64
    tiny_schedule(c, global_batch=16, lr=2e-3)
  elif variant == "base":
    c.model.update(num_layers=12, d_model=768, num_heads=12, d_ff=3072, max_len=1026)
    c.data.vocab_size = 51416 - MODE_TOKENS  # the mode tokens complete the 51,416
    c.data.seq_len = 1024
    c.topology = "v5p-32"  # not given by the paper; sized like BERT-base
  else:
    raise ValueError(f"configs/unixcoder.py variant {variant!r}; valid: tiny, base")
  return c
