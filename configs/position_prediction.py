"""Masked position prediction pretraining (Zhai et al. 2022, "Position Prediction as an
Effective Pretraining Strategy", MP3).

  python -m pretrain.main --config=configs/position_prediction.py:tiny --workdir=runs/mp3

Variants: tiny (Fashion-MNIST on CPU) and B/16 (the paper's ImageNet-1K backbone, ViT-B/16
without position embeddings, 86M params as ViT-Base in Dosovitskiy et al. 2020 Table 1).
"""
from __future__ import annotations

from configs.mae import get_config as mae_config

# Left out: the paper's ImageNet augmentations and its own optimisation schedule (the B/16
# variant keeps this codebase's MAE ImageNet schedule, not checked against the paper);
# dropping the masked patches from the keys/values computation (they are masked out of
# attention instead, same result, no saving); the fine-tuning stage that adds position
# embeddings back; the speech experiments.
NOT_IMPLEMENTED = ("augmentations", "paper_optimizer_schedule", "sparse_context_compute",
                   "finetune_position_embeddings", "speech")


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in ("tiny", "B/16"):
    raise ValueError(f"configs/position_prediction.py variant {variant!r}; valid: tiny, B/16")
  c = mae_config("tiny" if variant == "tiny" else "B/16")
  for key in ("dec_d_model", "dec_layers", "dec_heads", "dec_d_ff"):
    del c.model[key]
  del c.objective.mask_ratio, c.objective.norm_pix_loss
  c.objective.name = "position_prediction"
  c.model.name = "position_predictor"
  c.model.pos_emb = "none"  # the method: positions are the target, never an input
  # MP3 draws a random context of the patches for the keys/values (75% of them masked:
  # this recipe's choice of the paper's masking-ratio knob, as in MAE).
  c.objective.context_mask_ratio = 0.75
  if variant == "tiny":
    c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 2, 64, 4, 128
    c.objective.context_mask_ratio = 0.5
    c.train.global_batch = 16
    return c
  c.model.variant = "vit:B/16"
  c.model.patch_size = (16, 16)
  return c
