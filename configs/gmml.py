"""GMML / SiT pretraining (Atito et al. 2022, "GMML is All you Need"; Atito et al. 2021,
"SiT: Self-supervised vIsion Transformer").

  python -m pretrain.main --config=configs/gmml.py:tiny --workdir=runs/gmml_tiny

Variants: tiny (Fashion-MNIST on CPU, with SiT's rotation and contrastive heads on so the
short run exercises every term) and S/16 (GMML's ImageNet ViT-S/16 run: reconstruction
only). Numbers marked "code" are the defaults of the authors' released GMML main.py /
datasets_utils.py.
"""
from __future__ import annotations

from configs.base import tiny_schedule
from configs.mae import IMAGENET_TRAIN, get_config as mae_config

# Left out: the code reconstructs from the sum of blocks 6, 8, 10 and 12 (here the last
# block only); it picks one corruption per image (noise over 50-75%, or with probability
# 1/2 replacement over 30%; here a kind per block, one ratio range); corruption aligned to
# single pixels in main.py's default (here to whole patches, GMML's "groups of tokens");
# the augmentations (random resized crop, flip, colour jitter, blur, solarisation) and the
# weight-decay schedule (0.04 -> 0.4; here constant 0.04); SiT's learned uncertainty
# weights of the three losses (here fixed weights).
NOT_IMPLEMENTED = ("multi_block_reconstruction", "per_image_corruption_kind",
                   "pixel_aligned_corruption", "augmentations", "weight_decay_schedule",
                   "learned_task_weights")


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in ("tiny", "S/16"):
    raise ValueError(f"configs/gmml.py variant {variant!r}; valid: tiny, S/16")
  c = mae_config("tiny" if variant == "tiny" else "B/16")
  for key in ("dec_d_model", "dec_layers", "dec_heads", "dec_d_ff"):
    del c.model[key]
  del c.objective.mask_ratio, c.objective.norm_pix_loss
  c.objective.name = "gmml"
  c.model.name = "sit"
  c.model.pos_emb = "learned"  # ViT / SiT: learned position embeddings
  c.model.rec_layers = 3  # code: RECHead, 3 x (Linear D->D, GELU) + transposed conv
  c.model.contrastive_dim = 512  # SiT code: contrastive_head = Linear(D, 512)
  # code: drop_perc 0.75 -> a fraction U(0.5, 0.75) of the image, blocks up to 0.3 of the
  # side; drop_type noise, and drop_replace: half the images replaced from another image.
  c.objective.corrupt_ratio = (0.5, 0.75)
  c.objective.corrupt_block = 0.3
  c.objective.corrupt_probs = (0.0, 0.5, 0.5)  # (zero, noise, replace)
  c.objective.sit_rotation_weight = 0.0
  c.objective.sit_contrastive_weight = 0.0
  c.objective.sit_contrastive_temperature = 0.2
  if variant == "tiny":
    c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 2, 64, 4, 128
    c.model.rec_layers, c.model.contrastive_dim = 1, 32
    # A 7x7 grid: lighter corruption than the paper's, so the two views of an image stay
    # matchable and the losses move within a 20-step CPU run; every corruption kind used.
    c.objective.corrupt_ratio = (0.3, 0.5)
    c.objective.corrupt_probs = (1 / 3, 1 / 3, 1 / 3)
    c.objective.sit_rotation_weight = c.objective.sit_contrastive_weight = 0.5
    c.optim.b2, c.optim.clip_norm = 0.999, 3.0  # code: torch AdamW defaults, clip 3
    # Above 1e-3 the contrastive head collapses (every embedding alike) in the short run.
    tiny_schedule(c, global_batch=16, lr=1e-3)
    return c
  c.model.variant = "vit:S/16"
  c.model.patch_size = (16, 16)
  # code: AdamW, lr 5e-4 x batch / 256 with a 10-epoch warmup and cosine decay to 1e-6,
  # weight decay 0.04, gradient clipping at 3.0, 800 epochs, 64 images per GPU. The GPU
  # count is not in the code: 16 GPUs (a global batch of 1024) is this recipe's assumption.
  c.train.global_batch = 1024
  c.train.steps = 800 * IMAGENET_TRAIN // 1024
  c.optim.lr = 5e-4 * 1024 / 256
  c.optim.warmup_steps = 10 * IMAGENET_TRAIN // 1024
  c.optim.end_lr_fraction = 1e-6 / c.optim.lr
  c.optim.weight_decay = 0.04
  c.optim.b2 = 0.999
  c.optim.clip_norm = 3.0
  c.topology = "v5p-32"  # 16 chips for the assumed 16 GPUs, 64 images each
  return c
