"""DINO self-distillation with an EMA teacher and multi-crop (Caron et al. 2021), at the size
of DINOv2 / RAD-DINO's ViT-B/14 backbone (Oquab et al. 2023; Pérez-García et al. 2024).

  python -m pretrain.main --config=configs/dino.py:tiny --workdir=runs/dino_tiny

Variants: tiny (Fashion-MNIST on CPU: 28x28 global crops, 12x12 local crops, 4x4 patches)
and B/14 (RAD-DINO's encoder: DINOv2 ViT-B/14, 86M backbone params, DINOv2 README's model
table; 224 global / 98 local crops, 16x16 and 7x7 patch grids).
"""
from __future__ import annotations

from configs import mae

# Left out: DINOv2's iBOT masked-token loss (objective.ibot_weight, on in configs/ibot.py,
# off here), KoLeo regulariser, Sinkhorn-Knopp centring and LayerScale (this is DINO's
# v1 loss with DINOv2's backbone size); DINO's weight-decay
# schedule (0.04 -> 0.4; here a constant), freezing the last head layer in epoch 1, colour
# jitter / blur / solarisation (grayscale crops + flips only); RAD-DINO's chest X-ray data.
NOT_IMPLEMENTED = ("ibot_masked_token_loss", "koleo_regulariser", "sinkhorn_knopp_centering",
                   "layerscale", "weight_decay_schedule", "freeze_last_layer",
                   "color_augmentations", "chest_xray_data")


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in ("tiny", "B/14"):
    raise ValueError(f"configs/dino.py variant {variant!r}; valid: tiny, B/14")
  # The ViT backbone and image data of MAE's recipe, without its decoder and masking.
  c = mae.get_config("tiny" if variant == "tiny" else "B/16")
  for key in ("dec_d_model", "dec_layers", "dec_heads", "dec_d_ff"):
    del c.model[key]
  del c.objective.mask_ratio, c.objective.norm_pix_loss
  c.objective.name = "dino"
  c.model.name = "dino"
  # DINO (Caron et al. 2021) §3.1 / Appendix: 3-layer head, 2048 hidden, 256 bottleneck,
  # 65536 prototypes; tau_s 0.1, tau_t 0.04 -> 0.07 over 30 epochs, center momentum 0.9,
  # teacher momentum 0.996 -> 1 (cosine); 2 global crops scale (0.4, 1), 8 local (0.05, 0.4).
  c.model.head_hidden_dim, c.model.head_bottleneck_dim, c.model.head_out_dim = 2048, 256, 65536
  c.model.mask_token = False  # iBOT's [MASK] embedding (configs/ibot.py)
  c.objective.global_crop_scale = (0.4, 1.0)
  c.objective.local_crop_scale = (0.05, 0.4)
  c.objective.local_crops = 8
  c.objective.student_temp = 0.1
  c.objective.warmup_teacher_temp = 0.04
  c.objective.teacher_temp = 0.07
  c.objective.center_momentum = 0.9
  c.objective.ibot_weight = 0.0  # iBOT's masked patch-token loss off (configs/ibot.py)
  c.objective.ibot_mask_ratio = (0.1, 0.5)
  c.teacher.kind = "ema"
  c.teacher.ema_momentum = 0.996
  c.teacher.ema_schedule = "cosine"
  if variant == "tiny":
    c.model.head_hidden_dim, c.model.head_bottleneck_dim, c.model.head_out_dim = 64, 32, 256
    c.objective.global_crop_size, c.objective.local_crop_size = 28, 12
    c.objective.local_crops = 2
    c.objective.teacher_temp_warmup_steps = 10
    c.teacher.ema_momentum = 0.9  # A 60-step run: the teacher must follow within it.
    c.optim.clip_norm = 3.0  # DINO clips at 3.
    return c
  c.model.variant = "vit:B/14"
  # DINOv2 / RAD-DINO crops: 224 global; local 98 (DINOv2's 96 rounded up to the 14-pixel
  # patch, as our patchify needs whole patches).
  c.model.image_size = (224, 224)
  c.objective.global_crop_size, c.objective.local_crop_size = 224, 98
  # DINO Appendix (ViT-B): batch 1024, lr 0.0005 x batch / 256 after 10 warmup epochs,
  # cosine decay, weight decay 0.04 (start of its schedule), 300 epochs, clip 3.
  c.train.global_batch = 1024
  epoch = mae.IMAGENET_TRAIN // 1024
  c.train.steps = 300 * epoch
  c.objective.teacher_temp_warmup_steps = 30 * epoch
  c.optim.lr = 0.0005 * 1024 / 256
  c.optim.warmup_steps = 10 * epoch
  c.optim.weight_decay = 0.04
  c.optim.b2 = 0.999
  c.optim.clip_norm = 3.0
  return c
