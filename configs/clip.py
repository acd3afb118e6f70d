"""CLIP pretraining (Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision").

  python -m pretrain.main --config=configs/clip.py:tiny --workdir=runs/clip_tiny

Variants: tiny (emoji image-caption pairs, pretrain/data/image_text.py, on CPU), B/32 (the
paper's ViT-B/32 CLIP: 151.3M params, the released openai/clip-vit-base-patch32).
"""
from __future__ import annotations

from configs.base import base_config, tiny_schedule

# WIT (the paper's 400M web pairs) is not available offline: the data is the 1,911 emoji
# (data.source=emoji). CLIP's 49,152-merge BPE is replaced by a tokenizer trained on the
# captions (data.tokenizer; the paper config keeps its 49,408-id vocabulary size), its image
# augmentation (random square crop) and per-channel normalisation are left out, and
# mixed-precision/gradient-checkpointing details are the trainer's.
NOT_IMPLEMENTED = ("wit_400m_data", "clip_bpe_vocabulary", "random_square_crop",
                   "channel_normalization")
WIT_PAIRS = 400_000_000


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  c = base_config()
  c.objective.name = "clip"
  c.model.name = "clip"
  # Vision: ViT-B/32 at 224 (§2.4, Table 20), CLIP's pre-stack LayerNorm, quick_gelu.
  c.model.variant = "vit:B/32"
  c.model.num_layers = c.model.d_model = c.model.num_heads = c.model.d_ff = 0
  c.model.image_size = (224, 224)
  c.model.patch_size = (0, 0)
  c.model.channels = 3
  c.model.pos_emb = "learned"
  c.model.norm = "pre"
  c.model.activation = "quick_gelu"
  c.model.ln_eps = 1e-5
  c.model.dtype = "float32"
  # Text (§2.4, Table 20): 12 layers, 512 wide, 8 heads, 76 tokens + end token, causal,
  # pooled at the end-of-text token; joint embedding 512.
  c.model.text_layers, c.model.text_d_model, c.model.text_heads = 12, 512, 8
  c.model.text_d_ff = 2048
  c.model.max_len = 77
  c.model.embed_dim = 512
  c.model.init_temperature = 0.07  # §2.5
  c.data.source = "emoji"
  c.data.tokenizer = "bpe"
  c.data.vocab_size = 49_408
  c.data.text_len = 77
  # Table 19 / §2.5: batch 32,768, 32 epochs over 400M pairs, AdamW (0.9, 0.98, eps 1e-6),
  # decoupled weight decay 0.2, cosine schedule; lr 5e-4 for ViT-B/32, 2,000 warmup steps.
  c.train.global_batch = 32_768
  c.train.steps = 32 * WIT_PAIRS // 32_768
  c.optim.update(lr=5e-4, schedule="cosine", warmup_steps=2000, weight_decay=0.2, b1=0.9,
                 b2=0.98, eps=1e-6, clip_norm=0.0)
  if variant == "tiny":
    c.model.variant = "custom"
    c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 1, 64, 4, 128
    c.model.image_size, c.model.patch_size = (24, 24), (6, 6)
    c.model.text_layers, c.model.text_d_model, c.model.text_heads = 1, 64, 4
    c.model.text_d_ff = 128
    c.model.max_len = 16
    c.model.embed_dim = 64
    # At these widths a 0.07 start collapses both towers to one embedding within a few
    # steps (chance loss, log B, and no way out); a temperature of 1 learns.
    c.model.init_temperature = 1.0
    c.data.tokenizer = "wordpiece"
    c.data.vocab_size = 512
    c.data.text_len = 16
    tiny_schedule(c, global_batch=32, lr=5e-3)
    c.optim.update(warmup_steps=2, weight_decay=0.0)
  elif variant == "B/32":
    c.topology = "v5p-256"  # the paper's 592 V100s for 12 days, in TPU chips of a v5p pod
  else:
    raise ValueError(f"configs/clip.py variant {variant!r}; valid: tiny, B/32")
  return c
