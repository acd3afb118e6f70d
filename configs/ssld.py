"""SSLD: distillation from a frozen teacher's predictions, labels never used (Cui et al.
2021, "Beyond Self-Supervision: A Simple Yet Effective Network Distillation Alternative to
Improve Backbones").

  python -m pretrain.main --config=configs/classify.py:tiny --workdir=runs/teacher
  python -m pretrain.main --config=configs/ssld.py:tiny --workdir=runs/ssld_tiny \
      --config.teacher.path=runs/teacher

Variants: tiny (a classify.py:tiny run as teacher, a student of its size) and B/16 (a
ViT-B/16 student, 86M params, of a ViT-L/16 classifier teacher, 307M: ViT paper Table 1).
SSLD distils ResNet50-vd and MobileNetV3 students from larger CNNs; this codebase has ViTs.
"""
from __future__ import annotations

import ml_collections

from configs import classify

# Left out: SSLD's CNN students and teachers (ViTs here), its extra unlabeled ImageNet-22k
# images (any image source works: labels are dropped on the host), its schedule (the ViT
# baseline's) and augmentations beyond flips.
NOT_IMPLEMENTED = ("cnn_backbones", "imagenet22k_unlabeled_images", "ssld_schedule",
                   "ssld_augmentations")


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in ("tiny", "B/16"):
    raise ValueError(f"configs/ssld.py variant {variant!r}; valid: tiny, B/16")
  c = classify.get_config(variant)
  c.objective.name = "ssld"
  c.objective.distill_temperature = 1.0  # plain softmax outputs, as SSLD matches them
  c.teacher.kind = "frozen"  # teacher.path: a classify run (or larger teacher.model) of ours
  if variant == "B/16":
    c.teacher.model = ml_collections.ConfigDict({"variant": "vit:L/16"})
  return c
