"""ALIP pretraining (Yang et al. 2023, "ALIP: Adaptive Language-Image Pre-training with
Synthetic Caption", ICCV 2023): CLIP on raw text + a second caption, gated per sample and
per pair (objectives/alip.py).

  python -m pretrain.main --config=configs/alip.py:tiny --workdir=runs/alip_tiny

Variants: tiny (emoji pairs on CPU) and B/32, the paper's ViT-B/32 (its Tables 1-3 compare
against CLIP ViT-B/32; the same 151.3M-param dual encoder). "script" numbers are from the
authors' scripts/train_yfcc15m_B32_ALIP.sh and train.py.
"""
from __future__ import annotations

from configs.clip import NOT_IMPLEMENTED as CLIP_NOT_IMPLEMENTED
from configs.clip import get_config as clip_config

# YFCC15M with OFA-generated captions is not available: the second text is the emoji's
# other real description (pretrain/data/image_text.py alt_caption), not a synthetic one.
NOT_IMPLEMENTED = (*CLIP_NOT_IMPLEMENTED, "yfcc15m_data", "ofa_synthetic_captions")
YFCC15M = 15_061_515  # script: train_num_samples


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in ("tiny", "B/32"):
    raise ValueError(f"configs/alip.py variant {variant!r}; valid: tiny, B/32")
  c = clip_config(variant)
  c.objective.name = "alip"
  if variant == "B/32":
    # Script: 8 GPUs x 512 = 4,096 per step, 32 epochs, AdamW lr 1e-3 (0.9, 0.98), weight
    # decay 0.2, one-cycle cosine with 10% warmup, gradient norm clipped at 1.
    c.train.global_batch = 4096
    c.train.steps = 32 * YFCC15M // 4096
    c.optim.update(lr=1e-3, warmup_steps=c.train.steps // 10, weight_decay=0.2, b2=0.98,
                   clip_norm=1.0)
    c.topology = "v5p-16"  # 8 chips for the script's 8 A100s, 512 pairs each
  return c
