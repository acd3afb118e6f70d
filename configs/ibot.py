"""iBOT: DINO plus masked image modeling with the EMA teacher as online tokenizer (Zhou et
al. 2022, "iBOT: Image BERT Pre-Training with Online Tokenizer"): objective `dino` with
`ibot_weight` > 0 (see objectives/dino.py).

  python -m pretrain.main --config=configs/ibot.py:tiny --workdir=runs/ibot_tiny

Variants: tiny (Fashion-MNIST on CPU) and B/16 (ViT-B/16 backbone: 86M params, ViT paper
Table 1; iBOT reports it as 85M).
"""
from __future__ import annotations

from configs import dino, mae

# Left out: masking only half of the images (iBOT's pred_prob 0.5: here every global crop is
# masked), a separate patch head (iBOT's default shares it, as here), iBOT's own crop scales
# and 10 local crops of 96 (DINO's 8 are kept), the weight-decay schedule and DINO's
# augmentations left out of configs/dino.py.
NOT_IMPLEMENTED = ("mask_half_the_images", "ibot_crop_settings", "weight_decay_schedule",
                   "freeze_last_layer", "color_augmentations")


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in ("tiny", "B/16"):
    raise ValueError(f"configs/ibot.py variant {variant!r}; valid: tiny, B/16")
  c = dino.get_config("tiny" if variant == "tiny" else "B/14")
  c.model.mask_token = True
  # iBOT §4 / Appendix A: lambda = 1 for the patch loss, prediction ratio 0.3 +- 0.2 with
  # blockwise masks, a head shared by [CLS] and patches with 8192 prototypes.
  c.objective.ibot_weight = 1.0
  c.objective.ibot_mask_ratio = (0.1, 0.5)
  if variant == "tiny":
    c.objective.local_crops = 0  # The global crops carry the patch loss; keep it cheap.
    return c
  c.model.variant = "vit:B/16"
  c.model.head_out_dim = 8192
  c.objective.global_crop_size, c.objective.local_crop_size = 224, 96
  # iBOT Appendix A (ViT-B/16): 400 epochs at batch 1024, 10 warmup epochs.
  epoch = mae.IMAGENET_TRAIN // 1024
  c.train.steps = 400 * epoch
  c.optim.warmup_steps = 10 * epoch
  return c
