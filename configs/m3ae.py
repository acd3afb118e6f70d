"""M3AE pretraining (Chen et al. 2022, "Multi-Modal Masked Autoencoders for Medical
Vision-and-Language Pre-Training", MICCAI 2022), single-stream (models/m3ae.py).

  python -m pretrain.main --config=configs/m3ae.py:tiny --workdir=runs/m3ae_tiny

Variants: tiny (emoji image-caption pairs on CPU) and B/16, the authors' pretraining run
(run_scripts/pretrain_m3ae.sh + m3ae/config.py task_pretrain_m3ae: "script" below) at ViT-B/16
size, 288 x 288 images, 64-token captions.
"""
from __future__ import annotations

from configs.base import base_config, tiny_schedule

# Not built: the two-stream architecture (separate CLIP-ViT and RoBERTa encoders, initialised
# from their released weights, joined by 6 co-attention fusion layers: here one stack reads
# both modalities), the image-text matching loss, whole-word masking, RoBERTa's vocabulary
# (a tokenizer is trained on the captions; B/16 keeps its 50,265-id size), and the
# ROCO/MedICaT medical pairs (the data here are emoji).
NOT_IMPLEMENTED = ("two_stream_co_attention", "pretrained_encoders", "itm_loss",
                   "whole_word_masking", "roberta_vocabulary", "roco_medicat_data")


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  c = base_config()
  c.objective.name = "m3ae"
  c.objective.image_mask_ratio = 0.75  # script: mim_prob
  c.objective.text_mask_ratio = 0.15   # script: mlm_prob
  c.objective.image_loss_weight = c.objective.text_loss_weight = 1.0  # loss_names mim/mlm: 1
  c.objective.norm_pix_loss = True     # script: norm_pix_loss
  c.model.name = "m3ae"
  c.model.variant = "vit:B/16"  # script: clip16
  c.model.num_layers = c.model.d_model = c.model.num_heads = c.model.d_ff = 0
  c.model.image_size = (288, 288)  # script: image_size=288
  c.model.patch_size = (0, 0)
  c.model.channels = 3
  c.model.pos_emb = "sincos"
  c.model.norm = "pre"
  c.model.activation = "gelu_exact"
  c.model.ln_eps = 1e-5
  c.model.dtype = "float32"
  c.model.max_len = 64  # script: max_text_len
  # Script: mim_layer=3, the 3rd of 6 fusion layers, 3 blocks before the last: here block 9
  # of the 12. MIM decoder 384 wide, 4 blocks, 6 heads (MLP 4x).
  c.model.image_layer = 9
  c.model.dec_d_model, c.model.dec_layers, c.model.dec_heads, c.model.dec_d_ff = 384, 4, 6, 1536
  c.data.source = "emoji"
  c.data.tokenizer = "bpe"
  c.data.vocab_size = 50_265  # roberta-base
  c.data.text_len = 64
  # Script: 8 GPUs x 32 = 256 per step, 100k steps, AdamW lr 1e-5 (x5 for heads and fusion
  # layers: not reproduced), weight decay 0.01, 10% linear warmup then linear decay to 0.
  c.train.global_batch = 256
  c.train.steps = 100_000
  c.optim.update(lr=1e-5, schedule="linear", warmup_steps=10_000, weight_decay=0.01)
  if variant == "tiny":
    c.model.variant = "custom"
    c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 2, 32, 2, 64
    c.model.image_layer = 1
    c.model.image_size, c.model.patch_size = (24, 24), (6, 6)
    c.model.max_len = 16
    c.model.dec_d_model, c.model.dec_layers, c.model.dec_heads, c.model.dec_d_ff = 32, 1, 2, 64
    c.objective.norm_pix_loss = False  # raw pixels give a short run a visible signal
    c.data.tokenizer = "wordpiece"
    c.data.vocab_size = 512
    c.data.text_len = 16
    tiny_schedule(c, global_batch=16, lr=3e-3)
    c.optim.update(warmup_steps=2, weight_decay=0.0)
  elif variant == "B/16":
    c.topology = "v5p-16"  # 8 chips for the script's 8 GPUs
  else:
    raise ValueError(f"configs/m3ae.py variant {variant!r}; valid: tiny, B/16")
  return c
