"""TokenUnify: a mixture of random-token, next-token and next-all token prediction over
image token sequences (Chen et al. 2024, "TokenUnify: Scalable Autoregressive Visual
Pre-training with Mixture Token Prediction"; see objectives/token_unify.py).

  python -m pretrain.main --config=configs/token_unify.py:tiny --workdir=runs/token_unify_tiny

Images are Fashion-MNIST, tokenized on the host by a k-means codebook of 4x4 patches
(pretrain/data/visual_tokens.py): 49 tokens per image in raster order.

Variants: tiny (CPU test size), base. The paper pretrains a Mamba backbone on large
electron-microscopy volumes; the authors' code (github.com/ydchen0806/TokenUnify,
src/segmamba.py) builds it as SegMamba, a hierarchical 3D Mamba U-Net (4 stages of 2
Mamba layers, widths 32-256 by default, with wider settings noted at ~1.0B and ~1.2B).
A hierarchical 3D Mamba U-Net has no flat transformer of the same width and depth, so
`base` is OURS: a ViT-B-shaped transformer (12 blocks, width 768, 12 heads, MLP 3072)
with 4 one-block next-all heads over a 1024-code vocabulary, 114.3M params. The count the
tests assert is our own by-hand count of that transformer, not a figure from the paper.
"""
from __future__ import annotations

from configs.base import base_config, tiny_schedule

# What of the paper is left out: its Mamba backbone (ours is a transformer), its EM
# datasets and 3D volumes (Fashion-MNIST 2D images here), a learned visual tokenizer
# (ours: k-means on raw patches), the paper's exact task-mixing schedule (ours: a fixed
# per-example mix, `objective.task_mix`), and "all following tokens" beyond a window of
# model.num_future tokens.
NOT_IMPLEMENTED = ("mamba_backbone", "em_volumes", "learned_visual_tokenizer",
                   "paper_task_schedule", "unbounded_next_all_window")


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in ("tiny", "base"):
    raise ValueError(f"configs/token_unify.py variant {variant!r}; valid: tiny, base")
  c = base_config()
  c.objective.name = "token_unify"
  c.objective.task_mix = (1.0, 1.0, 1.0)  # random, next, next-all: equal thirds (ours)
  c.objective.mask_rate = 0.5             # random-token task: half the tokens hidden (ours)
  c.objective.future_decay = 1.0          # next-all: every future token counts the same
  c.objective.tokenizer_patch = (4, 4)
  c.objective.kmeans_iters = 10
  c.objective.kmeans_images = 1000
  c.model.name = "token_unify"
  c.model.variant = "custom"
  c.model.codebook_size = 1024
  c.model.num_future = 4
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 12, 768, 12, 3072
  c.model.max_len = 64                    # 49 tokens of a 28x28 image in 4x4 patches
  c.model.pos_emb = "learned"
  c.model.norm = "pre"
  c.model.activation = "gelu"
  c.model.tie_embeddings = True
  c.model.head_transform = False
  c.model.ln_eps = 1e-5
  c.model.dtype = "float32"
  c.data.source = "fashion_mnist"
  c.optim.update(lr=1.5e-4, schedule="cosine", warmup_steps=1000, weight_decay=0.05,
                 b1=0.9, b2=0.95, eps=1e-8)
  if variant == "tiny":
    c.model.codebook_size = 64
    c.model.num_future = 2
    c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 1, 64, 4, 128
    c.objective.kmeans_images = 300
    tiny_schedule(c, global_batch=16, lr=3e-3)
  else:
    c.train.update(steps=100_000, global_batch=512)
    c.topology = "v5p-8"
  return c
