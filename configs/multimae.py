"""MultiMAE pretraining (Bachmann et al. 2022, "MultiMAE: Multi-modal Multi-task Masked
Autoencoders", ECCV 2022).

  python -m pretrain.main --config=configs/multimae.py:tiny --workdir=runs/multimae_tiny

Variants: tiny (Fashion-MNIST on CPU), B/16 (the paper's ViT-B/16 on ImageNet-1K). Numbers
marked "config" are from the authors' cfgs/pretrain/multimae-b_98_rgb+-depth-semseg_1600e.yaml.

Modalities: the image; `edges`, the Sobel gradient magnitude of its luminance (channel
mean) scaled into [0, 1], regressed with MSE (the paper's depth slot); `segments`, the
luminance quantised into model.segment_classes equal-width bins, predicted with per-pixel
cross-entropy (the paper's semantic-segmentation slot). Both are computed on the host from
the image (objectives/multimae.py) instead of the paper's pseudo labels.
"""
from __future__ import annotations

from configs.mae import IMAGENET_TRAIN, get_config as mae_config

# The paper's pseudo labels (DPT depth, Mask2Former COCO segmentation) are replaced by the
# derived maps above; depth's L1 loss and standardisation, the segmentation map at 1/4
# resolution (4x4 patches at stride 4), sampling a random subset of input modalities per
# example, and the horizontal flip are not built.
NOT_IMPLEMENTED = ("pseudo_label_depth_and_segmentation", "depth_l1_loss",
                   "segmentation_at_quarter_resolution", "sample_tasks_uniformly",
                   "horizontal_flip")


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in ("tiny", "B/16"):
    raise ValueError(f"configs/multimae.py variant {variant!r}; valid: tiny, B/16")
  c = mae_config("tiny" if variant == "tiny" else "B/16")
  c.objective.name = "multimae"
  c.model.name = "multimae"
  del c.objective["mask_ratio"]  # a fixed visible-token budget instead
  c.objective.num_visible = 98  # config: 98 of 3 x 196 tokens visible (1/6)
  c.objective.dirichlet_alpha = 1.0  # config: alphas 1.0
  c.objective.modality_weights = (1.0, 1.0, 1.0)  # image, edges, segments: losses summed
  c.objective.norm_pix_loss = True  # config: extra_norm_pix_loss for RGB
  c.model.class_embed_dim = 64  # the semseg input adapter's class embeddings
  c.model.segment_classes = 133  # COCO panoptic classes of the paper's pseudo labels
  if variant == "tiny":
    c.objective.num_visible = 24  # ~1/6 of 3 x 49 tokens, as the paper's 98 of 588
    c.objective.norm_pix_loss = False  # as mae:tiny: raw 4x4 pixels learn visibly in 20 steps
    c.model.segment_classes, c.model.class_embed_dim = 4, 8
    c.model.dec_d_model, c.model.dec_layers, c.model.dec_heads, c.model.dec_d_ff = 32, 1, 4, 64
    return c
  # Config: decoders 256 wide, 2 self-attention blocks after the cross-attention; the
  # adapter's defaults: 8 heads, MLP ratio 4.
  c.model.dec_d_model, c.model.dec_layers, c.model.dec_heads, c.model.dec_d_ff = 256, 2, 8, 1024
  # Config: 1600 epochs, AdamW, base lr 1e-4 x batch / 256, 40 warmup epochs, 256 images per
  # GPU; the paper trains on 8 GPUs: 2048 per step. Weight decay 0.05 and betas (0.9, 0.95)
  # as MAE's (inherited).
  c.train.global_batch = 2048
  c.train.steps = 1600 * IMAGENET_TRAIN // 2048
  c.optim.lr = 1e-4 * 2048 / 256
  c.optim.warmup_steps = 40 * IMAGENET_TRAIN // 2048
  c.topology = "v5p-16"  # 8 chips for the paper's 8 GPUs, 256 images each
  return c
