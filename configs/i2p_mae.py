"""I2P-MAE: masked point-token autoencoding with 2D-guided masking (Zhang et al. 2023,
"Learning 3D Representations from 2D Pre-trained Models via Image-to-Point Masked
Autoencoders"; see objectives/i2p_mae.py).

  python -m pretrain.main --config=configs/i2p_mae.py:tiny --workdir=runs/i2p_mae_tiny

Data: point clouds made on the host from Fashion-MNIST images read as height maps (x, y
from foreground pixel coordinates, z from intensity); no 3D corpus (ShapeNet) is used.

Variants: tiny (CPU test size), point_mae. I2P-MAE's own encoder is Point-M2AE's
hierarchical one (3 stages of 5 blocks, widths 96/192/384, 512/256/64 groups of 16/8/8
points: cfgs/pre-training/i2p-mae.yaml of the authors' code; the paper's tables list it at
12.9M params, a figure not re-derived here); it is NOT built. `point_mae` is the plain
Point-MAE transformer I2P-MAE's design builds on (Pang et al. 2022, "Masked Autoencoders
for Point Cloud Self-supervised Learning": 12 blocks, width 384, 6 heads, MLP 1536, a
4-block decoder, 64 groups of 32 points), reported at 22.1M params for its fine-tuned
classifier; counting Point-MAE's own layers by hand (BatchNorm, no q/k/v bias, cls token,
a 0.27M class head) gives 22.10M. The tests assert our encoder (mini-PointNet, position
MLP, 12 blocks, final norm: 21.84M) within 2% of 22.1M; the gap is the class head and cls
token a pretraining encoder lacks, less our q/k/v biases (+14K).
"""
from __future__ import annotations

from configs.base import base_config, tiny_schedule

# Left out: I2P-MAE's hierarchical (Point-M2AE) encoder and decoder; its second target,
# the visible tokens regressing multi-view 2D features of a pretrained CLIP; saliency from
# a pretrained 2D model's attention on projected depth maps (ours: the source image's
# gradient magnitude); ShapeNet-55 point clouds (ours: Fashion-MNIST height maps); drop
# path; Point-MAE's positions added before every block (ours: once).
NOT_IMPLEMENTED = ("hierarchical_m2ae_encoder", "2d_semantic_reconstruction",
                   "clip_saliency", "shapenet55", "drop_path", "per_block_positions")


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in ("tiny", "point_mae"):
    raise ValueError(f"configs/i2p_mae.py variant {variant!r}; valid: tiny, point_mae")
  c = base_config()
  c.objective.name = "i2p_mae"
  c.objective.mask_ratio = 0.8            # I2P-MAE's pretraining config
  c.objective.saliency_masking = True
  c.objective.num_points = 1024           # Point-MAE: 1024 points, 64 groups of 32
  c.objective.num_groups = 64
  c.model.name = "point_mae"
  c.model.group_size = 32
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 12, 384, 6, 1536
  c.model.dec_layers, c.model.dec_heads = 4, 6
  c.model.point_embed_dims = (128, 256, 512)
  c.model.norm = "pre"
  c.model.activation = "gelu_exact"
  c.model.ln_eps = 1e-6
  c.model.dtype = "float32"
  c.data.source = "fashion_mnist"
  # I2P-MAE: AdamW lr 1e-3, weight decay 0.05, cosine with 10 warmup epochs, batch 64.
  c.optim.update(lr=1e-3, schedule="cosine", weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8)
  if variant == "tiny":
    c.objective.update(num_points=256, num_groups=16)
    c.model.group_size = 16
    c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 1, 64, 4, 128
    c.model.dec_layers, c.model.dec_heads = 1, 4
    c.model.point_embed_dims = (32, 64, 128)
    tiny_schedule(c, global_batch=16, lr=3e-3)
  else:
    # 300 epochs of Fashion-MNIST's 60,000 images in batches of 64 (I2P-MAE's max_epoch
    # and total_bs; ShapeNet is not used here).
    c.train.update(steps=300 * 60_000 // 64, global_batch=64)
    c.optim.warmup_steps = 10 * 60_000 // 64
    c.topology = "v5p-8"
  return c
