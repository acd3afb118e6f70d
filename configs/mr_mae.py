"""MR-MAE: Mimic before Reconstruct (Gao et al. 2023, "Mimic before Reconstruct: Enhancing
Masked Autoencoders with Feature Mimicking").

  python -m pretrain.main --config=configs/mae.py:tiny --workdir=runs/teacher
  python -m pretrain.main --config=configs/mr_mae.py:tiny --workdir=runs/mr_mae \
      --config.teacher.path=runs/teacher

MAE's pixel loss on the masked patches plus a mimic loss pulling the encoder's visible
tokens to a frozen pre-trained teacher's (objectives/mae_distill.py). Variants: tiny
(Fashion-MNIST, the teacher a tiny MAE run of ours) and B/16 (the paper's base model: a
ViT-B/16 encoder, 86M params, Dosovitskiy et al. 2020 Table 1, with MAE's decoder).
"""
from __future__ import annotations

from configs import mae

# Left out: the paper's CLIP and DINO teachers (any ViT run of ours loads instead, e.g. a
# configs/dino.py run), its focused mimicking (visible tokens chosen by the teacher's
# [CLS] attention instead of at random), multi-layer fusion, the ConvMAE hybrid
# convolution stages of its best model, and what configs/mae.py lists.
NOT_IMPLEMENTED = ("clip_teacher", "focused_mimicking", "multi_layer_fusion",
                   "convmae_stages", *mae.NOT_IMPLEMENTED)


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in ("tiny", "B/16"):
    raise ValueError(f"configs/mr_mae.py variant {variant!r}; valid: tiny, B/16")
  c = mae.get_config(variant)
  c.objective.name = "mr_mae"
  c.objective.mimic_weight = 1.0  # Pixel and mimic losses summed with equal weight.
  c.teacher.kind = "frozen"  # teacher.path: the teacher run's workdir, given per run.
  if variant == "B/16":
    # Abstract: the base model pre-trained for 400 epochs (MAE's recipe otherwise).
    c.train.steps = 400 * mae.IMAGENET_TRAIN // c.train.global_batch
  return c
