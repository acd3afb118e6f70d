"""Supervised image classification with a ViT (Dosovitskiy et al. 2021, "An Image is Worth
16x16 Words") or a ResNet: the baseline LOOK improves on and the teacher SSLD distils.

  python -m pretrain.main --config=configs/classify.py:tiny --workdir=runs/classify_tiny

Variants: tiny (Fashion-MNIST's 10 classes on CPU, 7x7 patches), B/16 (ViT-B/16 on
ImageNet-1k: 86M params, ViT paper Table 1), and the same two on SparK's ResNet with nothing
masked: tiny_resnet (three basic-block stages) and R50 (ResNet-50, He et al. 2016: 25.6M
params with its 1000-class fc, torchvision's 25,557,032), both on the ViT schedule.
"""
from __future__ import annotations

from configs import mae, spark
from configs.base import tiny_schedule

# Left out: ImageNet-21k / JFT pre-training, the ViT paper's dropout 0.1 (our blocks have
# no dropout), RandomResizedCrop (only flips), and its pre-logits tanh layer when
# pre-training (a plain linear head, as the paper's fine-tuning and DeiT use).
# The ResNets train on the ViT schedule (not He et al.'s SGD, lr 0.1, 90 epochs) and their
# batch norms keep no running statistics (SparK's: batch statistics at eval too).
NOT_IMPLEMENTED = ("imagenet21k_jft_pretraining", "dropout", "random_resized_crop",
                   "pre_logits_layer", "resnet_sgd_schedule", "bn_running_statistics")
VARIANTS = ("tiny", "tiny_resnet", "B/16", "R50")


def vit_classifier(variant: str, num_classes: int):
  """MAE's ViT backbone and image data (tiny: 28x28 Fashion-MNIST, 4x4 patches; else
  `vit:<variant>` at 224x224) without its decoder and masking, with a head over
  `num_classes` (0 = none)."""
  c = mae.get_config("tiny" if variant == "tiny" else variant)
  for key in ("dec_d_model", "dec_layers", "dec_heads", "dec_d_ff"):
    del c.model[key]
  del c.objective.mask_ratio, c.objective.norm_pix_loss
  c.model.name = "vit_classifier"
  c.model.num_classes = num_classes
  return c


RESNET_KEYS = ("stem_width", "stem_kernel", "stem_stride", "stem_pool", "stage_blocks",
               "stage_widths", "bottleneck")


def use_resnet(c, tiny: bool):
  """Swap `c`'s ViT for SparK's ResNet (tiny: its three basic-block stages, else ResNet-50),
  nothing masked: the `resnet_classifier` (the ViT's size keys stay, unread)."""
  resnet = spark.get_config("tiny" if tiny else "resnet50").model
  c.model.update({key: resnet[key] for key in RESNET_KEYS})
  c.model.name = "resnet_classifier"
  return c


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in VARIANTS:
    raise ValueError(f"configs/classify.py variant {variant!r}; valid: {', '.join(VARIANTS)}")
  tiny = variant.startswith("tiny")
  c = vit_classifier("tiny" if tiny else "B/16", 10 if tiny else 1000)
  c.objective.name = "classify"
  if tiny:
    # 16 patches of 7x7 with learned positions: behind MAE's fixed sin-cos table, the 49
    # small 4x4 patches of a 28x28 image let a 20-step run barely start to learn a label.
    c.model.update(patch_size=(7, 7), pos_emb="learned")
    tiny_schedule(c, global_batch=32, lr=3e-3)
    c.optim.warmup_steps = 2
  else:
    # ViT paper Table 3 (ViT-B/16 on ImageNet): 300 epochs, batch 4096, Adam (0.9, 0.999),
    # base lr 3e-3 with 10k linear warmup steps and cosine decay, weight decay 0.3, gradient
    # clipping at global norm 1.
    c.train.global_batch = 4096
    c.train.steps = 300 * mae.IMAGENET_TRAIN // 4096
    c.optim.update(lr=3e-3, warmup_steps=10_000, schedule="cosine", weight_decay=0.3,
                   b1=0.9, b2=0.999, clip_norm=1.0)
  if variant in ("tiny_resnet", "R50"):
    use_resnet(c, tiny)
  return c
