"""SparK pretraining (Tian et al. 2023, "Designing BERT for Convolutional Networks: Sparse
and Hierarchical Masked Modeling", ICLR 2023), the CNN masked-image-modelling method Wolf
et al. 2023 pretrain ResNet-50s with for small medical datasets.

  python -m pretrain.main --config=configs/spark.py:tiny --workdir=runs/spark_tiny

Variants: tiny (Fashion-MNIST on CPU), resnet50 (SparK's ResNet-50 on ImageNet-1K at 224;
the medical paper's CT corpus is not available here). Numbers marked "SparK" are from the
paper and its released pretraining script.
"""
from __future__ import annotations

from configs.base import base_config, tiny_schedule
from configs.mae import IMAGENET_TRAIN

# SparK trains with LAMB and a weight decay rising 0.04 -> 0.2 (AdamW with a constant decay
# here); batch norm keeps no running statistics (the trainer carries params only), so
# `features` normalise with the probe batch's statistics; no augmentation is built.
NOT_IMPLEMENTED = ("lamb_optimizer", "weight_decay_schedule", "bn_running_statistics",
                   "random_resized_crop", "medical_ct_data")


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in ("tiny", "resnet50"):
    raise ValueError(f"configs/spark.py variant {variant!r}; valid: tiny, resnet50")
  c = base_config()
  c.objective.name = "spark"
  c.objective.mask_ratio = 0.6  # SparK: 60% of the 32x32 patches hidden
  c.objective.norm_pix_loss = True  # SparK: per-patch normalised pixel targets
  c.model.name = "spark"
  c.model.image_size = (224, 224)
  c.model.channels = 3
  c.model.dtype = "float32"
  # ResNet-50 (He et al. 2016 Table 1): 7x7/2 stem + 3x3/2 max pool, bottleneck stages of
  # 3, 4, 6, 3 blocks, inner widths 64-512 (x4 out); total stride 32 = SparK's mask patch.
  c.model.stem_width, c.model.stem_kernel, c.model.stem_stride = 64, 7, 2
  c.model.stem_pool = True
  c.model.stage_blocks = (3, 4, 6, 3)
  c.model.stage_widths = (64, 128, 256, 512)
  c.model.bottleneck = True
  c.model.dec_width = 512  # SparK's light decoder for ResNet-50: 512 wide at 7x7
  c.data.source = "tfds"
  c.data.tfds_name = "imagenet2012"
  c.data.feature = "image"
  # SparK: batch 4096, base lr 2e-4 x batch / 256, 1600 epochs, 40 warmup epochs, cosine.
  c.train.global_batch = 4096
  c.train.steps = 1600 * IMAGENET_TRAIN // 4096
  c.optim.lr = 2e-4 * 4096 / 256
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 40 * IMAGENET_TRAIN // 4096
  c.optim.weight_decay = 0.04
  c.optim.clip_norm = 0.0
  if variant == "tiny":
    c.model.image_size, c.model.channels = (28, 28), 1
    # 3x3/1 stem, no pool, three basic-block stages: total stride 4, a 7x7 mask grid.
    c.model.stem_width, c.model.stem_kernel, c.model.stem_stride = 16, 3, 1
    c.model.stem_pool = False
    c.model.stage_blocks, c.model.stage_widths = (1, 1, 1), (16, 32, 64)
    c.model.bottleneck = False
    c.model.dec_width = 32
    c.objective.norm_pix_loss = False  # as mae:tiny: raw 4x4 pixels learn visibly
    c.data.source, c.data.tfds_name = "fashion_mnist", ""
    tiny_schedule(c, global_batch=16, lr=5e-3)  # batch-normed CNN: a higher lr than mae:tiny
    return c
  c.topology = "v5p-64"  # 32 chips, 128 images each
  return c
