"""CLIP's dual encoder (Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision"): a ViT and a causal text transformer, each pooled and linearly
projected into one embedding space, plus the learnable logit scale.

Laid out so that Hugging Face `CLIPModel` weights map onto it one to one: pre-LN blocks
(optionally `quick_gelu`), a class token and a LayerNorm before the vision stack
(`pre_layrnorm`), the stack's final norm as `post_layernorm` / `final_layer_norm`, text
pooled at its end-of-text token, projections without bias. Two differences are
reparametrisations, not changes: HF's patch convolution has no bias (ours is zero then) and
HF's position table has a row for the class token (here folded into the class token).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from models.attention import attention_mask
from models.layers import Embed, LearnedPositions, const_param, normal_param
from models.precision import mixed_einsum
from models.partitioning import constrain
from models.transformer import ACT, TransformerConfig, TransformerStack, stack_flops_per_token
from models.vit import ViT, ViTConfig, vit_encoder_flops_per_image

LOGIT_SCALE_MAX = math.log(100.0)  # CLIP §2.5: logits scaled by at most 100


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  vision: ViTConfig
  text: TransformerConfig  # max_len = caption length; vocab_size padded
  embed_dim: int
  init_temperature: float = 0.07  # CLIP §2.5; logit_scale starts at log(1 / it)

  @property
  def activation(self) -> str:
    """The text tower's MLP activation (HF's CLIP converter needs the towers to agree)."""
    return self.text.activation

  def validate(self) -> None:
    self.vision.validate()
    self.text.validate()
    if not self.vision.use_cls_token:
      raise ValueError("CLIP pools the vision class token: use_cls_token must be true")
    if self.embed_dim <= 0:
      raise ValueError(f"embed_dim={self.embed_dim} must be positive")
    if not 0.01 <= self.init_temperature <= 100:
      raise ValueError(f"init_temperature={self.init_temperature}: must be in [0.01, 100] "
                       "(the logit scale is clipped at 100)")


def eos_index(tokens: jax.Array, pad_id: int = 0) -> jax.Array:
  """(B, L) right-padded captions ending in their end-of-text token -> (B,) its index."""
  return jnp.maximum((tokens != pad_id).sum(-1) - 1, 0)


class CausalTextEncoder(nnx.Module):
  """Token + learned position embeddings, a causal pre-LN stack (its final norm is CLIP's
  `ln_final`); no output vocabulary: CLIP's text tower only encodes."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    # CLIP's token and position tables start at std 0.02 and 0.01, whatever the width.
    self.embed = Embed(cfg.vocab_size, cfg.d_model, init_std=0.02, rngs=rngs)
    self.pos_embed = LearnedPositions(cfg.max_len, cfg.d_model, init_std=0.01, rngs=rngs)
    self.stack = TransformerStack(cfg.block, cfg.num_layers, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """tokens (B, L), right-padded with 0 -> hidden (B, L, D)."""
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    x = constrain((self.embed(tokens) + self.pos_embed(positions)).astype(self.cfg.dtype), ACT)
    mask = attention_mask("causal", segment_ids=(tokens != 0).astype(jnp.int32))
    return self.stack(x, mask=mask)


class Projection(nnx.Module):
  """A bias-free linear map (CLIP's `visual_projection` / `text_projection`)."""

  def __init__(self, d_in: int, d_out: int, *, dtype, init_std: float, rngs: nnx.Rngs):
    self.kernel = normal_param(rngs, (d_in, d_out), ("embed", "mlp"), init_std)
    self.dtype = jnp.dtype(dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return mixed_einsum("bd,de->be", x.astype(self.dtype), self.kernel[...].astype(self.dtype))


class CLIP(nnx.Module):
  def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    self.vision = ViT(cfg.vision, rngs=rngs)
    self.text = CausalTextEncoder(cfg.text, rngs=rngs)
    self.visual_projection = Projection(cfg.vision.d_model, cfg.embed_dim,
                                        dtype=cfg.vision.dtype,
                                        init_std=cfg.vision.d_model ** -0.5, rngs=rngs)
    self.text_projection = Projection(cfg.text.d_model, cfg.embed_dim, dtype=cfg.text.dtype,
                                      init_std=cfg.text.d_model ** -0.5, rngs=rngs)
    self.logit_scale = const_param((), (), math.log(1 / cfg.init_temperature))

  def image_features(self, images: jax.Array) -> jax.Array:
    """images (B, H, W, C) float in [0, 1] -> the normed class token (B, Dv): CLIP's
    pooled image representation (what its linear probes read)."""
    return self.vision(images)[:, 0]

  def text_features(self, tokens: jax.Array) -> jax.Array:
    """tokens (B, L) -> the normed hidden state at each caption's end-of-text token (B, Dt)."""
    hidden = self.text(tokens)
    return jnp.take_along_axis(hidden, eos_index(tokens)[:, None, None], axis=1)[:, 0]

  def embed_images(self, images: jax.Array) -> jax.Array:
    return self.visual_projection(self.image_features(images))

  def embed_texts(self, tokens: jax.Array) -> jax.Array:
    return self.text_projection(self.text_features(tokens))

  def temperature(self) -> jax.Array:
    """1 / exp(logit_scale), the scale clipped at 100 (CLIP clamps the parameter after
    each step; clipping it here stops its gradient beyond the bound, the same effect)."""
    return jnp.exp(-jnp.minimum(self.logit_scale[...], LOGIT_SCALE_MAX))


def clip_flops_per_example(cfg: CLIPConfig, captions: int = 1) -> float:
  """Forward matmul FLOPs of one image and `captions` captions: ViT on every patch, the
  causal text stack (about (L + 1) / 2 keys per query) and both projections."""
  text, length = cfg.text, cfg.text.max_len
  per_caption = (length * stack_flops_per_token(text.block, text.num_layers, (length + 1) / 2)
                 + 2 * cfg.embed_dim * text.d_model)
  image = (vit_encoder_flops_per_image(cfg.vision, cfg.vision.num_patches)
           + 2 * cfg.embed_dim * cfg.vision.d_model)
  return image + captions * per_caption
