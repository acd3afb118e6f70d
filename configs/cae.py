"""Context Autoencoder pretraining (Chen et al. 2022, "Context Autoencoder for
Self-Supervised Representation Learning").

  python -m pretrain.main --config=configs/cae.py:tiny --workdir=runs/cae_tiny

Variants: tiny (Fashion-MNIST on CPU), B/16 (the paper's ViT-B/16, 800 epochs). Numbers
marked "script" are from the authors' released scripts/cae_base_800e.sh.
"""
from __future__ import annotations

from configs.mae import IMAGENET_TRAIN, get_config as mae_config

# The headline target is DALL-E tokenizer codes (pixels here); BEiT's block-wise masking
# (uniform random here); layer scale 0.1 and drop path 0.1 in the encoder are not built.
NOT_IMPLEMENTED = ("dalle_token_targets", "blockwise_masking", "layer_scale", "drop_path")


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in ("tiny", "B/16"):
    raise ValueError(f"configs/cae.py variant {variant!r}; valid: tiny, B/16")
  c = mae_config("tiny" if variant == "tiny" else "B/16")
  c.objective.name = "cae"
  c.model.name = "cae"
  c.objective.mask_ratio = 0.5  # script: 98 of 196 patches masked
  c.objective.align_weight = 2.0  # script: --align_loss_weight 2
  c.model.reg_layers = 4  # script: --regressor_depth 4
  if variant == "tiny":
    c.model.reg_layers = 1
    c.model.dec_d_model, c.model.dec_layers, c.model.dec_heads, c.model.dec_d_ff = 64, 1, 4, 128
    return c
  # Script: the decoder as wide as the ViT-B encoder, 4 blocks; batch 64 x 32 GPUs, lr
  # 1.5e-3, 20 warmup epochs of 800, gradient clipping at 3.0.
  c.model.dec_d_model, c.model.dec_layers, c.model.dec_heads, c.model.dec_d_ff = 768, 4, 12, 3072
  c.train.global_batch = 2048
  c.train.steps = 800 * IMAGENET_TRAIN // 2048
  c.optim.lr = 1.5e-3
  c.optim.warmup_steps = 20 * IMAGENET_TRAIN // 2048
  c.optim.clip_norm = 3.0
  c.topology = "v5p-64"  # 32 chips for the script's 32 GPUs, 64 images each
  return c
