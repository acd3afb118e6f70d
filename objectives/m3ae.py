"""M3AE pretraining (Chen et al. 2022, "Multi-Modal Masked Autoencoders for Medical
Vision-and-Language Pre-Training", MICCAI 2022): reconstruct the missing pixels and tokens
of a randomly masked image and caption from each other.

Image patches are removed at `objective.image_mask_ratio` (a fresh random mask per step, on
device, as objectives/mae.py: 75% in the paper) and rebuilt by the transformer decoder from
the stream after `model.image_layer` blocks: MSE on the removed patches (normalised pixels
with `objective.norm_pix_loss`, the paper's setting). Caption tokens are BERT-masked on the
host at `objective.text_mask_ratio` (15% in the paper; 80% [MASK], 10% random, 10% kept:
objectives/mlm.py's `MlmMasking`, [CLS]/[SEP] never) and predicted by the MLP head after the
last block: cross-entropy at the masked slots. A much larger image ratio because pixels are
far more redundant than words (the paper's first design point).
  loss = image_loss_weight * MSE + text_loss_weight * CE
"""
from __future__ import annotations

import grain
import jax
import jax.numpy as jnp
import numpy as np

from models.m3ae import m3ae_flops_per_example
from models.vit import patchify
from objectives import base, mae
from objectives.clip import check_caption_length, pixels
from objectives.mlm import MlmMasking


class CaptionMasking(grain.transforms.RandomMap):
  """Emoji example -> its image and the BERT-masked caption (`MlmMasking`'s keys)."""

  def __init__(self, masking: MlmMasking):
    self.masking = masking

  def random_map(self, example, rng: np.random.Generator):
    tokens = example["tokens"]
    row = {"tokens": tokens, "segment_ids": (tokens != 0).astype(np.int32),
           "positions": np.arange(len(tokens), dtype=np.int32),
           "word_start": np.ones(len(tokens), bool)}
    out = self.masking.random_map(row, rng)
    return {"image": example["image"], "inputs": out["inputs"],
            **{k: out[k] for k in ("masked_positions", "masked_ids", "masked_weights")}}


@base.register("m3ae")
class MultiModalMAE(base.Objective):
  models = ("m3ae",)
  modality = "image_text"
  unit = "pairs"

  def validate(self, config):
    o = config.objective
    check_caption_length(config)
    for key in ("image_mask_ratio", "text_mask_ratio"):
      if not 0 < o[key] < 1:
        raise ValueError(f"objective.{key}={o[key]}: must be in (0, 1)")
    for key in ("image_loss_weight", "text_loss_weight"):
      if o[key] < 0:
        raise ValueError(f"objective.{key}={o[key]}: must be >= 0")

  def _masking(self, config, info):
    return MlmMasking(mask_rate=config.objective.text_mask_ratio, replace_mask=0.8,
                      replace_random=0.1, mask_id=info.mask_id, vocab_size=info.vocab_size,
                      special_ids=info.special_ids, seq_len=info.seq_len)

  def host_transform(self, config, info):
    return CaptionMasking(self._masking(config, info))

  def _forward(self, net, batch, rng, image_mask_ratio: float):
    """(image (B, H, W, C) in [0, 1], patches, hidden-patch mask, predicted patches, text
    logits at the masked slots (B, K, V))."""
    image = pixels(batch["image"])
    patches = patchify(image, net.cfg.patch_size)
    b, n, _ = patches.shape
    keep_idx, mask = mae.random_keep(jax.random.wrap_key_data(rng), b, n, image_mask_ratio)
    latent, text = net.encode_pair(patches, keep_idx, batch["inputs"])
    picked = jnp.take_along_axis(text, batch["masked_positions"][..., None], axis=1)
    return image, patches, mask, net.decode(latent, keep_idx, n), net.text_logits(picked)

  def loss_fn(self, params, batch, rng, *, model, config):
    o = config.objective
    _, patches, mask, pred, logits = self._forward(model.bind(params), batch, rng,
                                                   o.image_mask_ratio)
    image_loss = mae.pixel_loss(patches, pred, mask, config)
    text_loss, accuracy = base.token_loss(logits, batch["masked_ids"], batch["masked_weights"])
    loss = o.image_loss_weight * image_loss + o.text_loss_weight * text_loss
    return loss, {"image_loss": image_loss, "text_loss": text_loss, "accuracy": accuracy}

  def reconstructions(self, params, batch, rng, *, model, config):
    """Per row: the image, it masked, the decoder's patches (from image + masked caption)."""
    net = model.bind(params)
    image, patches, mask, pred, _ = self._forward(net, batch, rng,
                                                  config.objective.image_mask_ratio)
    if config.objective.norm_pix_loss:
      pred = mae.denormalize_patches(pred, patches)
    return {"reconstructions": mae.reconstruction_grid(image, patches, mask, pred,
                                                       net.cfg.patch_size)}

  def units_per_example(self, config, info):
    return 1

  def forward_flops_per_example(self, config, info, model_cfg):
    slots = self._masking(config, info).slots
    return m3ae_flops_per_example(model_cfg, config.objective.image_mask_ratio, slots)
