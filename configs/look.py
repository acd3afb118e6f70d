"""LOOK: supervised pre-training with a leave-one-out kNN loss (Feng et al. 2022,
"Rethinking Supervised Pre-training for Better Downstream Transferring").

  python -m pretrain.main --config=configs/look.py:tiny --workdir=runs/look_tiny

Variants: tiny (Fashion-MNIST labels on CPU, ViT), tiny_resnet (the same on SparK's tiny
ResNet), R50 (LOOK's backbone: ResNet-50, He et al. 2016, torchvision's 23.5M params without
its fc, on ImageNet-1k) and B/16 (a ViT-B/16, 86M params, ViT paper Table 1). R50 and B/16
both take the ViT paper's supervised schedule (configs/classify.py), the baseline LOOK is
compared against here.
"""
from __future__ import annotations

from configs import classify

# Left out: LOOK's training schedule (the ViT baseline's), its augmentations beyond flips,
# and a projection head (the backbone's pooled output is the kNN feature). The kNN settings
# are not LOOK's published ones, which we could not check: k and tau follow Wu et al. 2018's
# kNN (k 200, tau 0.07), the queue is 65536 features as in MoCo (He et al. 2020), where LOOK
# votes over the whole dataset.
# The ResNets' batch norms keep no running statistics (SparK's, models/spark.py): features
# are normalised with the statistics of the batch they come in, in training, kNN/linear
# probes and transfer alike, so an image's feature depends on its batch-mates, where
# LOOK's ResNet-50 uses running averages at eval.
NOT_IMPLEMENTED = ("bn_running_statistics", "look_training_schedule", "look_augmentations",
                   "projection_head", "look_knn_hyperparameters", "whole_dataset_memory")


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in classify.VARIANTS:
    raise ValueError(f"configs/look.py variant {variant!r}; valid: "
                     f"{', '.join(classify.VARIANTS)}")
  c = classify.get_config(variant)
  c.model.num_classes = 0  # The loss reads features; no class logits.
  c.objective.name = "look"
  c.objective.knn_k = 200
  c.objective.knn_temperature = 0.07
  c.objective.queue_size = 65536
  if variant.startswith("tiny"):
    # 32 images + 64 queued: 10 of the 95 others vote (about 1 per class at random).
    c.objective.update(knn_k=10, knn_temperature=0.1, queue_size=64)
  return c
