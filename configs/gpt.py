"""GPT-2 causal-LM pretraining (Radford et al. 2019).

  python -m pretrain.main --config=configs/gpt.py:tiny --workdir=runs/gpt_tiny

Variants: tiny (CPU test size), small, medium, large, xl (Table 2).
"""
from __future__ import annotations

from configs.base import base_config, tiny_schedule

# Not implemented: dropout 0.1 (GPT-2 inherited it from GPT; models have no dropout yet) and
# §2.3's 1/sqrt(N) scaling of residual-layer init (all kernels use N(0, 0.02)).
NOT_IMPLEMENTED = ("dropout", "scaled_residual_init")


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  c = base_config()
  c.objective.name = "causal_lm"
  c.model.name = "transformer"
  c.model.variant = "gpt2:small"
  c.model.num_layers = c.model.d_model = c.model.num_heads = c.model.d_ff = 0
  c.model.max_len = 1024          # §2.3: context 1024 tokens
  c.model.pos_emb = "learned"
  c.model.norm = "pre"            # §2.3: LayerNorm moved to each sub-block's input
  c.model.activation = "gelu"
  c.model.tie_embeddings = True
  c.model.head_transform = False
  c.model.ln_eps = 1e-5
  c.model.dtype = "float32"
  c.data.source = "shakespeare"
  c.data.tokenizer = "bpe"
  c.data.vocab_size = 50257       # §2.3: byte-level BPE, 50,257 tokens
  c.data.seq_len = 1024
  # §2.3: batch 512; the paper gives no lr table beyond "manually tuned". We use GPT-3's
  # (Brown et al. 2020, Table 2.1) for the matching sizes: 125M -> 6e-4, 350M -> 3e-4,
  # 760M -> 2.5e-4, 1.3B -> 2e-4; cosine decay to 10%, warmup 375M tokens (~715 steps),
  # weight decay 0.1, b2 0.95.
  c.train.steps = 600_000
  c.train.global_batch = 512
  c.optim.schedule = "cosine"
  c.optim.end_lr_fraction = 0.1
  c.optim.warmup_steps = 715
  c.optim.weight_decay = 0.1
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.95, 1e-8
  c.optim.lr = {"small": 6e-4, "medium": 3e-4, "large": 2.5e-4, "xl": 2e-4}.get(variant, 6e-4)
  if variant == "tiny":
    c.model.variant = "custom"
    c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 2, 128, 4, 512
    c.model.max_len = 64
    c.data.vocab_size = 2048
    c.data.seq_len = 64
    tiny_schedule(c, global_batch=16, lr=3e-3)
  elif variant in ("small", "medium", "large", "xl"):
    c.model.variant = f"gpt2:{variant}"
    # Radford et al. give no hardware. Slices sized so the 512 x 1024-token batch is 4-16
    # sequences per chip; from large up, params and Adam state are sharded (FSDP) over all
    # chips. xl's width 1600 does not split 128 ways: 64 chips, 8 sequences each, which
    # only fit scanned with full remat (python -m pretrain.aot: 68 GiB/chip at 4 sequences
    # without remat, 7.5 GiB with).
    c.topology = {"small": "v5p-64", "medium": "v5p-128", "large": "v5p-256",
                  "xl": "v5p-128"}[variant]
    if variant in ("large", "xl"):
      c.mesh.update(data=1, fsdp=-1)
    if variant == "xl":
      c.model.update(scan_layers=True, remat="full")
  else:
    raise ValueError(f"configs/gpt.py variant {variant!r}; valid: tiny, small, medium, large, xl")
  return c
