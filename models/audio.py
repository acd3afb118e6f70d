"""Spectrogram encoders: SSAST's patch ViT and TERA's frame transformer.

SSAST (Gong et al. 2022, "SSAST: Self-Supervised Audio Spectrogram Transformer") is the
AST: a ViT over spectrogram patches (patch-based 16x16, or frame-based 2 frames x 128 mel
bins), here `models.vit.ViT` on a one-channel (frames, mel_bins) "image". Masked patches
have their patch embedding replaced by one learned mask embedding before positions are
added (the encoder sees every position, unlike MAE), and two 2-layer MLP heads read the
encoder's output at a masked position: one for the discriminative (InfoNCE), one for the
generative (MSE) target, both the size of a flattened patch.

TERA (Liu et al. 2021, "TERA: Self-Supervised Learning of Transformer Encoder
Representation for Speech") is a BERT-style (post-LN) transformer over frames: a linear
projection of each frame plus sinusoidal positions, a LayerNorm, the blocks, and a
pretraining-only prediction head (dense, GELU, LayerNorm, linear back to the frame) that
rebuilds the clean frames from the altered ones (Mockingjay's layout, which TERA keeps).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import Dense, LayerNorm, gelu, normal_param, sinusoidal_positions
from models.partitioning import constrain
from models.transformer import (ACT, DTYPES, BlockConfig, TransformerStack, check_choice,
                                stack_flops_per_token)
from models.vit import ViT, ViTConfig, vit_encoder_flops_per_image


class PatchHead(nnx.Module):
  """SSAST's prediction head: Linear(D, D), ReLU, Linear(D, patch) in float32 out."""

  def __init__(self, d_model: int, out_dim: int, *, dtype, init_std: float, rngs: nnx.Rngs):
    self.hidden = Dense(d_model, d_model, ("embed", "mlp"), dtype=dtype, init_std=init_std,
                        rngs=rngs)
    self.out = Dense(d_model, out_dim, ("mlp", "patch"), dtype=dtype, init_std=init_std,
                     rngs=rngs, out_dtype=jnp.float32)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out(jax.nn.relu(self.hidden(x)))


class SSAST(nnx.Module):
  """AST encoder + mask embedding + discriminative and generative heads."""

  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.encoder = ViT(cfg, rngs=rngs)
    self.mask_embed = normal_param(rngs, (1, 1, cfg.d_model), (None, None, "embed"),
                                   cfg.init_std)
    head = dict(dtype=cfg.dtype, init_std=cfg.init_std, rngs=rngs)
    self.discriminative = PatchHead(cfg.d_model, cfg.patch_dim, **head)
    self.generative = PatchHead(cfg.d_model, cfg.patch_dim, **head)

  def __call__(self, patches: jax.Array, mask: jax.Array) -> jax.Array:
    """patches (B, N, P), mask (B, N) (nonzero = masked) -> patch tokens (B, N, D)."""
    enc = self.encoder
    x = enc.patch_embed(patches)
    x = jnp.where(mask[..., None] > 0, self.mask_embed[...].astype(x.dtype), x)
    idx = jnp.broadcast_to(jnp.arange(patches.shape[1]), patches.shape[:2])
    x = constrain(x + enc.pos(idx).astype(x.dtype), ACT)
    return enc.encode(x)[:, self.cfg.num_prefix:]


def ssast_flops_per_example(cfg: ViTConfig) -> float:
  """The encoder on every patch plus both heads at every patch (an upper bound: the loss
  reads them at the masked patches only)."""
  heads = 2 * cfg.num_patches * 2 * (cfg.d_model * cfg.d_model + cfg.d_model * cfg.patch_dim)
  return vit_encoder_flops_per_image(cfg, cfg.num_patches) + heads


@dataclasses.dataclass(frozen=True)
class FrameTransformerConfig:
  """TERA's encoder over (frames, num_bins) spectrograms and its prediction head."""
  num_bins: int
  d_model: int
  num_layers: int
  num_heads: int
  d_ff: int
  norm: str = "post"  # Mockingjay/TERA are BERT-style
  activation: str = "gelu_exact"
  dtype: str = "float32"
  ln_eps: float = 1e-12
  init_std: float = 0.02
  scan_layers: bool = False
  remat: str = "none"

  @property
  def block(self) -> BlockConfig:
    return BlockConfig.of(self)

  def validate(self) -> None:
    check_choice("dtype", self.dtype, DTYPES)
    if self.d_model % 2:
      raise ValueError(f"sinusoidal frame positions need an even d_model, got {self.d_model}")
    self.block.validate()


class FrameTransformer(nnx.Module):
  """Frames (B, T, F) -> hidden states (B, T, D) (`__call__`) -> frames (`reconstruct`)."""

  def __init__(self, cfg: FrameTransformerConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    dense = dict(dtype=cfg.dtype, init_std=cfg.init_std, rngs=rngs)
    self.frame_proj = Dense(cfg.num_bins, cfg.d_model, ("patch", "embed"), **dense)
    self.input_norm = LayerNorm(cfg.d_model, eps=cfg.ln_eps, dtype=cfg.dtype)
    self.stack = TransformerStack(cfg.block, cfg.num_layers, rngs=rngs)
    self.head_dense = Dense(cfg.d_model, cfg.d_model, ("embed", "mlp"), **dense)
    self.head_norm = LayerNorm(cfg.d_model, eps=cfg.ln_eps, dtype=cfg.dtype)
    self.head_out = Dense(cfg.d_model, cfg.num_bins, ("mlp", "patch"), **dense,
                          out_dtype=jnp.float32)

  def __call__(self, frames: jax.Array) -> jax.Array:
    x = self.frame_proj(frames)
    x = x + sinusoidal_positions(jnp.arange(frames.shape[1]), self.cfg.d_model).astype(x.dtype)
    return self.stack(constrain(self.input_norm(x), ACT), mask=None)

  def reconstruct(self, hidden: jax.Array) -> jax.Array:
    """Hidden states (B, T, D) -> predicted frames (B, T, F) float32."""
    return self.head_out(self.head_norm(gelu(self.head_dense(hidden), self.cfg.activation)))


def frame_transformer_flops_per_example(cfg: FrameTransformerConfig, frames: int) -> float:
  """Forward matmul FLOPs: frame projection, the stack over every frame, the head."""
  proj = 2 * cfg.num_bins * cfg.d_model
  head = 2 * cfg.d_model * cfg.d_model + 2 * cfg.d_model * cfg.num_bins
  return frames * (proj + head + stack_flops_per_token(cfg.block, cfg.num_layers, frames))
