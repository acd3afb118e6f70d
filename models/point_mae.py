"""A Point-MAE-style masked autoencoder over point tokens (Pang et al. 2022, "Masked
Autoencoders for Point Cloud Self-supervised Learning"), the plain-transformer backbone
I2P-MAE (Zhang et al. 2023) builds its image-to-point pretraining on.

A point token is a group of k points around an FPS center, relative to it (built on the
host, pretrain/data/points.py). A mini-PointNet embeds each group: a shared per-point MLP,
the group's max-pooled feature concatenated back to every point, a second MLP, and a max
over the group (Point-MAE's; LayerNorm where it has BatchNorm: BatchNorm's running
statistics are state the trainer does not carry, and the two have the same parameters).
The centers' positions enter through a small MLP. The encoder sees only the visible
tokens; the decoder gets them plus a mask token at each hidden center (with the centers'
positions) and predicts each hidden group's k points.

Departure (stated): positions are added once before the stack; Point-MAE adds them before
every block.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import Dense, LayerNorm, normal_param
from models.partitioning import constrain
from models.transformer import ACT, BlockConfig, TransformerStack


@dataclasses.dataclass(frozen=True)
class PointMAEConfig:
  """Encoder `num_layers` x `d_model`; decoder `dec_layers` blocks of the same width;
  mini-PointNet widths `embed_dims` (h1, h2, h3) (Point-MAE: 128, 256, 512)."""
  group_size: int
  d_model: int
  num_layers: int
  num_heads: int
  d_ff: int
  dec_layers: int
  dec_heads: int
  embed_dims: tuple[int, int, int] = (128, 256, 512)
  norm: str = "pre"
  activation: str = "gelu"
  dtype: str = "float32"
  ln_eps: float = 1e-6
  init_std: float = 0.02
  scan_layers: bool = False
  remat: str = "none"

  @property
  def encoder_block(self) -> BlockConfig:
    return BlockConfig.of(self)

  @property
  def decoder_block(self) -> BlockConfig:
    return dataclasses.replace(self.encoder_block, num_heads=self.dec_heads)

  def validate(self) -> None:
    if self.group_size < 1 or len(self.embed_dims) != 3 or min(self.embed_dims) < 1:
      raise ValueError(f"group_size={self.group_size}, embed_dims={self.embed_dims}: need "
                       "group_size >= 1 and three positive mini-PointNet widths")
    self.encoder_block.validate()
    self.decoder_block.validate()


class MiniPointNet(nnx.Module):
  """(..., k, 3) points of a group -> (..., D): Point-MAE's group embedding."""

  def __init__(self, cfg: PointMAEConfig, *, rngs: nnx.Rngs):
    h1, h2, h3 = cfg.embed_dims
    dense = lambda i, o, axes: Dense(i, o, axes, dtype=cfg.dtype, init_std=cfg.init_std,
                                     rngs=rngs)
    self.first_in = dense(3, h1, ("patch", "mlp"))
    self.first_out = dense(h1, h2, ("mlp", "patch"))
    self.first_norm = LayerNorm(h1, eps=cfg.ln_eps, dtype=cfg.dtype)
    self.second_in = dense(2 * h2, h3, ("patch", "mlp"))
    self.second_out = dense(h3, cfg.d_model, ("mlp", "embed"))
    self.second_norm = LayerNorm(h3, eps=cfg.ln_eps, dtype=cfg.dtype)

  def __call__(self, groups: jax.Array) -> jax.Array:
    x = self.first_out(jax.nn.relu(self.first_norm(self.first_in(groups))))  # (..., k, h2)
    pooled = jnp.broadcast_to(x.max(-2, keepdims=True), x.shape)
    x = jnp.concatenate([pooled, x], -1)  # (..., k, 2 h2)
    x = self.second_out(jax.nn.relu(self.second_norm(self.second_in(x))))  # (..., k, D)
    return x.max(-2)


class CenterPositions(nnx.Module):
  """(..., 3) group centers -> (..., D): Linear, GELU, Linear (Point-MAE's pos_embed)."""

  def __init__(self, cfg: PointMAEConfig, *, rngs: nnx.Rngs):
    hidden = cfg.embed_dims[0]
    self.inner = Dense(3, hidden, ("patch", "mlp"), dtype=cfg.dtype, init_std=cfg.init_std,
                       rngs=rngs)
    self.outer = Dense(hidden, cfg.d_model, ("mlp", "embed"), dtype=cfg.dtype,
                       init_std=cfg.init_std, rngs=rngs)

  def __call__(self, centers: jax.Array) -> jax.Array:
    return self.outer(jax.nn.gelu(self.inner(centers)))


def gather_tokens(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x (B, G, ...) at idx (B, n) -> (B, n, ...)."""
  return jax.vmap(lambda a, i: a[i])(x, idx)


class PointMAE(nnx.Module):
  """`encode` the visible point tokens; `decode` predicts the hidden groups' points."""

  def __init__(self, cfg: PointMAEConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    self.embed = MiniPointNet(cfg, rngs=rngs)
    self.pos = CenterPositions(cfg, rngs=rngs)
    self.encoder = TransformerStack(cfg.encoder_block, cfg.num_layers, rngs=rngs)
    self.mask_token = normal_param(rngs, (cfg.d_model,), ("embed",), cfg.init_std)
    self.dec_pos = CenterPositions(cfg, rngs=rngs)
    self.decoder = TransformerStack(cfg.decoder_block, cfg.dec_layers, rngs=rngs)
    self.dec_pred = Dense(cfg.d_model, (cfg.group_size, 3), ("embed", "patch", None),
                          dtype=cfg.dtype, init_std=cfg.init_std, rngs=rngs,
                          out_dtype=jnp.float32)

  def encode(self, neighborhoods: jax.Array, centers: jax.Array,
             visible_idx: jax.Array) -> jax.Array:
    """neighborhoods (B, G, k, 3), centers (B, G, 3), visible_idx (B, Gv) -> (B, Gv, D)."""
    x = (self.embed(gather_tokens(neighborhoods, visible_idx))
         + self.pos(gather_tokens(centers, visible_idx)))
    return self.encoder(constrain(x.astype(self.cfg.dtype), ACT), mask=None)

  def decode(self, latent: jax.Array, centers: jax.Array, visible_idx: jax.Array,
             masked_idx: jax.Array) -> jax.Array:
    """latent (B, Gv, D) -> (B, Gm, k, 3) float32 points of the hidden groups, relative
    to their centers."""
    b, gm = masked_idx.shape
    masks = jnp.broadcast_to(self.mask_token[...].astype(latent.dtype),
                             (b, gm, latent.shape[-1]))
    order = jnp.concatenate([visible_idx, masked_idx], 1)
    x = jnp.concatenate([latent, masks], 1) + self.dec_pos(gather_tokens(centers, order))
    x = self.decoder(constrain(x.astype(self.cfg.dtype), ACT), mask=None)
    return self.dec_pred(x[:, -gm:])
