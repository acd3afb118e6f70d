"""Arctic-SnowCoder: a code LM pretrained in three phases of progressively better data
(Wei et al. 2024, "Arctic-SnowCoder: Demystifying High-Quality Data in Code Pretraining",
arXiv 2409.02326).

  python -m pretrain.main --config=configs/snowcoder.py:tiny --workdir=runs/snowcoder_tiny

Variants: tiny (CPU test size), 1.3b. The abstract: 555B tokens in three phases, (1) 500B
tokens of standard-quality code, (2) 50B high-quality tokens, (3) 5B synthetic tokens.
Here the phases are one run with `data.source=phases`: `data.phases` lists each phase's
first step and source mixture (pretrain/data/phases.py; grain mixing, resumable mid-phase).
The tiny variant moves from Python code to a code + Shakespeare mix to Shakespeare alone,
so each switch shows in the loss.
"""
from __future__ import annotations

from configs.base import base_config, tiny_schedule
from configs.metagene import llama_architecture

# Not implemented: the phases' data (The Stack/GitHub code, the BERT-style quality annotator
# that selects phase 2, Llama-3.1-70B synthetic code for phase 3: the paper-size phases name
# the built-in python_stdlib source as a stand-in; point them at real sources), a fresh
# warmup/decay per phase (one learning-rate schedule spans the run), bias-free dense layers.
NOT_IMPLEMENTED = ("phase_corpora", "quality_annotator", "synthetic_data",
                   "per_phase_lr_schedule", "bias_free_dense")

# Wei et al. §3 (phase 1) as reported: sequence 8,192, batch 512, cosine decay after 600
# warmup steps (not checked against the PDF offline).
SEQ_LEN, GLOBAL_BATCH = 8192, 512
PHASE_TOKENS = (500e9, 50e9, 5e9)  # abstract: the three phases' token counts
# Llama-style 1.3B. The abstract gives the size, not the shape: DeepSeek-Coder-1.3B's
# (24 layers, width 2048, 16 heads, SwiGLU 5504, vocab 32,256) is the 1.3B Llama shape of
# code LMs; its count is 1.35B.
SIZE_1_3B, VOCAB_1_3B = (24, 2048, 16, 5504), 32256


def phase_starts(tokens_per_step: int) -> list[int]:
  """First step of each phase: the phases' token counts at this many tokens a step."""
  starts, total = [], 0.0
  for tokens in PHASE_TOKENS:
    starts.append(round(total / tokens_per_step))
    total += tokens
  return starts + [round(total / tokens_per_step)]


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  c = base_config()
  llama_architecture(c)
  c.data.source = "phases"
  # Cosine after 600 warmup steps (§3); decay to 10%, AdamW b2 0.95, weight decay 0.1: ours.
  c.optim.update(schedule="cosine", warmup_steps=600, end_lr_fraction=0.1, weight_decay=0.1,
                 b1=0.9, b2=0.95, eps=1e-8)
  if variant == "tiny":
    c.model.update(variant="custom", num_layers=2, d_model=64, num_heads=4, d_ff=172,
                   max_len=64)
    c.data.update(seq_len=64, vocab_size=2048)
    c.data.phases = ((0, {"python_stdlib": 1.0}),
                     (15, {"python_stdlib": 1.0, "shakespeare": 1.0}),
                     (30, {"shakespeare": 1.0}))
    tiny_schedule(c, global_batch=16, lr=3e-3)
  elif variant == "1.3b":
    layers, d_model, heads, d_ff = SIZE_1_3B
    c.model.update(variant="custom", num_layers=layers, d_model=d_model, num_heads=heads,
                   d_ff=d_ff, max_len=SEQ_LEN)
    c.data.update(seq_len=SEQ_LEN, vocab_size=VOCAB_1_3B)
    *starts, end = phase_starts(SEQ_LEN * GLOBAL_BATCH)
    c.data.phases = tuple((start, {"python_stdlib": 1.0}) for start in starts)
    c.train.update(global_batch=GLOBAL_BATCH, steps=end)
    c.optim.lr = 5.3e-4  # our choice (the abstract gives none): DeepSeek-Coder-1.3B's peak
    # 64 chips, 8 sequences of 8,192 each; params and Adam state sharded over all of them.
    c.topology = "v5p-128"
    c.mesh.update(data=1, fsdp=-1)
    c.model.update(scan_layers=True, remat="full")
  else:
    raise ValueError(f"configs/snowcoder.py variant {variant!r}; valid: tiny, 1.3b")
  return c
