"""ALIP (Yang et al. 2023, "ALIP: Adaptive Language-Image Pre-training with Synthetic
Caption", ICCV 2023): CLIP trained on two texts per image, its raw caption and a synthetic
one, with every pair's contrastive loss reweighted by consistency gates.

A bi-path model: one image encoder, one text encoder shared by both texts. With v, t, c the
L2-normalised embeddings of image, raw text and synthetic caption (no gradient reaches the
gates), and m_xy an exponential moving average (momentum 0.99, start 1) of the batch mean of
<x_i, y_i>, updated with the current batch before use:
  Language Consistency Gate (per sample):
      W_i = min(exp(2 (<t_i, c_i> - m_tc)), 1)
    a sample whose two texts disagree more than usual is probably noise and weighs less;
  Description Consistency Gates (per image-text and image-caption pair):
      P_i^t = exp(2 (<t_i, v_i> - m_tv)),  P_i^c = exp(2 (<c_i, v_i> - m_cv))
    (set to 1 where the texts agree, W_i = 1), so a pair matching its image better than
    usual weighs more;
  loss = mean_i W_i P_i^t l_i(v, t) + mean_i W_i P_i^c l_i(v, c),
with l_i the symmetric InfoNCE term of pair i (objectives/contrastive.py `pair_losses`) over
the global batch at CLIP's learnable temperature. The exact gate formulas (the square, the
momentum, the start value) follow the authors' released train.py.

Here the "synthetic caption" is the emoji's second real description (pretrain/data/
image_text.py `alt_caption`: category, subcategory, short names), not an OFA caption: the
gates then measure agreement between two honest texts, which is ALIP's mechanism on cleaner
data. The three averages are this objective's state across steps (base.NEXT_STATE).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from models.clip import clip_flops_per_example
from objectives import base
from objectives.clip import check_caption_length, pixels
from objectives.contrastive import l2_normalize, pair_losses

GATE_MOMENTUM = 0.99  # ALIP train.py: m <- 0.99 m + 0.01 batch mean
GATE_POWER = 2.0      # ALIP train.py: torch.exp(sim - m) ** 2
STATE_KEYS = ("text_caption", "text_image", "caption_image")


def gates(v: jax.Array, t: jax.Array, c: jax.Array, state: dict):
  """Normalised embeddings (B, D) and the running means -> (W (B,), P^t (B,), P^c (B,),
  the next running means). Gradient-free."""
  v, t, c = (jax.lax.stop_gradient(x) for x in (v, t, c))
  sims = {"text_caption": (t * c).sum(-1), "text_image": (t * v).sum(-1),
          "caption_image": (c * v).sum(-1)}
  means = {k: GATE_MOMENTUM * state[k] + (1 - GATE_MOMENTUM) * sims[k].mean()
           for k in STATE_KEYS}
  raw = {k: jnp.exp(GATE_POWER * (sims[k] - means[k])) for k in STATE_KEYS}
  consistent = raw["text_caption"] >= 1
  sample = jnp.minimum(raw["text_caption"], 1.0)
  pair_text = jnp.where(consistent, 1.0, raw["text_image"])
  pair_caption = jnp.where(consistent, 1.0, raw["caption_image"])
  return sample, pair_text, pair_caption, means


def alip_loss(image: jax.Array, text: jax.Array, caption: jax.Array, temperature, state):
  """Projected embeddings (B, D) -> (loss, metrics with the next state)."""
  v, t, c = l2_normalize(image), l2_normalize(text), l2_normalize(caption)
  sample, pair_text, pair_caption, means = gates(v, t, c, state)
  per_text, per_caption = (pair_losses(v @ x.T / temperature) for x in (t, c))
  loss_text = (per_text * sample * pair_text).mean()
  loss_caption = (per_caption * sample * pair_caption).mean()
  # The gated loss moves with the gates; plain InfoNCE of the raw texts tracks learning.
  metrics = {"loss_text": loss_text, "loss_caption": loss_caption,
             "infonce_text": per_text.mean(),
             "sample_gate": sample.mean(), "text_gate": pair_text.mean(),
             "caption_gate": pair_caption.mean(), base.NEXT_STATE: means}
  return loss_text + loss_caption, metrics


@base.register("alip")
class Alip(base.Objective):
  models = ("clip",)
  modality = "image_text"
  unit = "pairs"

  def validate(self, config):
    check_caption_length(config)

  def initial_state(self, config, info, model_cfg):
    return {k: jnp.ones((), jnp.float32) for k in STATE_KEYS}

  def loss_fn(self, params, batch, rng, *, model, config, objective_state):
    del rng
    net = model.bind(params)
    temperature = net.temperature()
    loss, metrics = alip_loss(net.embed_images(pixels(batch["image"])),
                              net.embed_texts(batch["tokens"]),
                              net.embed_texts(batch["alt_tokens"]), temperature,
                              objective_state)
    return loss, {**metrics, "logit_scale": 1.0 / temperature}

  def features(self, params, batch, *, model, config):
    return model.bind(params).image_features(pixels(batch["image"])).astype(jnp.float32)

  def units_per_example(self, config, info):
    return 1

  def forward_flops_per_example(self, config, info, model_cfg):
    """CLIP's with both captions through the text tower."""
    return clip_flops_per_example(model_cfg, captions=2)
