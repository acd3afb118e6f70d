"""Prefix-LM pretraining of a non-causal decoder (Wang et al. 2022, "What Language Model
Architecture and Pretraining Objective Work Best for Zero-Shot Generalization?").

  python -m pretrain.main --config=configs/prefix_lm.py:tiny --workdir=runs/prefix_lm_tiny

Variants: tiny (CPU test size), xl (1.3B: GPT-3 XL's shape; see below). The model, data and
optimizer are the GPT recipe's (configs/gpt.py); only the objective and the sizes change.
"""
from __future__ import annotations

from configs import gpt

# Not implemented: the paper's own model sizes (its abstract gives only "over 5 billion
# parameters"; we do not have its architecture table), and what configs/gpt.py lists.
NOT_IMPLEMENTED = ("paper_model_shapes", *gpt.NOT_IMPLEMENTED)


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in ("tiny", "xl"):
    raise ValueError(f"configs/prefix_lm.py variant {variant!r}; valid: tiny, xl")
  c = gpt.get_config(variant)
  c.objective.name = "prefix_lm"
  if variant == "xl":
    # GPT-3 XL (Brown et al. 2020, Table 2.1): 24 layers, d_model 2048, head dim 128,
    # context 2048, batch 1M tokens (512 x 2048), lr 2e-4, warmup 375M tokens (~358 steps).
    # GPT-3 lists 24 heads of 128 (inner width 3072 != d_model), which our attention does
    # not support: 16 heads of 128. Length: the abstract's "more than 170 billion tokens"
    # = 162,125 steps of 2^20 tokens.
    c.model.update(variant="custom", num_layers=24, d_model=2048, num_heads=16, d_ff=8192,
                   max_len=2048)
    c.data.seq_len = 2048
    c.train.update(steps=162_125, global_batch=512)
    c.optim.update(lr=2e-4, warmup_steps=358)
    # Slice not given by the paper: GPT-2 xl's (v5p-128, FSDP, scanned, full remat) is kept.
  return c
