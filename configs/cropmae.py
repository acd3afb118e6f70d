"""CropMAE pretraining (Eymaël et al. 2024, "Efficient Image Pre-Training with Siamese
Cropped Masked Autoencoders", ECCV 2024).

  python -m pretrain.main --config=configs/cropmae.py:tiny --workdir=runs/cropmae_tiny

Variants: tiny (Fashion-MNIST on CPU), S/16 (the paper's ImageNet ViT-S/16 run). Numbers
marked "script" are from the authors' released scripts/train_cropmae_in.sh.
"""
from __future__ import annotations

from configs.mae import IMAGENET_TRAIN, get_config as mae_config

# No horizontal flip (the script flips each view independently) and no antialiased
# resize (crops never exceed the output size, so it would not change anything here).
NOT_IMPLEMENTED = ("horizontal_flip", "imagenet_normalization")


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in ("tiny", "S/16"):
    raise ValueError(f"configs/cropmae.py variant {variant!r}; valid: tiny, S/16")
  c = mae_config("tiny" if variant == "tiny" else "B/16")
  c.objective.name = "cropmae"
  c.model.name = "siamese_mae"
  c.objective.mask_ratio = 0.985  # the paper's headline masking ratio of the local view
  # GlobalToLocal (script): global crop area 10-100% of the image, local crop 30-60% of the
  # global view, aspect ratios 3/4-4/3 for both.
  c.objective.global_crop_scale = (0.1, 1.0)
  c.objective.local_crop_scale = (0.3, 0.6)
  c.objective.crop_aspect_ratio = (3 / 4, 4 / 3)
  if variant == "tiny":
    c.model.dec_d_model, c.model.dec_layers, c.model.dec_heads, c.model.dec_d_ff = 32, 1, 4, 64
    return c  # 0.985 of 49 patches keeps 1 (objectives/cropmae.py: at least one)
  c.model.variant = "vit:S/16"
  # Script: decoder 256 wide, 4 blocks, 8 heads; PyTorch's decoder layer default FFN 2048.
  c.model.dec_d_model, c.model.dec_layers, c.model.dec_heads, c.model.dec_d_ff = 256, 4, 8, 2048
  c.objective.norm_pix_loss = True
  # Script: 4 nodes x 4 GPUs x 128 images = 2048 per step, base lr 1e-4 x batch / 256,
  # AdamW (0.9, 0.95), weight decay 0.05, 400 epochs, warmup 5% of them, cosine to 0.
  c.train.global_batch = 2048
  c.train.steps = 400 * IMAGENET_TRAIN // 2048
  c.optim.lr = 1e-4 * 2048 / 256
  c.optim.warmup_steps = 20 * IMAGENET_TRAIN // 2048
  c.topology = "v5p-32"  # 16 chips for the script's 16 GPUs, 128 images each
  return c
